"""LLaDA presets and checkpoint loader: a checkpoint written by the test in LLaDA's HF layout, loaded and
compared with a numpy re-derivation of LLaDA's forward on the raw torch-layout tensors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.hf import CheckpointError, write_safetensors
from jaxllm.hf.llada import load_llada, save_llada
from jaxllm.models import count_params, forward, get_preset, init_params

D, LAYERS, H, F, V, MASK = 32, 2, 4, 48, 40, 39


def test_llada_8b_preset_has_8_015_581_184_parameters():
    cfg = get_preset("llada_8b")
    shapes = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.PRNGKey(0))
    assert count_params(shapes) == 8_015_581_184
    assert not cfg.causal and not cfg.tie_embeddings and cfg.mask_token_id == 126336 and cfg.rope_layout == "half"


def _config():
    return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": D, "n_layers": LAYERS,
            "n_heads": H, "n_kv_heads": H, "mlp_hidden_size": F, "vocab_size": V, "embedding_size": V,
            "max_sequence_length": 64, "rope": True, "rope_theta": 500000.0, "rope_full_precision": True,
            "rms_norm_eps": 1e-5, "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu",
            "include_bias": False, "include_qkv_bias": False, "weight_tying": False, "scale_logits": False,
            "input_emb_norm": False, "attention_layer_norm": False, "alibi": False, "mask_token_id": MASK,
            "eos_token_id": 1, "pad_token_id": 1, "init_fn": "mitchell", "init_std": 0.02, "use_cache": False,
            "block_group_size": 1, "layer_norm_with_affine": True, "bias_for_layer_norm": False}


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    n = lambda *s: (rng.normal(size=s) * 0.2).astype(np.float32)  # noqa: E731
    p = "model.transformer."
    t = {p + "wte.weight": n(V, D), p + "ln_f.weight": 1 + n(D), p + "ff_out.weight": n(V, D)}
    for i in range(LAYERS):
        b = f"{p}blocks.{i}."
        t.update({b + "attn_norm.weight": 1 + n(D), b + "ff_norm.weight": 1 + n(D), b + "q_proj.weight": n(D, D),
                  b + "k_proj.weight": n(D, D), b + "v_proj.weight": n(D, D), b + "attn_out.weight": n(D, D),
                  b + "ff_proj.weight": n(F, D), b + "up_proj.weight": n(F, D), b + "ff_out.weight": n(D, F)})
    return t


def _write(folder, tensors, config, shards=2):
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    wm = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / shard, {k: tensors[k] for k in names[s::shards]})
        wm.update({k: shard for k in names[s::shards]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def numpy_llada_forward(t, tokens, eps=1e-5, theta=500000.0):
    """LLaDA's modeling_llada forward, in float64 numpy on torch-layout ([out, in]) tensors."""
    p = "model.transformer."

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return np.concatenate([-x2, x1], -1)

    B, T = tokens.shape
    h = D // H
    inv = 1.0 / theta ** (np.arange(0, h, 2) / h)
    freqs = np.arange(T)[:, None] * inv[None]
    emb = np.concatenate([freqs, freqs], -1)  # [T, h]
    cos, sin = np.cos(emb), np.sin(emb)
    x = t[p + "wte.weight"].astype(np.float64)[tokens]
    for i in range(LAYERS):
        b = {k.split(f"blocks.{i}.")[1]: v.astype(np.float64) for k, v in t.items() if f"blocks.{i}." in k}
        a = rms(x, b["attn_norm.weight"])
        q, k, v = (np.einsum("btd,od->bto", a, b[n + "_proj.weight"]).reshape(B, T, H, h).transpose(0, 2, 1, 3)
                   for n in "qkv")
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(h)  # no causal mask: bidirectional
        s = np.exp(s - s.max(-1, keepdims=True))
        att = (s / s.sum(-1, keepdims=True)) @ v
        x = x + np.einsum("bto,do->btd", att.transpose(0, 2, 1, 3).reshape(B, T, D), b["attn_out.weight"])
        m = rms(x, b["ff_norm.weight"])
        g = np.einsum("btd,fd->btf", m, b["ff_proj.weight"])
        u = np.einsum("btd,fd->btf", m, b["up_proj.weight"])
        x = x + np.einsum("btf,df->btd", g / (1 + np.exp(-g)) * u, b["ff_out.weight"])
    x = rms(x, t[p + "ln_f.weight"].astype(np.float64))
    return np.einsum("btd,vd->btv", x, t[p + "ff_out.weight"].astype(np.float64))


def test_loaded_llada_matches_numpy_forward(tmp_path):
    t = _tensors()
    cfg, params = load_llada(_write(tmp_path / "ckpt", t, _config()))
    assert not cfg.causal and cfg.mask_token_id == MASK and cfg.rope_theta == 500000.0
    tokens = np.array([[3, MASK, MASK, 7, 1, 0, MASK, 22], [MASK] * 8])
    got = np.asarray(forward(cfg, jax.tree.map(jnp.asarray, params), jnp.asarray(tokens)).logits)
    want = numpy_llada_forward(t, tokens)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    # round trip through our writer (single file and sharded) gives the same tensors
    for shards in (1, 3):
        out = save_llada(tmp_path / f"rt{shards}", cfg, params, num_shards=shards)
        cfg2, params2 = load_llada(out)
        assert cfg2 == cfg
        jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_loader_names_every_mismatch(tmp_path):
    t = _tensors()
    bad = dict(t)
    bad["model.transformer.blocks.0.extra.weight"] = np.zeros(3, np.float32)
    del bad["model.transformer.blocks.1.up_proj.weight"]
    bad["model.transformer.blocks.0.q_proj.weight"] = np.zeros((D, D + 1), np.float32)
    bad["model.transformer.ln_f.weight"] = np.zeros(D + 2, np.float32)
    with pytest.raises(CheckpointError) as e:
        load_llada(_write(tmp_path / "bad", bad, _config()))
    msg = str(e.value)
    for name in ["blocks.0.extra.weight", "blocks.1.up_proj.weight", "blocks.0.q_proj.weight", "ln_f.weight"]:
        assert name in msg, (name, msg)
    cfg = _config()
    cfg.update(weight_tying=True, alibi=True, mystery_knob=3)
    with pytest.raises(CheckpointError) as e:
        load_llada(_write(tmp_path / "badcfg", t, cfg))
    for word in ["weight_tying", "alibi", "mystery_knob"]:
        assert word in str(e.value)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_llada(tmp_path / "nothing")
