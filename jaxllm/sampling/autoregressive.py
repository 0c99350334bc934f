"""Autoregressive sampling with a KV cache: one jitted prefill + a `lax.while_loop` decode (static shapes).

    out = generate(cfg, params, [[1, 5, 9], [1, 7]], jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=32, temperature=0.7, top_p=0.95, stop_tokens=(2,)))
    out.tokens [B, max_new] (pad_id after a stop), out.logprobs [B, max_new], out.lengths [B]

Prompts of different lengths are left-padded to one length P; each row's RoPE positions start at 0 at its
first real token and a key mask hides the padding, so a row's result does not depend on its batch mates.
Log-probs are those of the model's own next-token distribution (log_softmax of the logits, before
temperature / top-k / top-p), which is what confidence measures (DeepConf) and RL ratios use.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ConfigError
from jaxllm.models import transformer as tfm


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: tuple[int, ...] = ()  # generation of a row ends after emitting one of these
    pad_id: int = 0  # written after a row stops
    return_top_logprobs: int = 0  # k > 0: also return the k largest log-probs (and their ids) per step

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.return_top_logprobs < 0:
            raise ConfigError(f"return_top_logprobs must be >= 0, got {self.return_top_logprobs}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


class SampleOutput(NamedTuple):
    tokens: jax.Array  # [B, N] int32 generated tokens (pad_id after the stop token)
    logprobs: jax.Array  # [B, N] float32 log p(chosen token) under the model (0 after the stop)
    lengths: jax.Array  # [B] int32 generated tokens per row, the stop token included
    top_logprobs: Optional[jax.Array]  # [B, N, k] float32, or None
    top_tokens: Optional[jax.Array]  # [B, N, k] int32, or None


def filter_logits(logits_BV: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Logits of the sampling distribution: temperature, then top-k, then nucleus (top-p) filtering."""
    x = logits_BV.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k > 0 and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]  # [B, 1]
        x = jnp.where(x < kth, neg, x)
    if top_p < 1.0:
        order = jnp.argsort(-x, axis=-1)
        sorted_x = jnp.take_along_axis(x, order, axis=-1)
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep_sorted = before < top_p  # the smallest prefix whose mass reaches top_p (always >= 1 token)
        keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocab order
        x = jnp.where(keep, x, neg)
    return x


def _choose(logits_BV, key, s: SamplingConfig):
    if s.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BV, s.temperature, s.top_k, s.top_p)).astype(jnp.int32)


def _step_outputs(logits_BV, tok_B, s: SamplingConfig):
    logp = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logp, tok_B[:, None], axis=-1)[:, 0]
    if s.return_top_logprobs:
        top_lp, top_id = jax.lax.top_k(logp, s.return_top_logprobs)
        return chosen, top_lp, top_id.astype(jnp.int32)
    return chosen, None, None


@partial(jax.jit, static_argnames=("cfg", "s"))
def _generate(cfg: tfm.TransformerConfig, s: SamplingConfig, params, tokens_BP, lengths_B, key):
    B, P = tokens_BP.shape
    N = s.max_new_tokens
    S = P + N
    pad_B = P - lengths_B  # left padding per row
    key_mask_BS = jnp.arange(S)[None, :] >= pad_B[:, None]
    positions_BP = jnp.maximum(jnp.arange(P)[None, :] - pad_B[:, None], 0).astype(jnp.int32)
    cache = tfm.init_cache(cfg, B, S)
    out = tfm.forward(cfg, params, tokens_BP, positions=positions_BP, attention_mask=key_mask_BS, cache=cache,
                      cache_index=0)
    stops = jnp.asarray(s.stop_tokens or (-1,), jnp.int32)
    k = max(s.return_top_logprobs, 1)

    key, sub = jax.random.split(key)
    logits = out.logits[:, -1]
    tok = _choose(logits, sub, s)
    lp, top_lp, top_id = _step_outputs(logits, tok, s)
    toks = jnp.full((B, N), s.pad_id, jnp.int32).at[:, 0].set(tok)
    lps = jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp)
    tlps = jnp.zeros((B, N, k), jnp.float32)
    tids = jnp.zeros((B, N, k), jnp.int32)
    if s.return_top_logprobs:
        tlps, tids = tlps.at[:, 0].set(top_lp), tids.at[:, 0].set(top_id)
    done = jnp.isin(tok, stops)
    lengths = jnp.ones((B,), jnp.int32)

    def cond(c):
        t, _, _, done, *_ = c
        return (t < N) & ~jnp.all(done)

    def body(c):
        t, cache, prev, done, toks, lps, tlps, tids, lengths, key = c
        key, sub = jax.random.split(key)
        pos = (lengths_B + t - 1)[:, None].astype(jnp.int32)
        o = tfm.forward(cfg, params, prev[:, None], positions=pos, attention_mask=key_mask_BS, cache=cache,
                        cache_index=P + t - 1)
        logits = o.logits[:, 0]
        tok = _choose(logits, sub, s)
        lp, top_lp, top_id = _step_outputs(logits, tok, s)
        live = ~done
        tok = jnp.where(live, tok, s.pad_id)
        toks = toks.at[:, t].set(tok)
        lps = lps.at[:, t].set(jnp.where(live, lp, 0.0))
        if s.return_top_logprobs:
            tlps = tlps.at[:, t].set(jnp.where(live[:, None], top_lp, 0.0))
            tids = tids.at[:, t].set(jnp.where(live[:, None], top_id, 0))
        lengths = lengths + live.astype(jnp.int32)
        done = done | (live & jnp.isin(tok, stops))
        return t + 1, o.cache, tok, done, toks, lps, tlps, tids, lengths, key

    carry = (jnp.int32(1), out.cache, tok, done, toks, lps, tlps, tids, lengths, key)
    _, _, _, _, toks, lps, tlps, tids, lengths, _ = jax.lax.while_loop(cond, body, carry)
    if not s.return_top_logprobs:
        tlps = tids = None
    return SampleOutput(toks, lps, lengths, tlps, tids)


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, pad_to: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to [B, P] int32 (P = longest, or `pad_to`); returns (tokens, lengths)."""
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if (lengths == 0).any():
        raise ValueError(f"prompt(s) {np.flatnonzero(lengths == 0).tolist()} are empty")
    P = int(lengths.max()) if pad_to is None else int(pad_to)
    if P < lengths.max():
        raise ValueError(f"pad_to={pad_to} is shorter than the longest prompt ({lengths.max()} tokens)")
    out = np.full((len(prompts), P), pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, P - len(p):] = np.asarray(p, np.int64)
    return out, lengths


def generate(cfg: tfm.TransformerConfig, params, prompts, key: jax.Array, sampling: SamplingConfig = SamplingConfig(),
             lengths=None, pad_to: Optional[int] = None) -> SampleOutput:
    """Sample continuations of `prompts` (a list of token-id lists, or left-padded [B, P] ids with `lengths`).

    Validated before tracing: ids within the vocabulary, non-empty prompts, and P + max_new_tokens within
    cfg.max_seq_len. `pad_to` rounds P up to a fixed size so that different batches reuse one compilation.
    """
    if not cfg.causal:
        raise ConfigError("autoregressive sampling needs a causal model (cfg.causal=True)")
    if lengths is None:
        bad = [(i, t) for i, p in enumerate(prompts) for t in p if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt token(s) outside the vocabulary [0, {cfg.vocab_size}): (row, id) {bad[:5]}")
        tokens, lengths = pad_prompts(prompts, sampling.pad_id, pad_to)
    else:
        tokens, lengths = np.asarray(prompts), np.asarray(lengths, np.int32)
        if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
            raise ValueError(f"padded prompts must be [B, P] with lengths [B], got {tokens.shape} and {lengths.shape}")
        if ((lengths < 1) | (lengths > tokens.shape[1])).any():
            raise ValueError(f"lengths must lie in [1, {tokens.shape[1]}], got {lengths.tolist()}")
        real = np.arange(tokens.shape[1])[None, :] >= (tokens.shape[1] - lengths)[:, None]
        vals = tokens[real]
        if vals.size and (vals.min() < 0 or vals.max() >= cfg.vocab_size):
            raise ValueError(f"prompt token ids in [{vals.min()}, {vals.max()}] outside the vocabulary [0, {cfg.vocab_size})")
    for t in sampling.stop_tokens + (sampling.pad_id,):
        if not 0 <= t < cfg.vocab_size:
            raise ValueError(f"stop/pad token {t} outside the vocabulary [0, {cfg.vocab_size})")
    total = tokens.shape[1] + sampling.max_new_tokens
    if total > cfg.max_seq_len:
        raise ValueError(f"prompt length {tokens.shape[1]} + max_new_tokens {sampling.max_new_tokens} = {total} "
                         f"exceeds max_seq_len={cfg.max_seq_len}")
    return _generate(cfg, sampling, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32), key)
