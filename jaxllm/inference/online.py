"""DeepConf online mode with the real sampler (arXiv 2508.15260, Algorithm 2 as the reviews describe it).

    warm-up   traces 0..W-1 run to the end (no stop); s = the (1 - keep_fraction) quantile of their lowest-group
              confidences (`confidence_threshold`).
    adaptive  traces W, W+1, ... run through `slots` rows of `generate_traces` with the early stop at s, finished
              slots refilled; the host reads the traces in the order they finish, and after each one checks the
              weighted share β of the leading answer; it stops once β ≥ τ, or when the budget's traces are done.

Voting follows `online_deepconf` (the pool simulation): a trace votes if it has an answer, was not cut, and its
lowest-group confidence is ≥ s (the official post-hoc filter, warm-up included), weighted by `config.statistic`.
Because trace i always draws the same tokens (the sampler keys traces by id), every trace here equals the same
trace of a pool sampled without stops, cut where `online_stop` says. The token count differs from the
simulation's: traces still in flight when the vote settles were generated too, and they are counted.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.inference.deepconf import (
    DeepConfConfig,
    answer_key,
    confidence_threshold,
    extract_answer,
    trace_confidence,
)
from jaxllm.sampling.autoregressive import (
    LOW_CONFIDENCE,
    TraceSamplingConfig,
    continue_traces,
    generate_traces,
    start_traces,
)


class OnlineRun(NamedTuple):
    answer: object  # the winning answer key (`answer_key`), or None if nothing voted
    share: float  # β at the end
    threshold: float  # s
    tokens: int  # tokens generated, warm-up and in-flight traces included
    traces_started: int  # traces that drew at least one token
    traces_finished: int
    settled: bool  # True if β reached τ before the budget ran out
    traces: list  # per finished trace: dict(id, tokens, length, stopped, lowest, votes, answer)


def _records(state, ids: Sequence[int], config: DeepConfConfig, decode: Callable[[np.ndarray], str]) -> list[dict]:
    tokens, conf, lengths = np.asarray(state.tokens), np.asarray(state.confidence), np.asarray(state.lengths)
    reason, first = np.asarray(state.reason), int(state.first_trace)
    rows = np.asarray([i - first for i in ids], np.int64)
    if rows.size == 0:
        return []
    mask = np.arange(tokens.shape[1])[None, :] < lengths[rows, None]
    stats = trace_confidence(jnp.asarray(conf[rows]), jnp.asarray(mask), config.window, config.tail,
                             config.bottom_fraction, config.decimals)
    lowest, weight = np.asarray(stats.lowest), np.asarray(stats.get(config.statistic))
    out = []
    for j, r in enumerate(rows):
        n = int(lengths[r])
        ans = extract_answer(decode(tokens[r, :n]))
        out.append(dict(id=int(first + r), tokens=tokens[r, :n].copy(), length=n,
                        stopped=bool(reason[r] == LOW_CONFIDENCE), lowest=float(lowest[j]), weight=float(weight[j]),
                        answer=None if ans is None else answer_key(ans, config.equivalence)))
    return out


def deepconf_online(model, params, prompt, key: jax.Array, config: DeepConfConfig, sampling: TraceSamplingConfig,
                    budget: int, decode: Callable[[np.ndarray], str], check_every: int = 1) -> OnlineRun:
    """Run DeepConf online on one prompt [P] with at most `budget` traces (warm-up included).

    `sampling.window` must equal `config.window`; `sampling.max_traces` is ignored (set from the budget).
    `decode(tokens [L]) -> text` feeds the answer extraction. `check_every`: traces finished between two looks
    of the host at the vote (1 = after every trace, as the simulation).
    """
    if sampling.window != config.window:
        raise ValueError(f"sampling.window={sampling.window} differs from config.window={config.window}")
    if sampling.confidence_k != config.k:
        raise ValueError(f"sampling.confidence_k={sampling.confidence_k} differs from config.k={config.k}")
    if not config.warmup <= budget:
        raise ValueError(f"budget={budget} is smaller than the warm-up ({config.warmup} traces)")
    W = config.warmup
    warm_cfg = dataclasses.replace(sampling, slots=min(sampling.slots, W), max_traces=W)
    warm = generate_traces(model, params, prompt, key, warm_cfg, -np.inf, W)
    records = _records(warm, range(W), config, decode)
    s = float(confidence_threshold(jnp.asarray([r["lowest"] for r in records]), jnp.ones(W, bool),
                                   config.keep_fraction))
    totals: dict = {}

    def add(r) -> float:
        r["votes"] = r["answer"] is not None and not r["stopped"] and r["lowest"] >= s
        if r["votes"]:
            totals[r["answer"]] = totals.get(r["answer"], 0.0) + r["weight"]
        total = sum(totals.values())
        return max(totals.values()) / total if total > 0 else 0.0

    beta = 0.0
    for r in records:
        beta = add(r)
    tokens, started, finished = int(warm.generated), W, W
    settled = beta >= config.tau and bool(totals)
    if not settled and budget > W:
        adapt_cfg = dataclasses.replace(sampling, max_traces=budget - W)
        state = start_traces(model, params, prompt, key, adapt_cfg, budget - W, first_trace=W)
        seen = 0
        while not settled:
            state = continue_traces(model, params, state, adapt_cfg, s, until=seen + check_every)
            order = np.asarray(state.finish_order)
            n = int(state.finished)
            new = [int(state.first_trace) + int(r) for r in np.argsort(order) if seen <= order[r] < n]
            for r in _records(state, new, config, decode):
                records.append(r)
                beta = add(r)
                if beta >= config.tau and totals:
                    settled = True
                    break
            seen = n
            if not bool(jnp.any(state.trace >= 0)):
                break
        tokens += int(state.generated)
        started += int(jnp.sum(state.lengths > 0))  # a slot refilled after the last look drew nothing
        finished += int(state.finished)
    answer = None
    if totals:  # ties to the first-seen answer, as `weighted_vote`
        best = max(totals.values())
        answer = next(r["answer"] for r in records if r.get("votes") and totals[r["answer"]] == best)
    share = totals[answer] / sum(totals.values()) if answer is not None else 0.0
    return OnlineRun(answer, share, s, tokens, started, finished, settled, records)
