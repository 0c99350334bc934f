"""Autoregressive sampling with a KV cache: one jitted prefill + a `lax.while_loop` decode (static shapes).

    out = generate(Model(cfg), params, [[1, 5, 9], [1, 7]], jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=32, temperature=0.7, top_p=0.95, stop_tokens=(2,)))
    out.tokens [B, max_new] (pad_id after a stop), out.logprobs [B, max_new], out.lengths [B]

The model is a `jaxllm.models.Model` (it needs `model.cfg` and `model.forward` with a KV cache; its linear,
e.g. R-Sparse's, is used for prefill and decode alike), a static argument of the jitted loop.
Prompts of different lengths are left-padded to one length P; each row's RoPE positions start at 0 at its
first real token and a key mask hides the padding (`models.left_padding_layout`), so a row's result does not
depend on its batch mates.
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
from jaxllm.models.model import Model, left_padding_layout


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


@partial(jax.jit, static_argnames=("model", "s"))
def _generate(model: Model, s: SamplingConfig, params, tokens_BP, lengths_B, key):
    B, P = tokens_BP.shape
    N = s.max_new_tokens
    S = P + N
    key_mask_BS, positions_BS = left_padding_layout(lengths_B, P, S)
    cache = tfm.init_cache(model.cfg, B, S)
    out = model.forward(params, tokens_BP, positions=positions_BS[:, :P], attention_mask=key_mask_BS, cache=cache,
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
        o = model.forward(params, prev[:, None], positions=pos, attention_mask=key_mask_BS, cache=cache,
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


def generate(model: Model, params, prompts, key: jax.Array, sampling: SamplingConfig = SamplingConfig(),
             lengths=None, pad_to: Optional[int] = None) -> SampleOutput:
    """Sample continuations of `prompts` (a list of token-id lists, or left-padded [B, P] ids with `lengths`).

    model: a `jaxllm.models.Model` (`Model(cfg)` for the dense Transformer).
    Validated before tracing: ids within the vocabulary, non-empty prompts, and P + max_new_tokens within
    cfg.max_seq_len. `pad_to` rounds P up to a fixed size so that different batches reuse one compilation.
    """
    if not isinstance(model, Model):
        raise TypeError(f"autoregressive.generate needs a jaxllm.models.Model (e.g. Model(cfg)), got "
                        f"{type(model).__name__}")
    cfg = model.cfg
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
    return _generate(model, sampling, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32), key)


# ----------------------------------------------------------------------------------------------------------
# Many traces of one prompt with confidence early stopping and slot refilling (DeepConf online mode,
# arXiv 2508.15260; `jaxllm.inference.deepconf` has the statistics and the decision rules).

STOP_TOKEN, MAX_LENGTH, LOW_CONFIDENCE = 1, 2, 3  # TraceState.reason of a finished trace (0 = not finished)


@dataclasses.dataclass(frozen=True)
class TraceSamplingConfig:
    """Sampling of up to `max_traces` traces of ONE prompt through `slots` rows decoded together.

    A trace ends at a stop token, at `sampling.max_new_tokens`, or, once `window` tokens are out, at the first
    token after which the mean token confidence of the last `window` tokens is below the run-time threshold
    (DeepConf's early stop; the code's logits processor also waits for a full window). With `refill`, a slot
    whose trace ended starts the next trace in the same iteration, so the batch stays busy.
    Trace i draws token t with the key fold_in(fold_in(key, i), t): its tokens depend neither on its slot, nor
    on when it started, nor on the other traces.
    """

    sampling: SamplingConfig = SamplingConfig()
    slots: int = 64
    max_traces: int = 64
    confidence_k: int = 20  # top-k of the untempered distribution in C_i
    window: int = 2048
    refill: bool = True

    def __post_init__(self):
        for name in ("slots", "max_traces", "confidence_k", "window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TraceSamplingConfig.{name} must be >= 1, got {getattr(self, name)}")


class TraceState(NamedTuple):
    """Carry of the trace sampler; the host may read it between calls of `continue_traces` (M = max_traces,
    N = max_new_tokens, buffer row r holds trace first_trace + r)."""

    cache: dict  # KV cache, [slots, P + N, kv_heads, head_dim] per layer (slots [0, P) hold the prompt)
    prompt_logits: jax.Array  # [V] float32 next-token logits after the prompt
    logits: jax.Array  # [slots, V] float32 next-token logits of each slot's trace
    trace: jax.Array  # [slots] int32 trace id in the slot, -1 = idle
    step: jax.Array  # [slots] int32 tokens the slot's trace has generated
    ring: jax.Array  # [slots, window] float32 the last `window` token confidences (ring buffer)
    next_trace: jax.Array  # () int32 next trace id to start
    end_trace: jax.Array  # () int32 no trace id at or beyond this one is started
    finished: jax.Array  # () int32 traces finished so far
    iterations: jax.Array  # () int32 decode iterations (each costs one row-step per slot, busy or not)
    generated: jax.Array  # () int32 tokens generated, finished and in-flight traces
    tokens: jax.Array  # [M, N] int32, pad_id past a trace's end
    confidence: jax.Array  # [M, N] float32 token confidence C_i, 0 past the end
    logprobs: jax.Array  # [M, N] float32 log p(sampled token) under the untempered model, 0 past the end
    lengths: jax.Array  # [M] int32 tokens generated (so far, for a running trace)
    reason: jax.Array  # [M] int32 0 (running or not started), STOP_TOKEN, MAX_LENGTH or LOW_CONFIDENCE
    finish_order: jax.Array  # [M] int32 rank among finished traces, -1 if not finished
    first_trace: jax.Array  # () int32 id of buffer row 0
    key: jax.Array


def top_k_confidence(logits: jax.Array, k: int) -> jax.Array:
    """DeepConf token confidence C = -mean of the top-k log-probs of softmax(logits): [..., V] -> [...] float32
    (from log_softmax: shift-invariant and stable). `jaxllm.inference.deepconf.token_confidence` adds options."""
    return -jnp.mean(jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), k)[0], axis=-1)


def _row_keys(key: jax.Array, trace_B: jax.Array, step_B: jax.Array) -> jax.Array:
    return jax.vmap(lambda i, t: jax.random.fold_in(jax.random.fold_in(key, i), t))(trace_B, step_B)


def _choose_rows(logits_BV: jax.Array, keys_B: jax.Array, s: SamplingConfig) -> jax.Array:
    """`_choose` with one key per row."""
    if s.temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    x = filter_logits(logits_BV, s.temperature, s.top_k, s.top_p)
    return jax.vmap(jax.random.categorical)(keys_B, x).astype(jnp.int32)


def _decode_rows(model, params, tok_B: jax.Array, cache: dict, index_B: jax.Array):
    """One decode step in which row b writes its key/value at cache slot index_B[b] (rows at different depths;
    positions = slots, the prompt being unpadded). Returns (logits [B, V], cache)."""

    def row(tok, row_cache, index):
        c = jax.tree.map(lambda x: x[None], row_cache)
        o = model.forward(params, tok[None, None], cache=c, cache_index=index)
        return o.logits[0, 0], jax.tree.map(lambda x: x[0], o.cache)

    return jax.vmap(row)(tok_B, cache, index_B)


@partial(jax.jit, static_argnames=("model", "config"))
def _init_traces(model, config: TraceSamplingConfig, params, prompt_P, key, first_trace, num_traces) -> TraceState:
    B, M, N, V = config.slots, config.max_traces, config.sampling.max_new_tokens, model.cfg.vocab_size
    P = prompt_P.shape[0]
    out = model.forward(params, prompt_P[None], cache=tfm.init_cache(model.cfg, 1, P + N), cache_index=0)
    cache = jax.tree.map(lambda x: jnp.broadcast_to(x, (B,) + x.shape[1:]), out.cache)
    prompt_logits = out.logits[0, -1]
    end = first_trace + num_traces
    trace = first_trace + jnp.arange(B, dtype=jnp.int32)
    trace = jnp.where(trace < end, trace, -1)
    return TraceState(
        cache=cache, prompt_logits=prompt_logits, logits=jnp.broadcast_to(prompt_logits, (B, V)),
        trace=trace, step=jnp.zeros((B,), jnp.int32), ring=jnp.zeros((B, config.window), jnp.float32),
        next_trace=jnp.minimum(first_trace + B, end).astype(jnp.int32), end_trace=end.astype(jnp.int32),
        finished=jnp.int32(0), iterations=jnp.int32(0), generated=jnp.int32(0),
        tokens=jnp.full((M, N), config.sampling.pad_id, jnp.int32), confidence=jnp.zeros((M, N), jnp.float32),
        logprobs=jnp.zeros((M, N), jnp.float32),
        lengths=jnp.zeros((M,), jnp.int32), reason=jnp.zeros((M,), jnp.int32),
        finish_order=jnp.full((M,), -1, jnp.int32), first_trace=jnp.asarray(first_trace, jnp.int32), key=key)


def _trace_step(model, config: TraceSamplingConfig, params, st: TraceState, threshold) -> TraceState:
    s, w, N, M = config.sampling, config.window, config.sampling.max_new_tokens, config.max_traces
    B = config.slots
    P = next(iter(st.cache.values()))["k"].shape[1] - N
    active = st.trace >= 0
    tok = _choose_rows(st.logits, _row_keys(st.key, st.trace, st.step), s)
    conf = top_k_confidence(st.logits, config.confidence_k)
    logp = jnp.take_along_axis(jax.nn.log_softmax(st.logits, axis=-1), tok[:, None], axis=-1)[:, 0]
    row = jnp.where(active, st.trace - st.first_trace, M)  # idle slots write out of bounds: dropped
    tokens = st.tokens.at[row, st.step].set(tok, mode="drop")
    confidence = st.confidence.at[row, st.step].set(conf, mode="drop")
    logprobs = st.logprobs.at[row, st.step].set(logp, mode="drop")
    ring = st.ring.at[jnp.arange(B), st.step % w].set(jnp.where(active, conf, 0.0))
    step = st.step + active.astype(jnp.int32)
    window_mean = jnp.sum(ring, axis=1) / w
    hit_stop = active & jnp.isin(tok, jnp.asarray(s.stop_tokens or (-1,), jnp.int32))
    low = active & ~hit_stop & (step >= w) & (window_mean < threshold)
    done = active & (hit_stop | low | (step >= N))
    reason = jnp.where(hit_stop, STOP_TOKEN, jnp.where(low, LOW_CONFIDENCE, MAX_LENGTH))
    done_row = jnp.where(done, row, M)
    order = st.finished + jnp.cumsum(done) - 1
    lengths = st.lengths.at[row].set(step, mode="drop")
    st_reason = st.reason.at[done_row].set(reason, mode="drop")
    finish_order = st.finish_order.at[done_row].set(order, mode="drop")
    n_done = jnp.sum(done).astype(jnp.int32)
    if config.refill:
        new_id = st.next_trace + jnp.cumsum(done) - 1
        take = done & (new_id < st.end_trace)
        trace = jnp.where(take, new_id, jnp.where(done, -1, st.trace))
        next_trace = st.next_trace + jnp.sum(take).astype(jnp.int32)
    else:
        trace, next_trace = jnp.where(done, -1, st.trace), st.next_trace
    step = jnp.where(done, 0, step)
    ring = jnp.where(done[:, None], 0.0, ring)
    going = active & ~done
    # Every slot runs the forward; rows that just finished (or idle) discard it (the padding waste).
    fwd_logits, cache = _decode_rows(model, params, tok, st.cache, jnp.where(going, P + step - 1, P))
    logits = jnp.where(going[:, None], fwd_logits, st.prompt_logits[None])
    return st._replace(
        cache=cache, logits=logits, trace=trace, step=step, ring=ring, next_trace=next_trace,
        finished=st.finished + n_done, iterations=st.iterations + 1,
        generated=st.generated + jnp.sum(active).astype(jnp.int32), tokens=tokens, confidence=confidence,
        logprobs=logprobs,
        lengths=lengths, reason=st_reason, finish_order=finish_order)


@partial(jax.jit, static_argnames=("model", "config"), donate_argnums=(3,))
def _continue_traces(model, config: TraceSamplingConfig, params, state: TraceState, threshold, until):
    def cond(st):
        return jnp.any(st.trace >= 0) & (st.finished < until)

    return jax.lax.while_loop(cond, lambda st: _trace_step(model, config, params, st, threshold), state)


def _check_trace_call(model: Model, prompt, config: TraceSamplingConfig, num_traces: int) -> np.ndarray:
    if not isinstance(model, Model):
        raise TypeError(f"generate_traces needs a jaxllm.models.Model (e.g. Model(cfg)), got {type(model).__name__}")
    cfg = model.cfg
    if not cfg.causal:
        raise ConfigError("autoregressive sampling needs a causal model (cfg.causal=True)")
    prompt = np.asarray(prompt)
    if prompt.ndim != 1 or prompt.size == 0:
        raise ValueError(f"generate_traces takes one non-empty prompt [P], got shape {prompt.shape}")
    if prompt.min() < 0 or prompt.max() >= cfg.vocab_size:
        raise ValueError(f"prompt token ids in [{prompt.min()}, {prompt.max()}] outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    for t in config.sampling.stop_tokens + (config.sampling.pad_id,):
        if not 0 <= t < cfg.vocab_size:
            raise ValueError(f"stop/pad token {t} outside the vocabulary [0, {cfg.vocab_size})")
    if config.confidence_k > cfg.vocab_size:
        raise ValueError(f"confidence_k={config.confidence_k} exceeds the vocabulary ({cfg.vocab_size})")
    total = prompt.size + config.sampling.max_new_tokens
    if total > cfg.max_seq_len:
        raise ValueError(f"prompt length {prompt.size} + max_new_tokens {config.sampling.max_new_tokens} = {total} "
                         f"exceeds max_seq_len={cfg.max_seq_len}")
    if not 1 <= num_traces <= config.max_traces:
        raise ValueError(f"num_traces={num_traces} must lie in [1, max_traces={config.max_traces}]")
    return prompt.astype(np.int32)


def start_traces(model: Model, params, prompt, key: jax.Array, config: TraceSamplingConfig,
                 num_traces: Optional[int] = None, first_trace: int = 0) -> TraceState:
    """Prefill `prompt` [P] once and put traces first_trace, first_trace+1, ... into the slots (nothing decoded
    yet). `num_traces` (default max_traces) traces are started in all, over time when slots are refilled."""
    num_traces = config.max_traces if num_traces is None else int(num_traces)
    prompt = _check_trace_call(model, prompt, config, num_traces)
    return _init_traces(model, config, params, jnp.asarray(prompt), key, jnp.int32(first_trace),
                        jnp.int32(num_traces))


def continue_traces(model: Model, params, state: TraceState, config: TraceSamplingConfig, threshold=-np.inf,
                    until: Optional[int] = None) -> TraceState:
    """Decode inside one jitted loop until `until` traces have finished in all (default: every trace started
    has finished) or no slot is busy. `threshold` is the confidence stop s (−inf: none). `state` is donated."""
    until = np.iinfo(np.int32).max if until is None else int(until)
    return _continue_traces(model, config, params, state, jnp.float32(threshold), jnp.int32(until))


def generate_traces(model: Model, params, prompt, key: jax.Array, config: TraceSamplingConfig, threshold=-np.inf,
                    num_traces: Optional[int] = None, first_trace: int = 0) -> TraceState:
    """Sample `num_traces` (default max_traces) complete traces of `prompt` [P] with confidence early stopping.

        st = generate_traces(Model(cfg), params, prompt, key, TraceSamplingConfig(SamplingConfig(64, 1.0,
                             stop_tokens=(eos,)), slots=64, max_traces=512, window=8), threshold=s)
        st.tokens [512, 64], st.confidence [512, 64], st.lengths [512], st.reason [512]
    """
    state = start_traces(model, params, prompt, key, config, num_traces, first_trace)
    return continue_traces(model, params, state, config, threshold)
