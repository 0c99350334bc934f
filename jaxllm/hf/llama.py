"""Import / export of local Hugging Face checkpoints (no network): `llama` and `llama4_text` (MobileLLM-R1).

    config, params = load_pretrained("path/to/MobileLLM-R1-140M", dtype="float32")
    save_pretrained("out/", config, params)            # transformers' from_pretrained loads it

Strict: an unknown or missing tensor, a wrong shape, or a config value the Transformer cannot reproduce
raises `CheckpointError` naming the tensor / field and what was expected. Nothing is skipped or zero-filled.

Reusable pieces (e.g. for other layouts such as LLaDA): `read_safetensors_folder(path)` (single file or
sharded index, bf16 included), `write_safetensors(path, tensors)`, and `convert_tensors(tensors, spec)`,
the strict name/shape mapping from a flat {hf_name: array} dict to a nested parameter tree.

Layout notes (models_theory.md 1.1): torch Linear weights are [out, in]; our kernels are [in, ...]. q/k/v
kernels are [D, heads, head_dim], o is [heads, head_dim, D]. Llama4-text uses the interleaved RoPE pairing
(2i, 2i+1) and a parameter-free QK-norm after RoPE; `llama` uses rotate_half (i, i+h/2). Neither needs a
weight permutation because our `rope_layout` reproduces each convention directly.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from jaxllm.models.transformer import TransformerConfig, _is_spec, _param_shapes


class CheckpointError(ValueError):
    """A checkpoint that does not match what the Transformer expects (names the tensor or field)."""


# ----------------------------------------------------------------------------------------------------------
# safetensors files (read/write by hand so bf16 works without torch: the format is a JSON header + bytes).

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (bf16 as ml_dtypes.bfloat16)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + n])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: bad safetensors header ({e.msg})") from None
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dt = _np_dtype(_ST_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw, dtype=dt, count=(end - start) // dt.itemsize, offset=base + start)
        if arr.size != math.prod(info["shape"]):
            raise CheckpointError(f"{path}: tensor {name!r} has {arr.size} values for shape {info['shape']}")
        out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, np.ndarray], metadata: Optional[dict] = None) -> None:
    """Write numpy arrays as one .safetensors file (metadata {"format": "pt"} as transformers expects)."""
    inv = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset, blobs = 0, []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dname = "bfloat16" if arr.dtype.name == "bfloat16" else arr.dtype.name
        if dname not in inv:
            raise CheckpointError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
        b = arr.tobytes()
        header[name] = {"dtype": inv[dname], "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(h)))
        fh.write(h)
        for b in blobs:
            fh.write(b)


def read_safetensors_folder(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF model folder: `model.safetensors`, or the shards named by
    `model.safetensors.index.json` (each tensor checked to be in the shard the index names)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            f = path / shard
            if not f.is_file():
                raise CheckpointError(f"{index} names shard {shard!r}, which is missing")
            for name, arr in read_safetensors(f).items():
                if weight_map.get(name) != shard:
                    raise CheckpointError(f"tensor {name!r} is in {shard} but the index says "
                                          f"{weight_map.get(name)!r}")
                out[name] = arr
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise CheckpointError(f"{index}: tensors {missing[:5]} are listed but not in their shards")
        return out
    if single.is_file():
        return read_safetensors(single)
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


# ----------------------------------------------------------------------------------------------------------
# Strict name / shape mapping.

# spec: {hf_name: (param path tuple, hf shape tuple, to_ours(array) -> array, to_hf(array) -> array)}
Spec = dict[str, tuple[tuple[str, ...], tuple[int, ...], Callable, Callable]]


def check_names(found, expected, what: str = "checkpoint") -> None:
    """Raise naming every unexpected and every missing tensor name."""
    found, expected = set(found), set(expected)
    unknown, missing = sorted(found - expected), sorted(expected - found)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown tensors {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        raise CheckpointError(f"{what}: " + "; ".join(parts))


def convert_tensors(tensors: Mapping[str, np.ndarray], spec: Spec, dtype=None) -> dict:
    """Flat {hf_name: array} -> nested parameter tree, strictly: names must match `spec` exactly and every
    shape must equal the spec's; each array goes through its `to_ours` transform."""
    check_names(tensors, spec)
    tree: dict = {}
    for name, (path, shape, to_ours, _) in spec.items():
        arr = tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        arr = np.asarray(arr)
        if dtype is not None:
            arr = arr.astype(_np_dtype(dtype) if isinstance(dtype, str) else dtype)
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = to_ours(arr)
    return tree


def export_tensors(params: Mapping, spec: Spec) -> dict[str, np.ndarray]:
    """Nested parameter tree -> flat {hf_name: array} through each entry's `to_hf` transform."""
    out = {}
    used = set()
    for name, (path, shape, _, to_hf) in spec.items():
        node = params
        for p in path:
            if p not in node:
                raise CheckpointError(f"parameter {'/'.join(path)} (for {name!r}) is missing")
            node = node[p]
        arr = to_hf(np.asarray(node))
        if tuple(arr.shape) != tuple(shape):
            raise CheckpointError(f"parameter {'/'.join(path)} gives {name!r} shape {arr.shape}, expected {shape}")
        out[name] = np.ascontiguousarray(arr)
        used.add(path)
    leaves = set(_paths(params))
    extra = sorted("/".join(p) for p in leaves - used)
    if extra:
        raise CheckpointError(f"parameters {extra[:8]} have no place in the checkpoint layout")
    return out


def _paths(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    else:
        yield prefix


def decoder_spec(cfg: TransformerConfig, mlp_name: str = "mlp") -> Spec:
    """HF Llama-family tensor layout for a `llama`-flavour config (`mlp_name`: "mlp" for LlamaForCausalLM,
    "feed_forward" for Llama4ForCausalLM)."""
    if cfg.flavour != "llama":
        raise CheckpointError(f"HF Llama layouts need flavour='llama', got {cfg.flavour!r}")
    D, H, K, h, F, V = cfg.d_model, cfg.n_heads, cfg.num_heads_kv, cfg.head_size, cfg.d_ff, cfg.vocab_size
    ident = lambda a: a  # noqa: E731
    T = lambda a: a.T  # noqa: E731

    def heads_in(n):  # torch [n*h, D] <-> ours [D, n, h]
        return (lambda a: a.T.reshape(D, n, h)), (lambda a: a.reshape(D, n * h).T)

    o_in = (lambda a: a.T.reshape(H, h, D)), (lambda a: a.reshape(H * h, D).T)
    spec: Spec = {"model.embed_tokens.weight": (("embed",), (V, D), ident, ident),
                  "model.norm.weight": (("final_norm", "scale"), (D,), ident, ident)}
    for i in range(cfg.n_layers):
        pre, L = f"model.layers.{i}.", f"layer_{i}"
        spec[pre + "input_layernorm.weight"] = ((L, "attn_norm", "scale"), (D,), ident, ident)
        spec[pre + "post_attention_layernorm.weight"] = ((L, "mlp_norm", "scale"), (D,), ident, ident)
        for proj, n in (("q", H), ("k", K), ("v", K)):
            spec[pre + f"self_attn.{proj}_proj.weight"] = ((L, "attn", proj, "kernel"), (n * h, D), *heads_in(n))
        spec[pre + "self_attn.o_proj.weight"] = ((L, "attn", "o", "kernel"), (D, H * h), *o_in)
        spec[pre + f"{mlp_name}.gate_proj.weight"] = ((L, "mlp", "gate", "kernel"), (F, D), T, T)
        spec[pre + f"{mlp_name}.up_proj.weight"] = ((L, "mlp", "up", "kernel"), (F, D), T, T)
        spec[pre + f"{mlp_name}.down_proj.weight"] = ((L, "mlp", "down", "kernel"), (D, F), T, T)
    if not cfg.tie_embeddings:
        spec["lm_head.weight"] = (("lm_head",), (V, D), T, T)
    return spec


# ----------------------------------------------------------------------------------------------------------
# config.json <-> TransformerConfig.

# Fields that never change the forward pass of these models (metadata, generation, training-only).
_INERT = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "bos_token_id",
          "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "attention_dropout", "_name_or_path",
          "output_router_logits", "router_aux_loss_coef", "router_jitter_noise", "num_experts_per_tok",
          "num_local_experts", "interleave_moe_layer_step", "no_rope_layer_interval", "layer_types",
          "floor_scale", "attn_scale", "attn_temperature_tuning", "intermediate_size", "tie_word_embeddings",
          "max_position_embeddings", "attention_chunk_size", "rope_parameters", "rope_theta", "rope_scaling",
          "rms_norm_eps", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "vocab_size", "hidden_act", "attention_bias", "mlp_bias", "pretraining_tp",
          "use_qk_norm", "intermediate_size_mlp", "moe_layers", "no_rope_layers", "for_llm_compressor",
          "generation_config",
          # written by real checkpoints / transformers' GGUF import, never read by the forward pass:
          "_model_name_or_path", "unk_token_id", "sep_token_id", "output_attentions", "output_hidden_states",
          "return_dict", "_attn_implementation_autoset"}
# (most names above are read and checked below; listing them here only marks them as known). Anything else,
# e.g. `quantization_config` (the tensors would not be plain weights) or `sliding_window`, is rejected.


def _require(hf: dict, key: str, ok: Callable[[Any], bool], expected: str, default=None):
    v = hf.get(key, default)
    if not ok(v):
        raise CheckpointError(f"config.json: unsupported {key}={v!r} (expected {expected})")
    return v


def _rope_theta(hf: dict) -> float:
    rp = hf.get("rope_parameters")
    if rp is not None:
        if not isinstance(rp, dict):
            raise CheckpointError(f"config.json: rope_parameters={rp!r} is not an object")
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype != "default":
            raise CheckpointError(f"config.json: unsupported rope_parameters.rope_type={rtype!r} (expected 'default')")
        extra = sorted(set(rp) - {"rope_type", "type", "rope_theta"})
        if extra:
            raise CheckpointError(f"config.json: unsupported rope_parameters fields {extra}")
        return float(rp["rope_theta"])
    _require(hf, "rope_scaling", lambda v: v is None, "null (no RoPE scaling)")
    return float(hf.get("rope_theta", 10000.0))


def _head_dim(hf: dict) -> Optional[int]:
    """None when head_dim is the default d_model / heads (so configs round-trip to the same value)."""
    h = hf.get("head_dim")
    if not h or int(h) * int(hf["num_attention_heads"]) == int(hf["hidden_size"]):
        return None
    return int(h)


def config_from_hf(hf: dict, dtype: str = "float32") -> TransformerConfig:
    """TransformerConfig for an HF config.json dict of model_type `llama` or `llama4_text` (strict)."""
    mt = hf.get("model_type")
    if mt not in ("llama", "llama4_text"):
        raise CheckpointError(f"config.json: unsupported model_type={mt!r} (expected 'llama' or 'llama4_text')")
    unknown = sorted(set(hf) - _INERT)
    if unknown:
        raise CheckpointError(f"config.json: unknown fields {unknown} (not known to be inert for {mt})")
    _require(hf, "hidden_act", lambda v: v == "silu", "'silu'", "silu")
    _require(hf, "attention_bias", lambda v: not v, "false", False)
    _require(hf, "mlp_bias", lambda v: not v, "false", False)
    _require(hf, "pretraining_tp", lambda v: v in (1, None), "1", 1)
    L = int(hf["num_hidden_layers"])
    max_len = int(hf.get("max_position_embeddings", 2048))
    if mt == "llama4_text":
        _require(hf, "moe_layers", lambda v: v == [], "[] (a dense model; MoE layers are not supported)")
        _require(hf, "no_rope_layers", lambda v: v is None or (isinstance(v, list) and all(x == 1 for x in v[:L])),
                 "all 1 (RoPE in every layer; NoPE layers are not supported)")
        chunk = hf.get("attention_chunk_size")
        if chunk is not None:  # chunked attention == full causal attention up to the chunk size
            max_len = min(max_len, int(chunk))
        d_ff = int(_require(hf, "intermediate_size_mlp", lambda v: isinstance(v, int) and v > 0, "a positive int"))
        layout, qk_norm = "interleaved", bool(hf.get("use_qk_norm", True))
    else:
        d_ff, layout, qk_norm = int(hf["intermediate_size"]), "half", False
    try:
        return TransformerConfig(
            vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]), n_layers=L,
            n_heads=int(hf["num_attention_heads"]),
            n_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            head_dim=_head_dim(hf), d_ff=d_ff, max_seq_len=max_len,
            causal=True, flavour="llama", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(hf), rope_layout=layout, qk_norm=qk_norm,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            dtype=dtype, param_dtype=dtype,
        )
    except KeyError as e:
        raise CheckpointError(f"config.json: missing field {e.args[0]!r}") from None


def config_to_hf(cfg: TransformerConfig, model_type: Optional[str] = None) -> dict:
    """config.json dict for `cfg` (`llama4_text` when rope is interleaved, else `llama`)."""
    if cfg.flavour != "llama" or not cfg.causal:
        raise CheckpointError("only causal llama-flavour configs can be written as HF Llama checkpoints")
    model_type = model_type or ("llama4_text" if cfg.rope_layout == "interleaved" else "llama")
    want_layout = "interleaved" if model_type == "llama4_text" else "half"
    if cfg.rope_layout != want_layout:
        raise CheckpointError(f"model_type {model_type} needs rope_layout={want_layout!r}, got {cfg.rope_layout!r}")
    if model_type == "llama" and cfg.qk_norm:
        raise CheckpointError("model_type llama has no QK-norm; qk_norm=True needs llama4_text")
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.num_heads_kv, head_dim=cfg.head_size,
        hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, torch_dtype=cfg.param_dtype,
    )
    if model_type == "llama":
        return dict(architectures=["LlamaForCausalLM"], model_type="llama", intermediate_size=cfg.d_ff,
                    mlp_bias=False, **common)
    return dict(architectures=["Llama4ForCausalLM"], model_type="llama4_text", intermediate_size=cfg.d_ff,
                intermediate_size_mlp=cfg.d_ff, use_qk_norm=cfg.qk_norm, moe_layers=[],
                no_rope_layers=[1] * cfg.n_layers, attention_chunk_size=cfg.max_seq_len,
                attn_temperature_tuning=False, num_local_experts=0, interleave_moe_layer_step=0, **common)


def _mlp_name(model_type: str) -> str:
    return "feed_forward" if model_type == "llama4_text" else "mlp"


# ----------------------------------------------------------------------------------------------------------
# Public entry points.


def load_pretrained(path: str | Path, dtype: str = "float32") -> tuple[TransformerConfig, dict]:
    """(config, params as numpy arrays in `dtype`) from a local HF folder (config.json + safetensors)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    hf = json.loads(cfg_file.read_text())
    cfg = config_from_hf(hf, dtype)
    tensors = read_safetensors_folder(path)
    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        lm, emb = tensors["lm_head.weight"], tensors.get("model.embed_tokens.weight")
        if emb is None or lm.shape != emb.shape or not np.array_equal(lm, emb):
            raise CheckpointError("tie_word_embeddings=true but lm_head.weight differs from model.embed_tokens.weight")
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    params = convert_tensors(tensors, decoder_spec(cfg, _mlp_name(hf["model_type"])), dtype)
    _check_tree(cfg, params)
    return cfg, params


def save_pretrained(path: str | Path, cfg: TransformerConfig, params, model_type: Optional[str] = None) -> Path:
    """Write config.json + model.safetensors that transformers' `from_pretrained` loads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = config_to_hf(cfg, model_type)
    _check_tree(cfg, params)
    tensors = export_tensors(params, decoder_spec(cfg, _mlp_name(hf["model_type"])))
    write_safetensors(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return path


def _check_tree(cfg: TransformerConfig, params) -> None:
    """Every parameter the Transformer expects is present with its shape (and nothing else)."""
    import jax

    specs = _param_shapes(cfg)
    want = {"/".join(str(getattr(k, "key", k)) for k in p): s[0]
            for p, s in jax.tree_util.tree_flatten_with_path(specs, is_leaf=_is_spec)[0]}
    got = {"/".join(p): tuple(np.shape(_get(params, p))) for p in _paths(params)}
    check_names(got, want, "parameter tree")
    for k, shape in want.items():
        if got[k] != tuple(shape):
            raise CheckpointError(f"parameter {k} has shape {got[k]}, expected {tuple(shape)}")


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree
