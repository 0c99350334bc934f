"""The one Transformer of jaxllm, as pure functions over a parameter pytree.

Flavours (one code path, switched by `TransformerConfig`):
- `llama`: RMSNorm, RoPE (`half` = Llama/LLaDA rotate_half pairing (i, i+hd/2); `interleaved` = Llama4 /
  MobileLLM-R1 pairing (2i, 2i+1)), grouped-query attention, optional parameter-free QK-norm applied after
  RoPE (Llama4-text), SwiGLU MLP, no biases, tied or untied embeddings.
- `gpt2`: LayerNorm with bias, learned absolute positions, GELU (tanh) MLP, biases, dropout; tied embeddings.
`causal=False` gives the bidirectional masked-diffusion LM (LLaDA). `input_embeds` replaces token ids
(Coconut continuous thoughts). An optional KV cache serves autoregressive decoding.

Why pure functions rather than Flax modules: the same parameter tree is seen by optax, orbax, the sharding
rules, the HF name mapping and R-Sparse's parameter transform, and the KV cache is explicit state. Every
projection goes through an injected `linear(name, p, x, eqn)` (`dense_linear` by default), which is how R-Sparse
(jaxllm/sparse) changes the matmuls without this module knowing about it. `jaxllm.models.Model` bundles a
config and a linear into the hashable model object the samplers, losses and estimators take.

Parameter tree (shapes; D=d_model, H=heads, K=kv heads, h=head_dim, F=d_ff, V=vocab, P=max_seq_len):
    embed [V, D]; pos_embed [P, D] (gpt2); lm_head [D, V] (untied only)
    layer_{i}: attn_norm {scale [D], bias [D] (gpt2)}
               attn: q {kernel [D, H, h], bias [H, h] (gpt2)}, k/v {kernel [D, K, h], bias [K, h]},
                     o {kernel [H, h, D], bias [D]}
               mlp_norm {...}; mlp: gate/up {kernel [D, F]}, down {kernel [F, D]}   (llama)
                                    fc {kernel [D, F], bias [F]}, proj {kernel [F, D], bias [D]} (gpt2)
    final_norm {scale [D], bias [D] (gpt2)}
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxllm.config import ConfigError

Params = dict[str, Any]
# remat names -> jax.checkpoint policy (None = no remat)
REMAT_POLICIES = {"none": None, "full": "nothing_saveable", "dots": "dots_with_no_batch_dims_saveable"}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None -> n_heads (plain multi-head attention)
    head_dim: Optional[int] = None  # None -> d_model // n_heads
    d_ff: int = 256
    max_seq_len: int = 512
    causal: bool = True
    flavour: Literal["llama", "gpt2"] = "llama"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_layout: Literal["half", "interleaved"] = "half"
    qk_norm: bool = False  # Llama4-text parameter-free L2/RMS norm of q and k, after RoPE
    tie_embeddings: bool = True
    dropout: float = 0.0  # gpt2 flavour: embedding, attention and residual dropout
    mask_token_id: Optional[int] = None  # masked diffusion LM only
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Training-time memory options (they change no forward value):
    logits_chunk: int = 0  # LM-head + CE of next_token_loss in chunks of this many positions (jaxllm.models.lm_head);
    #                        0 = only when a batch's float32 logits exceed 64 MiB, -1 = never
    remat: str = "none"  # "none" | "full" (recompute each layer in the backward pass) | "dots" (keep matmul outputs)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.flavour not in ("llama", "gpt2"):
            raise ConfigError(f"TransformerConfig.flavour={self.flavour!r} is not one of ['llama', 'gpt2']")
        if self.rope_layout not in ("half", "interleaved"):
            raise ConfigError(f"TransformerConfig.rope_layout={self.rope_layout!r} not in ['half', 'interleaved']")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.num_heads_kv <= 0 or self.n_heads % self.num_heads_kv:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.num_heads_kv}")
        if self.head_size % 2 and self.flavour == "llama":
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_size}")
        if self.flavour == "gpt2" and not self.tie_embeddings:
            raise ConfigError("the gpt2 flavour ties embeddings")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must lie in [0, 1)")
        if self.mask_token_id is not None and not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"mask_token_id={self.mask_token_id} outside the vocabulary [0, {self.vocab_size})")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"TransformerConfig.remat={self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
        if self.logits_chunk < -1:
            raise ConfigError(f"TransformerConfig.logits_chunk={self.logits_chunk} must be > 0, 0 (auto) or -1 (off)")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16", "float64"):
                raise ConfigError(f"TransformerConfig.{name}={getattr(self, name)!r} is not a float dtype name")

    @property
    def num_heads_kv(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


class TransformerOutput(NamedTuple):
    logits: jax.Array  # [batch, seq, vocab] float32
    hidden: jax.Array  # [batch, seq, d_model]: the final-normed last hidden state (Coconut's thought)
    cache: Optional[dict]  # updated KV cache, or None
    layer_hiddens: Optional[tuple]  # residual stream entering each layer and after the last: n_layers + 1
    attention: Optional[tuple]  # per layer (probs [B, H, T, S], scores [B, H, T, S]) pre-softmax scores


# ----------------------------------------------------------------------------------------------------------
# Initialisation and the logical axes of every parameter (one table, used for sharding and checks).


def _param_shapes(cfg: TransformerConfig) -> dict:
    """Nested dict of (shape, logical_axes, init) for every parameter."""
    D, H, K, h, F, V = cfg.d_model, cfg.n_heads, cfg.num_heads_kv, cfg.head_size, cfg.d_ff, cfg.vocab_size
    gpt2 = cfg.flavour == "gpt2"
    normal = "normal"
    out_init = "normal_out" if gpt2 else normal

    def norm():
        p = {"scale": ((D,), ("embed",), "ones")}
        if gpt2:
            p["bias"] = ((D,), ("embed",), "zeros")
        return p

    def proj(kshape, kaxes, bshape, baxes, init=normal):
        p = {"kernel": (kshape, kaxes, init)}
        if gpt2:
            p["bias"] = (bshape, baxes, "zeros")
        return p

    layer = {
        "attn_norm": norm(),
        "attn": {
            "q": proj((D, H, h), ("embed", "heads", "head_dim"), (H, h), ("heads", "head_dim")),
            "k": proj((D, K, h), ("embed", "kv_heads", "head_dim"), (K, h), ("kv_heads", "head_dim")),
            "v": proj((D, K, h), ("embed", "kv_heads", "head_dim"), (K, h), ("kv_heads", "head_dim")),
            "o": proj((H, h, D), ("heads", "head_dim", "embed"), (D,), ("embed",), out_init),
        },
        "mlp_norm": norm(),
    }
    if gpt2:
        layer["mlp"] = {
            "fc": proj((D, F), ("embed", "mlp"), (F,), ("mlp",)),
            "proj": proj((F, D), ("mlp", "embed"), (D,), ("embed",), out_init),
        }
    else:
        layer["mlp"] = {
            "gate": {"kernel": ((D, F), ("embed", "mlp"), normal)},
            "up": {"kernel": ((D, F), ("embed", "mlp"), normal)},
            "down": {"kernel": ((F, D), ("mlp", "embed"), normal)},
        }
    tree: dict = {"embed": ((V, D), ("vocab", "embed"), normal)}
    if gpt2:
        tree["pos_embed"] = ((cfg.max_seq_len, D), (None, "embed"), normal)
    for i in range(cfg.n_layers):
        tree[f"layer_{i}"] = layer
    tree["final_norm"] = norm()
    if not cfg.tie_embeddings:
        tree["lm_head"] = ((D, V), ("embed", "vocab"), normal)
    return tree


def _is_spec(x) -> bool:
    return isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], tuple)


def logical_axes(cfg: TransformerConfig) -> Params:
    """The logical axis names of every parameter, same tree structure as `init_params`."""
    return jax.tree.map(lambda s: s[1], _param_shapes(cfg), is_leaf=_is_spec)


def init_params(cfg: TransformerConfig, key: jax.Array) -> Params:
    """Random parameters (N(0, init_std²) matrices, ones/zeros norms and biases)."""
    specs = _param_shapes(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    keys = jax.random.split(key, len(leaves))
    dtype = jnp.dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # GPT-2 scaled init of residual projections

    def make(spec, k):
        shape, _, init = spec
        if init == "ones":
            return jnp.ones(shape, dtype)
        if init == "zeros":
            return jnp.zeros(shape, dtype)
        std = out_std if init == "normal_out" else cfg.init_std
        return (std * jax.random.normal(k, shape, jnp.float32)).astype(dtype)

    return jax.tree.unflatten(treedef, [make(s, k) for s, k in zip(leaves, keys)])


def count_params(params: Params) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------------------------------------
# Building blocks.


def rms_norm(x: jax.Array, scale: Optional[jax.Array], eps: float) -> jax.Array:
    """x * rsqrt(mean(x²) + eps) * scale, computed in float32 (HF Llama / LLaDA), cast back."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)[(None,) * (x.ndim - 1)]
    return y.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    lead = (None,) * (x.ndim - 1)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)[lead] + bias.astype(jnp.float32)[lead]
    return y.astype(x.dtype)


def apply_norm(cfg: TransformerConfig, p: Params, x: jax.Array) -> jax.Array:
    if cfg.flavour == "gpt2":
        return layer_norm(x, p["scale"], p["bias"], cfg.norm_eps)
    return rms_norm(x, p["scale"], cfg.norm_eps)


def rope(x_BTNh: jax.Array, positions_BT: jax.Array, theta: float, layout: str) -> jax.Array:
    """Rotary embedding. `half`: pairs (i, i+h/2) (rotate_half); `interleaved`: pairs (2i, 2i+1)."""
    h = x_BTNh.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)  # [h/2]
    angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq[None, None, :]  # [B, T, h/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x = x_BTNh.astype(jnp.float32)
    if layout == "half":
        x1, x2 = x[..., : h // 2], x[..., h // 2 :]
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        xr, xi = x[..., 0::2], x[..., 1::2]
        out = jnp.stack([xr * cos - xi * sin, xr * sin + xi * cos], axis=-1).reshape(x.shape)
    return out.astype(x_BTNh.dtype)


Linear = Callable[[str, Params, jax.Array, str], jax.Array]


@functools.lru_cache(maxsize=None)
def _as_matmul(eqn: str) -> Optional[tuple[int, int]]:
    """(leading dims of x kept, contracted dims) when `eqn` is `lead+contract, contract+free -> lead+free` (every
    projection of the Transformer), so that it is one 2-D matmul; None for any other einsum."""
    ins, out = eqn.replace(" ", "").split("->")
    xs, ws = ins.split(",")
    contract = "".join(c for c in xs if c in ws and c not in out)
    lead = xs[: len(xs) - len(contract)]
    free = ws[len(contract):]
    if not contract or xs != lead + contract or ws != contract + free or out != lead + free:
        return None
    return len(lead), len(contract)


def project(eqn: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """einsum(eqn, x, w), as a single [rows, k] @ [k, n] matmul when the equation allows (`_as_matmul`).

    Equal to the einsum up to float rounding. On XLA:CPU the 2-D form is ≈ 1.25× faster for the SwiGLU MLP's
    forward + backward at 4×256 on the 140M shape (bench/profile_decoder.py): the einsum over [B, T, D] lowers its
    weight gradient to a dot contracting two dimensions, which the CPU backend runs through extra transposes."""
    split = _as_matmul(eqn)
    if split is None:
        return jnp.einsum(eqn, x, w)
    n_lead, n_contract = split
    lead, contract, free = x.shape[:n_lead], w.shape[:n_contract], w.shape[n_contract:]
    y = jnp.reshape(x, (math.prod(lead), math.prod(contract))) @ jnp.reshape(w, (math.prod(contract), -1))
    return jnp.reshape(y, lead + free)


def dense_linear(name: str, p: Params, x: jax.Array, eqn: str) -> jax.Array:
    """The default projection: einsum with p['kernel'] (+ p['bias']), in x's dtype.

    Every matmul of the Transformer goes through a `linear(name, p, x, eqn)` of this signature, where `name` is
    the projection's path in the parameter tree (`layer_3/attn/q`) and `p` its parameter dict; another linear
    (R-Sparse, `jaxllm.sparse.rsparse.RSparseLinear`) is injected through `forward(..., linear=)` /
    `jaxllm.models.Model(cfg, linear=)`, so this module never needs to know about it.
    """
    del name
    y = project(eqn, x, p["kernel"].astype(x.dtype))
    if "bias" in p:
        b = p["bias"].astype(x.dtype)
        y = y + b[(None,) * (y.ndim - b.ndim)]
    return y


def _dropout(x: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def attention_bias(
    cfg: TransformerConfig,
    q_len: int,
    kv_len: int,
    q_offset: jax.Array | int,
    key_mask_BS: Optional[jax.Array],
    written: Optional[jax.Array | int] = None,
) -> jax.Array:
    """Boolean mask [B or 1, 1, T, S]: True where query t may attend to key slot s.

    Query t sits in slot `q_offset + t`; causal models see slots <= their own; `key_mask_BS` drops padding;
    `written` (number of valid cache slots) drops unwritten cache slots.
    """
    q_slots = q_offset + jnp.arange(q_len)[:, None]  # [T, 1]
    k_slots = jnp.arange(kv_len)[None, :]  # [1, S]
    allowed = jnp.ones((q_len, kv_len), bool)
    if cfg.causal:
        allowed = k_slots <= q_slots
    if written is not None:
        allowed = allowed & (k_slots < written)
    allowed = allowed[None, None]
    if key_mask_BS is not None:
        allowed = allowed & key_mask_BS.astype(bool)[:, None, None, :]
    return allowed


def attention(
    cfg: TransformerConfig,
    p: Params,
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    mask: jax.Array,
    layer_cache: Optional[dict],
    cache_index: Optional[jax.Array],
    dropout_rng: Optional[jax.Array],
    return_attention: bool,
    linear: Linear = dense_linear,
    name: str = "attn",
):
    """Grouped-query attention. Returns (out [B,T,D], new layer cache or None, (probs, scores) or None).

    `linear` computes the q/k/v/o projections, called with the names `{name}/q` ... (see `dense_linear`)."""
    H, K, h = cfg.n_heads, cfg.num_heads_kv, cfg.head_size
    G = H // K
    q = linear(f"{name}/q", p["q"], x_BTD, "BTD,DNh->BTNh")
    k = linear(f"{name}/k", p["k"], x_BTD, "BTD,DNh->BTNh")
    v = linear(f"{name}/v", p["v"], x_BTD, "BTD,DNh->BTNh")
    if cfg.flavour == "llama":
        q = rope(q, positions_BT, cfg.rope_theta, cfg.rope_layout)
        k = rope(k, positions_BT, cfg.rope_theta, cfg.rope_layout)
        if cfg.qk_norm:  # Llama4-text: parameter-free RMS norm after RoPE
            q = rms_norm(q, None, cfg.norm_eps)
            k = rms_norm(k, None, cfg.norm_eps)
    new_cache = None
    if layer_cache is not None:
        k_all = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k.astype(layer_cache["k"].dtype), cache_index, 1)
        v_all = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v.astype(layer_cache["v"].dtype), cache_index, 1)
        new_cache = {"k": k_all, "v": v_all}
        k, v = k_all.astype(q.dtype), v_all.astype(q.dtype)
    B, T = x_BTD.shape[:2]
    S = k.shape[1]
    q_BTKGh = q.reshape(B, T, K, G, h)
    scores = jnp.einsum("BTKGh,BSKh->BKGTS", q_BTKGh, k).astype(jnp.float32) / math.sqrt(h)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs_d = _dropout(probs, cfg.dropout, dropout_rng).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKh->BTKGh", probs_d, v).reshape(B, T, H, h)
    out = linear(f"{name}/o", p["o"], out, "BTNh,NhD->BTD")
    attn_info = None
    if return_attention:
        attn_info = (probs.reshape(B, H, T, S), scores.reshape(B, H, T, S))
    return out, new_cache, attn_info


def mlp(cfg: TransformerConfig, p: Params, x_BTD: jax.Array, linear: Linear = dense_linear,
        name: str = "mlp") -> jax.Array:
    """SwiGLU (llama) or GELU (gpt2) MLP; projections through `linear` as `{name}/gate` ... (see `dense_linear`)."""
    if cfg.flavour == "gpt2":
        h = jax.nn.gelu(linear(f"{name}/fc", p["fc"], x_BTD, "BTD,DF->BTF"), approximate=True)
        return linear(f"{name}/proj", p["proj"], h, "BTF,FD->BTD")
    gate = linear(f"{name}/gate", p["gate"], x_BTD, "BTD,DF->BTF")
    up = linear(f"{name}/up", p["up"], x_BTD, "BTD,DF->BTF")
    return linear(f"{name}/down", p["down"], jax.nn.silu(gate) * up, "BTF,FD->BTD")


# ----------------------------------------------------------------------------------------------------------
# The forward pass.


def init_cache(cfg: TransformerConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: per layer k, v of shape [batch, max_len, kv_heads, head_dim]."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_len, cfg.num_heads_kv, cfg.head_size)
    return {f"layer_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for i in range(cfg.n_layers)}


def embed_tokens(cfg: TransformerConfig, params: Params, tokens_BT: jax.Array) -> jax.Array:
    """Token embeddings [B, T, D] in the compute dtype (no position embedding)."""
    return jnp.take(params["embed"], tokens_BT, axis=0).astype(cfg.compute_dtype)


def unembed(cfg: TransformerConfig, params: Params, hidden_BTD: jax.Array) -> jax.Array:
    """Logits [B, T, V] in float32 from final-normed hidden states."""
    if cfg.tie_embeddings:
        return jnp.einsum("BTD,VD->BTV", hidden_BTD, params["embed"].astype(hidden_BTD.dtype)).astype(jnp.float32)
    return jnp.einsum("BTD,DV->BTV", hidden_BTD, params["lm_head"].astype(hidden_BTD.dtype)).astype(jnp.float32)


def forward(
    cfg: TransformerConfig,
    params: Params,
    tokens: Optional[jax.Array] = None,
    *,
    input_embeds: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
    attention_mask: Optional[jax.Array] = None,
    cache: Optional[dict] = None,
    cache_index: Optional[jax.Array | int] = None,
    dropout_rng: Optional[jax.Array] = None,
    segment_ids: Optional[jax.Array] = None,
    return_layer_hiddens: bool = False,
    return_attention: bool = False,
    compute_logits: bool = True,
    linear: Linear = dense_linear,
) -> TransformerOutput:
    """Run the Transformer.

    Args:
      tokens: [batch, seq] int32 token ids, or None when `input_embeds` is given.
      input_embeds: [batch, seq, d_model] embeddings used instead of token ids (continuous thoughts).
      positions: [batch, seq] int32 positions for RoPE / learned positions; default arange(seq)
        (+ cache_index when decoding with a cache).
      attention_mask: [batch, kv_len] bool key mask (False = padding); kv_len = seq, or the cache length.
      cache: KV cache from `init_cache`; keys/values of this call are written at `cache_index`.
      dropout_rng: a key turns dropout on (gpt2 flavour, training); None = deterministic.
      segment_ids: [batch, seq] int ids of packed documents; a token attends only to keys of its own
        segment (no cache). Pass `positions` restarting per segment alongside.
      linear: the function every projection goes through (`dense_linear`; R-Sparse supplies its own). Usually
        set once by `jaxllm.models.Model(cfg, linear=...)`.
    Returns:
      TransformerOutput(logits [B,T,V] f32, hidden [B,T,D], cache, layer_hiddens, attention).
    """
    if (tokens is None) == (input_embeds is None):
        raise ValueError("pass exactly one of tokens and input_embeds")
    x = embed_tokens(cfg, params, tokens) if input_embeds is None else input_embeds.astype(cfg.compute_dtype)
    B, T = x.shape[:2]
    offset = 0 if cache is None else cache_index
    if cache is not None and cache_index is None:
        raise ValueError("a cache needs cache_index (the slot where this call's keys are written)")
    if positions is None:
        positions = jnp.broadcast_to(offset + jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    if cfg.flavour == "gpt2":
        x = x + jnp.take(params["pos_embed"], positions, axis=0).astype(x.dtype)
    rngs = [None] * (2 * cfg.n_layers + 1)
    if dropout_rng is not None and cfg.dropout > 0:
        rngs = list(jax.random.split(dropout_rng, 2 * cfg.n_layers + 1))
    x = _dropout(x, cfg.dropout, rngs[-1])
    kv_len = T if cache is None else next(iter(cache.values()))["k"].shape[1]
    mask = attention_bias(cfg, T, kv_len, offset, attention_mask, None if cache is None else offset + T)
    if segment_ids is not None:
        if cache is not None:
            raise ValueError("segment_ids (packed sequences) cannot be combined with a KV cache")
        same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, S]
        mask = mask & same
    new_cache = {} if cache is not None else None
    hiddens, attns = [], []

    def block(x, lp, layer_cache, attn_rng, resid_rng, mlp_rng, i):
        a, c, info = attention(
            cfg, lp["attn"], apply_norm(cfg, lp["attn_norm"], x), positions, mask, layer_cache, offset,
            attn_rng, return_attention, linear, f"layer_{i}/attn",
        )
        x = x + _dropout(a, cfg.dropout, resid_rng)
        m = mlp(cfg, lp["mlp"], apply_norm(cfg, lp["mlp_norm"], x), linear, f"layer_{i}/mlp")
        return x + _dropout(m, cfg.dropout, mlp_rng), c, info

    policy = REMAT_POLICIES[cfg.remat]
    if policy is not None and cache is None and not return_attention:  # remat: training passes only
        block = jax.checkpoint(block, policy=getattr(jax.checkpoint_policies, policy), static_argnums=(6,))
    for i in range(cfg.n_layers):
        if return_layer_hiddens:
            hiddens.append(x)
        attn_rng = resid_rng = None
        if rngs[0] is not None:
            attn_rng, resid_rng = jax.random.split(rngs[2 * i])
        layer_cache = None if cache is None else cache[f"layer_{i}"]
        x, c, info = block(x, params[f"layer_{i}"], layer_cache, attn_rng, resid_rng, rngs[2 * i + 1], i)
        if cache is not None:
            new_cache[f"layer_{i}"] = c
        if return_attention:
            attns.append(info)
    if return_layer_hiddens:
        hiddens.append(x)
    hidden = apply_norm(cfg, params["final_norm"], x)
    logits = unembed(cfg, params, hidden) if compute_logits else None
    return TransformerOutput(
        logits=logits,
        hidden=hidden,
        cache=new_cache,
        layer_hiddens=tuple(hiddens) if return_layer_hiddens else None,
        attention=tuple(attns) if return_attention else None,
    )
