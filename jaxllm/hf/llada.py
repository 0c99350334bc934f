"""Import / export of LLaDA checkpoints (HF `LLaDAModelLM` layout, local folder, no network).

    cfg, params = load_llada("path/to/LLaDA-8B-Instruct", dtype="bfloat16")   # causal=False, mask id from config

Tensor names (dllm_rl.md §1.3; torch Linear weights are [out, in]):

    model.transformer.wte.weight                  [V, D]   -> embed
    model.transformer.blocks.{i}.attn_norm.weight [D]      -> layer_i/attn_norm/scale
    model.transformer.blocks.{i}.{q,k,v}_proj.weight       -> layer_i/attn/{q,k,v}/kernel [D, heads, h]
    model.transformer.blocks.{i}.attn_out.weight  [D, D]   -> layer_i/attn/o/kernel [H, h, D]
    model.transformer.blocks.{i}.ff_norm.weight   [D]      -> layer_i/mlp_norm/scale
    model.transformer.blocks.{i}.ff_proj.weight   [F, D]   -> layer_i/mlp/gate/kernel  (gets the SiLU)
    model.transformer.blocks.{i}.up_proj.weight   [F, D]   -> layer_i/mlp/up/kernel
    model.transformer.blocks.{i}.ff_out.weight    [D, F]   -> layer_i/mlp/down/kernel
    model.transformer.ln_f.weight                 [D]      -> final_norm/scale
    model.transformer.ff_out.weight               [V, D]   -> lm_head [D, V]  (weight_tying false)

Strict like `jaxllm.hf`: unknown / missing tensors, every wrong shape, and every config value the Transformer
cannot reproduce are named in one `CheckpointError`. Reuses `jaxllm.hf`'s safetensors reader (single file or
sharded index) and its strict name mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jaxllm.hf.llama import (
    CheckpointError,
    Spec,
    check_names,
    convert_tensors,
    export_tensors,
    read_safetensors_folder,
    write_safetensors,
)
from jaxllm.models.transformer import TransformerConfig

PREFIX = "model.transformer."

# config.json fields that do not change the forward pass (training, init, metadata, generation).
_INERT = {"architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "use_cache",
          "eos_token_id", "pad_token_id", "bos_token_id", "init_fn", "init_std", "init_cutoff_factor",
          "init_device", "attention_dropout", "residual_dropout", "embedding_dropout", "flash_attention",
          "precision", "mlp_ratio", "max_sequence_length", "rope_full_precision", "multi_query_attention",
          "block_group_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size", "vocab_size",
          "embedding_size", "rope", "rope_theta", "rms_norm_eps", "layer_norm_type", "layer_norm_with_affine",
          "block_type", "activation_type", "include_bias", "include_qkv_bias", "bias_for_layer_norm",
          "weight_tying", "scale_logits", "input_emb_norm", "attention_layer_norm", "alibi", "alibi_bias_max",
          "mask_token_id", "clip_qkv", "layer_norm_eps", "attention_layer_norm_with_affine", "new_embedding_init_range"}

# (field, accepted values, default when absent, what to say)
_FIXED = [
    ("rope", (True,), True, "true (RoPE positions)"),
    ("alibi", (False, None), False, "false"),
    ("layer_norm_type", ("rms",), "rms", "'rms'"),
    ("layer_norm_with_affine", (True, None), True, "true"),
    ("bias_for_layer_norm", (False, None), False, "false"),
    ("block_type", ("llama",), "llama", "'llama' (SwiGLU block)"),
    ("activation_type", ("silu", "swiglu"), "silu", "'silu' or 'swiglu' (act(ff_proj(x)) * up_proj(x))"),
    ("include_bias", (False,), False, "false"),
    ("include_qkv_bias", (False, None), False, "false"),
    ("weight_tying", (False,), False, "false (separate ff_out head)"),
    ("scale_logits", (False, None), False, "false"),
    ("input_emb_norm", (False, None), False, "false"),
    ("attention_layer_norm", (False, None), False, "false (no QK layer norm)"),
    ("clip_qkv", (None,), None, "null"),
    ("block_group_size", (1, None), 1, "1"),
]


def _positive_int(hf: dict, key: str, problems: list) -> int:
    v = hf.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        problems.append(f"{key}={v!r} (expected a positive int)")
        return 1
    return v


def config_from_llada(hf: dict, dtype: str = "float32", ignore_fields: Iterable[str] = ()) -> TransformerConfig:
    """TransformerConfig (causal=False, untied head, rotate_half RoPE) for a LLaDA config.json dict.

    ignore_fields: extra config fields to accept as inert (unknown fields are otherwise an error).
    """
    problems = []
    if hf.get("model_type") not in ("llada", None):
        problems.append(f"model_type={hf.get('model_type')!r} (expected 'llada')")
    unknown = sorted(set(hf) - _INERT - set(ignore_fields))
    if unknown:
        problems.append(f"unknown fields {unknown} (pass ignore_fields= if they are inert)")
    for key, ok, default, what in _FIXED:
        v = hf.get(key, default)
        if v not in ok:
            problems.append(f"{key}={v!r} (expected {what})")
    D = _positive_int(hf, "d_model", problems)
    L = _positive_int(hf, "n_layers", problems)
    H = _positive_int(hf, "n_heads", problems)
    K = hf.get("n_kv_heads") or H
    F = hf.get("mlp_hidden_size") or (hf.get("mlp_ratio", 4) * D)
    V = _positive_int(hf, "vocab_size", problems)
    E = hf.get("embedding_size") or V
    if E != V:
        problems.append(f"embedding_size={E} differs from vocab_size={V} (padded embeddings are not supported)")
    mask_id = hf.get("mask_token_id", 126336)
    if problems:
        raise CheckpointError("LLaDA config.json: unsupported " + "; ".join(problems))
    try:
        return TransformerConfig(
            vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=int(K), head_dim=None, d_ff=int(F),
            max_seq_len=int(hf.get("max_sequence_length", 4096)), causal=False, flavour="llama",
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)), rope_theta=float(hf.get("rope_theta", 10000.0)),
            rope_layout="half", qk_norm=False, tie_embeddings=False, mask_token_id=int(mask_id),
            dtype=dtype, param_dtype=dtype,
        )
    except ValueError as e:
        raise CheckpointError(f"LLaDA config.json: {e}") from None


def config_to_llada(cfg: TransformerConfig) -> dict:
    """config.json dict in LLaDA's layout for a bidirectional untied llama-flavour config."""
    if cfg.causal or cfg.flavour != "llama" or cfg.tie_embeddings or cfg.qk_norm or cfg.rope_layout != "half":
        raise CheckpointError("LLaDA layout needs causal=False, flavour='llama', untied embeddings, no qk_norm, "
                              "rope_layout='half'")
    if cfg.head_size * cfg.n_heads != cfg.d_model:
        raise CheckpointError(f"LLaDA layout needs head_dim * n_heads == d_model, got {cfg.head_size}*{cfg.n_heads}")
    return dict(
        architectures=["LLaDAModelLM"], model_type="llada", d_model=cfg.d_model, n_layers=cfg.n_layers,
        n_heads=cfg.n_heads, n_kv_heads=cfg.num_heads_kv, mlp_hidden_size=cfg.d_ff, vocab_size=cfg.vocab_size,
        embedding_size=cfg.vocab_size, max_sequence_length=cfg.max_seq_len, rope=True, rope_theta=cfg.rope_theta,
        rope_full_precision=True, rms_norm_eps=cfg.norm_eps, layer_norm_type="rms", layer_norm_with_affine=True,
        bias_for_layer_norm=False, block_type="llama", activation_type="silu", include_bias=False,
        include_qkv_bias=False, weight_tying=False, scale_logits=False, input_emb_norm=False,
        attention_layer_norm=False, alibi=False, block_group_size=1,
        mask_token_id=cfg.mask_token_id if cfg.mask_token_id is not None else cfg.vocab_size - 1,
    )


def llada_spec(cfg: TransformerConfig) -> Spec:
    """{hf_name: (param path, hf shape, to_ours, to_hf)} for LLaDA's tensor names."""
    D, H, K, h, F, V = cfg.d_model, cfg.n_heads, cfg.num_heads_kv, cfg.head_size, cfg.d_ff, cfg.vocab_size
    ident = lambda a: a  # noqa: E731
    T = lambda a: a.T  # noqa: E731

    def heads_in(n):  # torch [n*h, D] <-> ours [D, n, h]
        return (lambda a: a.T.reshape(D, n, h)), (lambda a: a.reshape(D, n * h).T)

    o = (lambda a: a.T.reshape(H, h, D)), (lambda a: a.reshape(H * h, D).T)
    spec: Spec = {
        PREFIX + "wte.weight": (("embed",), (V, D), ident, ident),
        PREFIX + "ln_f.weight": (("final_norm", "scale"), (D,), ident, ident),
        PREFIX + "ff_out.weight": (("lm_head",), (V, D), T, T),
    }
    for i in range(cfg.n_layers):
        b, L = f"{PREFIX}blocks.{i}.", f"layer_{i}"
        spec[b + "attn_norm.weight"] = ((L, "attn_norm", "scale"), (D,), ident, ident)
        spec[b + "ff_norm.weight"] = ((L, "mlp_norm", "scale"), (D,), ident, ident)
        for proj, n in (("q", H), ("k", K), ("v", K)):
            spec[b + f"{proj}_proj.weight"] = ((L, "attn", proj, "kernel"), (n * h, D), *heads_in(n))
        spec[b + "attn_out.weight"] = ((L, "attn", "o", "kernel"), (D, H * h), *o)
        spec[b + "ff_proj.weight"] = ((L, "mlp", "gate", "kernel"), (F, D), T, T)
        spec[b + "up_proj.weight"] = ((L, "mlp", "up", "kernel"), (F, D), T, T)
        spec[b + "ff_out.weight"] = ((L, "mlp", "down", "kernel"), (D, F), T, T)
    return spec


def _check_all(tensors: dict, spec: Spec) -> None:
    """Name every unknown, missing and mis-shaped tensor at once."""
    problems = []
    unknown, missing = sorted(set(tensors) - set(spec)), sorted(set(spec) - set(tensors))
    if unknown:
        problems.append(f"unknown tensors {unknown}")
    if missing:
        problems.append(f"missing tensors {missing}")
    for name in sorted(set(tensors) & set(spec)):
        want = tuple(spec[name][1])
        if tuple(tensors[name].shape) != want:
            problems.append(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {want}")
    if problems:
        raise CheckpointError("LLaDA checkpoint: " + "; ".join(problems))
    check_names(tensors, spec, "LLaDA checkpoint")


def load_llada(path: str | Path, dtype: str = "float32", ignore_fields: Iterable[str] = ()) -> tuple[TransformerConfig, dict]:
    """(config, params as numpy arrays in `dtype`) from a local LLaDA folder (config.json + safetensors,
    single file or sharded with model.safetensors.index.json)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    cfg = config_from_llada(json.loads(cfg_file.read_text()), dtype, ignore_fields)
    tensors = read_safetensors_folder(path)
    spec = llada_spec(cfg)
    _check_all(tensors, spec)
    return cfg, convert_tensors(tensors, spec, dtype)


def save_llada(path: str | Path, cfg: TransformerConfig, params: Any, num_shards: int = 1) -> Path:
    """Write config.json and safetensors in LLaDA's layout (sharded with an index when num_shards > 1)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = config_to_llada(cfg)
    tensors = export_tensors(params, llada_spec(cfg))
    if num_shards <= 1:
        write_safetensors(path / "model.safetensors", tensors)
    else:
        names = sorted(tensors)
        weight_map = {}
        for s in range(num_shards):
            shard = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::num_shards]}
            write_safetensors(path / shard, part)
            weight_map.update({n: shard for n in part})
        total = int(sum(np.asarray(a).nbytes for a in tensors.values()))
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return path
