"""HF checkpoint import/export: parity with transformers in both directions, strict errors, counts."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import hf
from jaxllm.models import get_preset, init_params
from jaxllm.models import transformer as tfm
from tests.models.hf_util import hf_logits, tiny_hf_model

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 11))


def _our_logits(cfg, params, tokens=TOKENS):
    params = jax.tree.map(jnp.asarray, params)
    return np.asarray(jax.jit(lambda p, t: tfm.forward(cfg, p, t).logits)(params, jnp.asarray(tokens, jnp.int32)))


def _hf_to_ours(tmp_path, model_type, tied, theta, heads=4, kv=2):
    model = tiny_hf_model(model_type, tied, theta, heads, kv)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = hf.load_pretrained(tmp_path / "hf")
    err = np.abs(_our_logits(cfg, params) - hf_logits(model, TOKENS)).max()
    return cfg, params, float(err)


def test_llama4_text_import_matches_transformers(tmp_path):
    """MobileLLM-R1 layout: interleaved RoPE, parameter-free QK-norm, feed_forward.*, tied, GQA 4/2, theta 1e6."""
    cfg, _, err = _hf_to_ours(tmp_path, "llama4_text", tied=True, theta=1e6)
    assert cfg.rope_layout == "interleaved" and cfg.qk_norm and cfg.tie_embeddings and cfg.num_heads_kv == 2
    print(f"parity llama4_text tied theta=1e6 4/2: max |logit diff| = {err:.2e}")
    assert err < 1e-4, err
    # the classic silent bug: the same weights with rotate_half pairing must not match
    import dataclasses
    model = tiny_hf_model("llama4_text", True, 1e6)
    _, params = hf.load_pretrained(tmp_path / "hf")
    wrong = _our_logits(dataclasses.replace(cfg, rope_layout="half"), params)
    assert np.abs(wrong - hf_logits(model, TOKENS)).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("model_type,tied,theta,heads,kv", [
    ("llama", False, 5e5, 4, 2), ("llama", True, 1e4, 4, 1), ("llama4_text", False, 8e6, 4, 4),
    ("llama4_text", True, 3e4, 4, 1)])
def test_import_matches_transformers(tmp_path, model_type, tied, theta, heads, kv):
    cfg, _, err = _hf_to_ours(tmp_path, model_type, tied, theta, heads, kv)
    assert cfg.rope_theta == theta and cfg.tie_embeddings == tied
    print(f"parity {model_type} tied={tied} theta={theta} heads={heads}/{kv}: max |logit diff| = {err:.2e}")
    assert err < 1e-4, err


@pytest.mark.parametrize("model_type", [
    "llama4_text", pytest.param("llama", marks=pytest.mark.slow)])
def test_export_loads_in_transformers_with_equal_logits(tmp_path, model_type):
    from transformers import AutoModelForCausalLM

    cfg = get_preset("tiny_mobilellm" if model_type == "llama4_text" else "tiny_llama", vocab_size=64,
                     rope_theta=2e5, max_seq_len=128)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(3)))
    params = jax.tree.map(lambda x: x + 0.1 if x.ndim == 1 else x, params)  # non-trivial norms
    hf.save_pretrained(tmp_path / "ours", cfg, params)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval().float()
    assert model.config.model_type == model_type
    err = float(np.abs(hf_logits(model, TOKENS) - _our_logits(cfg, params)).max())
    print(f"export {model_type}: max |logit diff| = {err:.2e}")
    assert err < 1e-4, err
    cfg2, params2 = hf.load_pretrained(tmp_path / "ours")  # and back, exactly
    import dataclasses
    assert cfg2.head_size == cfg.head_size
    assert dataclasses.replace(cfg2, head_dim=None) == dataclasses.replace(cfg, head_dim=None)
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_sharded_index_is_read(tmp_path):
    model = tiny_hf_model("llama4_text", True, 1e6)
    model.save_pretrained(tmp_path / "one")
    tensors = hf.read_safetensors_folder(tmp_path / "one")
    names = sorted(tensors)
    half = len(names) // 2
    (tmp_path / "two").mkdir()
    shutil.copy(tmp_path / "one" / "config.json", tmp_path / "two" / "config.json")
    wm = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        hf.write_safetensors(tmp_path / "two" / fname, {n: tensors[n] for n in part})
        wm.update({n: fname for n in part})
    (tmp_path / "two" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    _, p1 = hf.load_pretrained(tmp_path / "one")
    _, p2 = hf.load_pretrained(tmp_path / "two")
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


def _edit(tmp_path, fn_tensors=None, fn_config=None):
    model = tiny_hf_model("llama4_text", False, 1e6, layers=1)
    model.save_pretrained(tmp_path)
    if fn_tensors:
        t = hf.read_safetensors_folder(tmp_path)
        fn_tensors(t)
        hf.write_safetensors(tmp_path / "model.safetensors", t)
    if fn_config:
        c = json.loads((tmp_path / "config.json").read_text())
        fn_config(c)
        (tmp_path / "config.json").write_text(json.dumps(c))


@pytest.mark.parametrize("edit,match", [
    (dict(fn_tensors=lambda t: t.pop("model.layers.0.feed_forward.up_proj.weight")),
     r"missing tensors \['model.layers.0.feed_forward.up_proj.weight'\]"),
    (dict(fn_tensors=lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)})),
     r"unknown tensors \['model.layers.0.self_attn.q_norm.weight'\]"),
    (dict(fn_tensors=lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)})),
     r"'model.norm.weight' has shape \(31,\), expected \(32,\)"),
    (dict(fn_config=lambda c: c.update(moe_layers=[0])), r"unsupported moe_layers=\[0\]"),
    (dict(fn_config=lambda c: c.update(no_rope_layers=[0])), r"unsupported no_rope_layers"),
    (dict(fn_config=lambda c: c.update(rope_parameters={"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0})),
     r"rope_type='llama3'"),
    (dict(fn_config=lambda c: c.update(hidden_act="gelu")), r"unsupported hidden_act='gelu'"),
    (dict(fn_config=lambda c: c.update(sliding_window=4)), r"unknown fields \['sliding_window'\]"),
    (dict(fn_config=lambda c: c.update(model_type="mistral")), r"unsupported model_type='mistral'"),
])
def test_mismatches_raise_naming_the_tensor_or_field(tmp_path, edit, match):
    _edit(tmp_path, **edit)
    with pytest.raises(hf.CheckpointError, match=match):
        hf.load_pretrained(tmp_path)


def test_bf16_checkpoint_round_trip(tmp_path):
    cfg = get_preset("tiny_mobilellm", vocab_size=64, param_dtype="bfloat16", dtype="bfloat16")
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    hf.save_pretrained(tmp_path, cfg, params)
    cfg2, params2 = hf.load_pretrained(tmp_path, dtype="bfloat16")
    assert str(params2["embed"].dtype) == "bfloat16"
    jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("name,published", [
    ("mobilellm_r1_140m", 140_248_512), ("mobilellm_r1_360m", 359_431_168), ("mobilellm_r1_950m", 949_685_760)])
def test_preset_param_count_equals_transformers_meta_model(name, published):
    """jax.eval_shape (no allocation) vs Llama4ForCausalLM built on torch's meta device (no allocation)."""
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    cfg = get_preset(name)
    abstract = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.PRNGKey(0))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    hf_cfg = Llama4TextConfig(**{k: v for k, v in hf.config_to_hf(cfg).items()
                                 if k not in ("architectures", "model_type", "torch_dtype")})
    with torch.device("meta"):
        model = Llama4ForCausalLM(hf_cfg)
    theirs = sum(p.numel() for p in model.parameters())  # tied lm_head is counted once
    assert ours == theirs == published
