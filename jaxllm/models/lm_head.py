"""LM head + cross-entropy in sequence chunks, never holding the full [B, T, V] logits.

At the MobileLLM-R1-140M shape (V = 128,256) a 4×256 batch has 0.5 GiB of float32 logits, and the plain
`log_softmax` loss keeps them, their log-softmax and their gradient alive at once. `weighted_nll` computes the
same weighted sum of next-token losses chunk by chunk along the sequence (`lax.scan`, the batch axis kept
whole so batch sharding is untouched), and its custom VJP computes the gradient *in the forward pass*: for a
weighted sum, d loss / d logits = w · (softmax − onehot) is known there, so each chunk's logits are formed once
and turned straight into d hidden (kept, [B, T, D]) and a running d W ([V, D] or [D, V]). The backward pass
only scales those by the incoming cotangent, so the head costs the same three matmuls as the unchunked loss
(logits, d hidden, d W) and its peak memory is one chunk's logits instead of three full copies.

The per-token losses it returns carry no gradient (stop_gradient): a loss that needs per-token gradients with
other weights (advantage-weighted RL) uses the full logits (`jaxllm.train.lm.token_losses`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxllm.models import transformer as tfm

AUTO_CHUNK_BYTES = 64 * 2**20  # `logits_chunk = 0`: chunk when a batch's float32 logits exceed this


def head_chunk(cfg: tfm.TransformerConfig, batch: int, seq: int) -> int:
    """Sequence positions per chunk for a [batch, seq] loss, or 0 for the full-logits path.

    `cfg.logits_chunk`: > 0 that many positions, -1 never chunk, 0 (default) chunk only when the batch's float32
    logits would exceed 64 MiB, in chunks of at most 64 MiB (so the small models of the tests are unchanged)."""
    if cfg.logits_chunk > 0:
        return min(cfg.logits_chunk, seq)
    if cfg.logits_chunk < 0:
        return 0
    per_position = batch * cfg.vocab_size * 4
    if per_position * seq <= AUTO_CHUNK_BYTES:
        return 0
    return max(1, min(seq, AUTO_CHUNK_BYTES // per_position))


def _logits(h_BcD: jax.Array, w: jax.Array, vocab_major: bool) -> jax.Array:
    eqn = "BcD,VD->BcV" if vocab_major else "BcD,DV->BcV"
    return jnp.einsum(eqn, h_BcD, w).astype(jnp.float32)


def _chunks(x: jax.Array, chunk: int, fill) -> jax.Array:
    """[B, T, ...] -> [T/chunk, B, chunk, ...], padding T up to a multiple of `chunk` with `fill`."""
    B, T = x.shape[:2]
    pad = -T % chunk
    if pad:
        x = jnp.concatenate([x, jnp.full((B, pad) + x.shape[2:], fill, x.dtype)], axis=1)
    return jnp.swapaxes(x.reshape((B, (T + pad) // chunk, chunk) + x.shape[2:]), 0, 1)


def _unchunk(x: jax.Array, T: int) -> jax.Array:
    """[n, B, chunk, ...] -> [B, T, ...]."""
    n, B, c = x.shape[:3]
    return jnp.swapaxes(x, 0, 1).reshape((B, n * c) + x.shape[3:])[:, :T]


def _nll_chunk(h_c, w, t_c, vocab_major):
    logits = _logits(h_c, w, vocab_major)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
    return logits, lse, lse - target


def _primal(h_BTD, w, targets_BT, weights_BT, chunk, vocab_major):
    def body(total, xs):
        h_c, t_c, w_c = xs
        _, _, nll = _nll_chunk(h_c, w, t_c, vocab_major)
        return total + jnp.sum(nll * w_c), nll

    xs = (_chunks(h_BTD, chunk, 0), _chunks(targets_BT, chunk, 0), _chunks(weights_BT.astype(jnp.float32), chunk, 0))
    total, nll = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, _unchunk(nll, h_BTD.shape[1])


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _weighted_nll(h_BTD, w, targets_BT, weights_BT, chunk, vocab_major):
    return _primal(h_BTD, w, targets_BT, weights_BT, chunk, vocab_major)


def _fwd(h_BTD, w, targets_BT, weights_BT, chunk, vocab_major):
    V = w.shape[0] if vocab_major else w.shape[1]

    def body(carry, xs):
        total, dw = carry
        h_c, t_c, w_c = xs
        logits, lse, nll = _nll_chunk(h_c, w, t_c, vocab_major)
        dlogits = (jnp.exp(logits - lse[..., None]) - jax.nn.one_hot(t_c, V, dtype=jnp.float32)) * w_c[..., None]
        dlogits = dlogits.astype(h_c.dtype)
        dh_c = jnp.einsum("BcV,VD->BcD" if vocab_major else "BcV,DV->BcD", dlogits, w)
        dw = dw + jnp.einsum("BcV,BcD->VD" if vocab_major else "BcV,BcD->DV", dlogits, h_c,
                             preferred_element_type=jnp.float32)
        return (total + jnp.sum(nll * w_c), dw), (nll, dh_c)

    xs = (_chunks(h_BTD, chunk, 0), _chunks(targets_BT, chunk, 0), _chunks(weights_BT.astype(jnp.float32), chunk, 0))
    (total, dw), (nll, dh) = jax.lax.scan(body, (jnp.zeros((), jnp.float32), jnp.zeros(w.shape, jnp.float32)), xs)
    T = h_BTD.shape[1]
    return (total, _unchunk(nll, T)), (_unchunk(dh, T), dw.astype(w.dtype), targets_BT, weights_BT)


def _bwd(chunk, vocab_major, res, cotangents):
    dh, dw, targets_BT, weights_BT = res
    g_total, _ = cotangents  # the per-token losses are returned under stop_gradient: their cotangent is zero
    zero_t = jnp.zeros(targets_BT.shape, jax.dtypes.float0)
    return (g_total * dh).astype(dh.dtype), (g_total * dw).astype(dw.dtype), zero_t, jnp.zeros_like(weights_BT)


_weighted_nll.defvjp(_fwd, _bwd)


def weighted_nll(cfg: tfm.TransformerConfig, params, hidden_BTD: jax.Array, targets_BT: jax.Array,
                 weights_BT: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """(Σ weights · nll  (float32 scalar, differentiable in `hidden` and the head), nll [B, T] float32 (no gradient)).

    hidden_BTD: final-normed hidden states (`forward(..., compute_logits=False).hidden`); targets_BT int32 token ids
    each position predicts; weights_BT: per-position loss weights (not differentiated); chunk: sequence positions per
    chunk (`head_chunk`). Equals `-log_softmax(unembed(hidden))[target]` summed with the weights, to float32 rounding.
    """
    if chunk <= 0:
        raise ValueError(f"weighted_nll needs a positive chunk, got {chunk}; use the full logits for chunk 0")
    vocab_major = cfg.tie_embeddings
    w = (params["embed"] if vocab_major else params["lm_head"]).astype(hidden_BTD.dtype)
    total, nll = _weighted_nll(hidden_BTD, w, targets_BT.astype(jnp.int32), weights_BT, chunk, vocab_major)
    return total, jax.lax.stop_gradient(nll)
