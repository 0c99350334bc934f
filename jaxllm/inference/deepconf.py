"""DeepConf (arXiv 2508.15260): confidence-filtered parallel thinking, as pure jittable array functions.

Notation (the paper's; `shared/research/deepconf_lsp.md` A1-A3 says where the public code differs):

    token confidence   C_i = -(1/k) Σ_{j≤k} log P_i(j)   over the top-k log-probs of the untempered next-token
                       distribution (k = 20); larger = more peaked. C_i ≥ log k (Jensen), = log V if uniform.
    group confidence   C_G = mean of C over a window of `window` consecutive tokens (stride 1); a trace shorter
                       than the window has one group, its mean (the code's `compute_least_grouped`).
    trace statistics   mean (all tokens), lowest (min group), bottom (mean of the lowest ⌊0.1·#groups⌋, at
                       least 1, groups), tail (mean of the last `tail` tokens).
    offline            keep the top η (`keep_fraction`) of traces by a statistic, vote weighted by it.
    online             the warm-up traces' lowest-group confidences set s = their (1-η) quantile; a trace stops
                       at the first full window whose mean is < s; sampling stops once the leading answer's
                       weighted share β reaches τ, or at the budget.

`keep_fraction` is the paper's η/100 under its own name: 0.1 is DeepConf-low (aggressive, the 90th percentile),
0.9 DeepConf-high. (The code's `confidence_percentile` means opposite things on its two branches.)

Arrays are [batch, time] with a prefix mask (`mask[b, t]` = token t is part of trace b; valid tokens come first).
Answers are host-side: `answer_ids` extracts `\\boxed{}` content with the rewards' extraction and groups it by
the rewards' equivalence (or by exact string, as the official code), giving integer ids the vote can count.
The sampler side (slots, `alive` mask, ring buffer, refilling) is `jaxllm.sampling.autoregressive.generate_traces`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check, check_choice
from jaxllm.rewards.extract import last_boxed_content
from jaxllm.rewards.math_answer import MAX_ANSWER_CHARS, parse_number, strip_string
from jaxllm.sampling.autoregressive import top_k_confidence

STATISTICS = ("mean", "lowest", "bottom", "tail")


@dataclasses.dataclass(frozen=True)
class DeepConfConfig:
    """Confidence and decision settings. Paper values: k=20, window=tail=2048, warmup=16, τ=0.95, η∈{0.1,0.9}.

    Options that reproduce the official code (facebookresearch/deepconf) rather than the paper:
    - `include_sampled=True`: C_i averages the top-k ∪ {sampled token} (vLLM's logprob dict, 21 entries when
      the sampled token is outside the top k) instead of the top-k alone.
    - `decimals=3`: token and group confidences rounded to 3 decimals, as `compute_confidence` does.
    - `tau > 1`: no consensus stop (the code launches the whole budget after warm-up).
    - `equivalence="exact"`: answers grouped by exact string (issue #15); default groups equivalent ones.
    """

    k: int = 20
    window: int = 2048
    tail: int = 2048
    bottom_fraction: float = 0.1
    warmup: int = 16
    tau: float = 0.95
    keep_fraction: float = 0.1
    statistic: str = "lowest"  # the online filter and vote weight (the code: min_conf)
    include_sampled: bool = False
    decimals: Optional[int] = None
    equivalence: str = "math"

    def __post_init__(self):
        for name in ("k", "window", "tail", "warmup"):
            check(getattr(self, name) >= 1, f"DeepConfConfig.{name} must be >= 1, got {getattr(self, name)}")
        check(0.0 < self.bottom_fraction <= 1.0, f"bottom_fraction must lie in (0, 1], got {self.bottom_fraction}")
        check(0.0 < self.keep_fraction <= 1.0, f"keep_fraction must lie in (0, 1], got {self.keep_fraction}")
        check(self.tau > 0.0, f"tau must be > 0 (values > 1 turn the consensus stop off), got {self.tau}")
        check_choice("DeepConfConfig.statistic", self.statistic, STATISTICS)
        check_choice("DeepConfConfig.equivalence", self.equivalence, ["math", "exact"])
        check(self.decimals is None or self.decimals >= 0, f"decimals must be >= 0 or None, got {self.decimals}")


def _round(x: jax.Array, decimals: Optional[int]) -> jax.Array:
    return x if decimals is None else jnp.round(x, decimals)


# ----------------------------------------------------------------------------------------------------------
# Token and trace confidence.


def token_confidence(logits: jax.Array, k: int = 20, sampled: Optional[jax.Array] = None,
                     decimals: Optional[int] = None) -> jax.Array:
    """C = -mean of the top-k log-probs of softmax(logits): logits [..., V] -> [...] float32.

    From `log_softmax` (shift-invariant and stable), untempered and unfiltered (A1: vLLM's raw logprobs).
    `sampled` [...] int ids: average over top-k ∪ {sampled} (the code's post-hoc variant).
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"token_confidence: k={k} must lie in [1, vocab={logits.shape[-1]}]")
    if sampled is None:
        return _round(top_k_confidence(logits, k), decimals)  # the one the sampler computes
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top_lp, top_id = jax.lax.top_k(logp, k)
    lp_s = jnp.take_along_axis(logp, sampled[..., None].astype(jnp.int32), axis=-1)[..., 0]
    outside = ~jnp.any(top_id == sampled[..., None], axis=-1)
    total = jnp.sum(top_lp, axis=-1) + jnp.where(outside, lp_s, 0.0)
    return _round(-total / (k + outside.astype(jnp.float32)), decimals)


def confidence_from_top_logprobs(top_logprobs: jax.Array, k: Optional[int] = None) -> jax.Array:
    """C from the sampler's `top_logprobs` [..., k'] (sorted, untempered): -mean of the first k (default all)."""
    k = top_logprobs.shape[-1] if k is None else k
    if not 1 <= k <= top_logprobs.shape[-1]:
        raise ValueError(f"k={k} must lie in [1, {top_logprobs.shape[-1]}] (the top log-probs given)")
    return -jnp.mean(top_logprobs[..., :k].astype(jnp.float32), axis=-1)


def window_means(conf_BT: jax.Array, window: int) -> jax.Array:
    """Means of every window of `window` consecutive entries: [B, T] -> [B, T - window + 1] (T ≥ window).

    Each window is summed on its own (reduce_window), so long traces carry no running-sum drift."""
    sums = jax.lax.reduce_window(conf_BT.astype(jnp.float32), 0.0, jax.lax.add, (1, window), (1, 1), "VALID")
    return sums / window


def group_confidence(conf_BT: jax.Array, mask_BT: jax.Array, window: int,
                     decimals: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """Sliding-window group confidences and their mask, both [B, max(T - window + 1, 1)].

    Group g covers tokens g..g+window-1 and is valid when they all lie in the trace. A trace shorter than the
    window (L < window) has exactly one group, at g = 0: the mean of its L tokens (`compute_least_grouped`).
    """
    B, T = conf_BT.shape
    mask = mask_BT.astype(bool)
    length = jnp.sum(mask, axis=1)
    x = jnp.where(mask, conf_BT.astype(jnp.float32), 0.0)
    mean = jnp.sum(x, axis=1) / jnp.maximum(length, 1)
    G = max(T - window + 1, 1)
    if T >= window:
        groups = window_means(x, window)
        valid = jnp.arange(G)[None, :] + window <= length[:, None]
    else:
        groups = jnp.zeros((B, G), jnp.float32)
        valid = jnp.zeros((B, G), bool)
    short = (length < window) & (length > 0)
    groups = groups.at[:, 0].set(jnp.where(short, mean, groups[:, 0]))
    valid = valid.at[:, 0].set(valid[:, 0] | short)
    return _round(groups, decimals), valid


class TraceConfidence(NamedTuple):
    """Trace-level statistics [B] float32 (NaN for an empty trace) and the trace lengths [B] int32."""

    mean: jax.Array
    lowest: jax.Array
    bottom: jax.Array
    tail: jax.Array
    length: jax.Array

    def get(self, statistic: str) -> jax.Array:
        check_choice("statistic", statistic, STATISTICS)
        return getattr(self, statistic)


def trace_confidence(conf_BT: jax.Array, mask_BT: jax.Array, window: int, tail: int,
                     bottom_fraction: float = 0.1, decimals: Optional[int] = None) -> TraceConfidence:
    """mean, lowest group, bottom-`bottom_fraction` groups and tail confidence of each trace.

    bottom: the mean of the max(1, ⌊bottom_fraction·#groups⌋) lowest groups (`calculate_bottom_window_confidence`);
    tail: the mean of the last min(L, tail) tokens (`calculate_tail_confidence`).
    """
    mask = mask_BT.astype(bool)
    length = jnp.sum(mask, axis=1).astype(jnp.int32)
    x = jnp.where(mask, conf_BT.astype(jnp.float32), 0.0)
    nan = jnp.float32(jnp.nan)
    empty = length == 0
    mean = jnp.where(empty, nan, jnp.sum(x, axis=1) / jnp.maximum(length, 1))
    groups, gvalid = group_confidence(conf_BT, mask, window, decimals)
    n_groups = jnp.sum(gvalid, axis=1)
    ordered = jnp.sort(jnp.where(gvalid, groups, jnp.inf), axis=1)
    lowest = jnp.where(empty, nan, ordered[:, 0])
    n_bottom = jnp.maximum(1, jnp.floor(bottom_fraction * n_groups).astype(jnp.int32))
    in_bottom = jnp.arange(ordered.shape[1])[None, :] < n_bottom[:, None]
    bottom = jnp.sum(jnp.where(in_bottom, ordered, 0.0), axis=1) / n_bottom
    bottom = jnp.where(empty, nan, bottom)
    t = jnp.arange(conf_BT.shape[1])[None, :]
    in_tail = mask & (t >= (length - tail)[:, None])
    tail_mean = jnp.sum(jnp.where(in_tail, x, 0.0), axis=1) / jnp.maximum(jnp.minimum(length, tail), 1)
    tail_mean = jnp.where(empty, nan, tail_mean)
    return TraceConfidence(mean, lowest, bottom, tail_mean, length)


# ----------------------------------------------------------------------------------------------------------
# Offline: filter and vote.


def masked_percentile(x_N: jax.Array, valid_N: jax.Array, q) -> jax.Array:
    """`np.percentile(x[valid], q)` (linear interpolation, numpy's lerp) over the last axis: [..., N] -> [...].

    NaN when no entry is valid."""
    valid = valid_N.astype(bool)
    n = jnp.sum(valid, axis=-1)
    ordered = jnp.sort(jnp.where(valid, x_N.astype(jnp.float32), jnp.inf), axis=-1)
    pos = jnp.asarray(q, jnp.float32) / 100.0 * jnp.maximum(n - 1, 0).astype(jnp.float32)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    a = jnp.take_along_axis(ordered, lo[..., None], axis=-1)[..., 0]
    b = jnp.take_along_axis(ordered, hi[..., None], axis=-1)[..., 0]
    frac = pos - lo
    # numpy's _lerp: a + (b-a)·t below t = 0.5, b - (b-a)·(1-t) above (exact at both ends, monotone).
    val = jnp.where(frac >= 0.5, b - (b - a) * (1.0 - frac), a + (b - a) * frac)
    return jnp.where(n > 0, val, jnp.nan)


def confidence_threshold(scores_N: jax.Array, valid_N: jax.Array, keep_fraction: float) -> jax.Array:
    """The score a trace needs to be among the top `keep_fraction`: the (1 - keep_fraction) quantile.

    Offline this is the code's `filter_top_confidence`; online, applied to the warm-up traces' lowest-group
    confidences, it is the stopping threshold s (keep 0.1 → 90th percentile = DeepConf-low)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    return masked_percentile(scores_N, valid_N, 100.0 * (1.0 - keep_fraction))


def keep_top(scores_N: jax.Array, valid_N: jax.Array, keep_fraction: float) -> jax.Array:
    """Bool [..., N]: valid traces whose score is ≥ the (1 - keep_fraction) quantile of the valid scores.

    For n distinct scores this keeps n - ⌈(1 - keep_fraction)(n - 1)⌉ (16 → 2 and 512 → 52 at 0.1)."""
    s = confidence_threshold(scores_N, valid_N, keep_fraction)
    return valid_N.astype(bool) & (scores_N >= s[..., None])


class Vote(NamedTuple):
    winner: jax.Array  # [...] int32 answer id with the largest total weight (-1 if nothing voted)
    share: jax.Array  # [...] float32 β = winner's weight / total weight (0 if nothing voted)
    totals: jax.Array  # [..., A] float32 weight per answer id


def _onehot(ids: jax.Array, num: int) -> jax.Array:
    """Bool [..., num]: ids[...] == a (explicit broadcasting, as strict rank promotion wants)."""
    return ids[..., None] == jnp.arange(num).reshape((1,) * ids.ndim + (num,))


def weighted_vote(answer_ids_N: jax.Array, weights_N: jax.Array, valid_N: jax.Array, num_answers: int) -> Vote:
    """Confidence-weighted majority vote V(a) = Σ_t w_t·1[answer_t = a] over valid traces ([..., N] inputs).

    Equal weights give plain majority. Ties go to the answer seen first in trace order (the code's dict
    insertion order); invalid traces (no answer, filtered out) never vote; ids must lie in [0, num_answers).
    """
    valid = valid_N.astype(bool)
    onehot = _onehot(answer_ids_N, num_answers) & valid[..., None]  # [..., N, A]
    totals = jnp.sum(jnp.where(onehot, weights_N[..., None].astype(jnp.float32), 0.0), axis=-2)
    N = answer_ids_N.shape[-1]
    trace_index = jnp.arange(N).reshape((1,) * (onehot.ndim - 2) + (N, 1))
    first_seen = jnp.min(jnp.where(onehot, trace_index, N), axis=-2)  # [..., A]
    present = first_seen < N
    best = jnp.max(jnp.where(present, totals, -jnp.inf), axis=-1, keepdims=True)
    tied = present & (totals == best)
    winner = jnp.argmin(jnp.where(tied, first_seen, N + 1), axis=-1).astype(jnp.int32)
    any_vote = jnp.any(present, axis=-1)
    total = jnp.sum(totals, axis=-1)
    share = jnp.take_along_axis(totals, winner[..., None], axis=-1)[..., 0] / jnp.where(total > 0, total, 1.0)
    return Vote(jnp.where(any_vote, winner, -1), jnp.where(any_vote, share, 0.0), totals)


def majority_vote(answer_ids_N, valid_N, num_answers: int) -> Vote:
    """Plain self-consistency: every valid trace weighs 1."""
    return weighted_vote(answer_ids_N, jnp.ones(answer_ids_N.shape, jnp.float32), valid_N, num_answers)


def filtered_vote(answer_ids_N, scores_N, valid_N, keep_fraction: float, num_answers: int) -> Vote:
    """DeepConf offline: keep the top `keep_fraction` by `scores`, then vote weighted by `scores`."""
    return weighted_vote(answer_ids_N, scores_N, keep_top(scores_N, valid_N, keep_fraction), num_answers)


# ----------------------------------------------------------------------------------------------------------
# Online: early stopping and the consensus stop, simulated on a pool of complete traces.


def online_stop(conf_BT: jax.Array, mask_BT: jax.Array, window: int, threshold,
                decimals: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
    """Where early stopping cuts each trace: (kept length [B] int32, stopped [B] bool).

    The stop comes at the first t ≥ window whose last-`window` mean is < threshold (the code's logits processor
    acts only once its deque is full), and the trace keeps its first t tokens. Traces shorter than the window
    are never cut. `threshold` is a scalar or [B].
    """
    mask = mask_BT.astype(bool)
    length = jnp.sum(mask, axis=1).astype(jnp.int32)
    B, T = conf_BT.shape
    if T < window:
        return length, jnp.zeros((B,), bool)
    groups = _round(window_means(jnp.where(mask, conf_BT, 0.0), window), decimals)  # group g ends at token g+w-1
    ends = jnp.arange(groups.shape[1])[None, :] + window  # tokens kept if the stop comes there
    low = (groups < jnp.broadcast_to(jnp.asarray(threshold, jnp.float32), (B,))[:, None]) & (ends <= length[:, None])
    stopped = jnp.any(low, axis=1)
    first = jnp.argmax(low, axis=1) + window
    return jnp.where(stopped, first, length).astype(jnp.int32), stopped


class OnlineResult(NamedTuple):
    winner: jax.Array  # [...] int32 voted answer id (-1 if nothing voted)
    share: jax.Array  # [...] float32 β at the end
    tokens: jax.Array  # [...] int32 generated tokens (warm-up traces whole, the others up to their stop)
    traces: jax.Array  # [...] int32 traces sampled (warm-up included), ≤ the budget
    threshold: jax.Array  # [...] float32 s
    votes: jax.Array  # [...] int32 traces that voted


def online_deepconf(conf_KT: jax.Array, mask_KT: jax.Array, answer_ids_K: jax.Array, answer_valid_K: jax.Array,
                    config: DeepConfConfig, num_answers: int) -> OnlineResult:
    """DeepConf online on K complete traces taken in order (the paper simulates online mode from its pool).

    1. Traces 0..warmup-1 are the warm-up: s = `confidence_threshold` of their lowest-group confidence.
    2. Every later trace is cut where `online_stop` says; a cut trace never votes.
    3. A trace votes, weighted by its `config.statistic`, if it has an answer and its lowest-group confidence
       (of the tokens it kept) is ≥ s: the official post-hoc filter, which also drops warm-up traces below s.
    4. After the warm-up and after each later trace, β = the leading answer's share; sampling stops at the first
       β ≥ τ (τ > 1: never, the official code) or when the K traces are used up.
    Works on one problem ([K, T] inputs); vmap it over repetitions or problems.
    """
    c = config
    K = conf_KT.shape[0]
    if not 1 <= c.warmup <= K:
        raise ValueError(f"online_deepconf: warmup={c.warmup} must lie in [1, K={K}]")
    stats = trace_confidence(conf_KT, mask_KT, c.window, c.tail, c.bottom_fraction, c.decimals)
    idx = jnp.arange(K)
    is_warm = idx < c.warmup
    s = confidence_threshold(stats.lowest, is_warm & (stats.length > 0), c.keep_fraction)
    cut_len, stopped = online_stop(conf_KT, mask_KT, c.window, s, c.decimals)
    stopped = stopped & ~is_warm
    length = jnp.where(is_warm, stats.length, cut_len)
    votes = answer_valid_K.astype(bool) & ~stopped & (stats.lowest >= s)
    weights = jnp.where(votes, stats.get(c.statistic), 0.0)
    onehot = _onehot(answer_ids_K, num_answers) & votes[:, None]  # [K, A]
    running = jnp.cumsum(jnp.where(onehot, weights[:, None], 0.0), axis=0)  # totals after trace j
    total = jnp.sum(running, axis=1)
    beta = jnp.max(running, axis=1) / jnp.where(total > 0, total, 1.0)
    settled = (beta >= c.tau) & (total > 0) & (idx >= c.warmup - 1)
    used = jnp.where(jnp.any(settled), jnp.argmax(settled) + 1, K)
    taken = idx < used
    vote = weighted_vote(answer_ids_K, weights, votes & taken, num_answers)
    return OnlineResult(vote.winner, vote.share, jnp.sum(jnp.where(taken, length, 0)).astype(jnp.int32),
                        used.astype(jnp.int32), s, jnp.sum(votes & taken).astype(jnp.int32))


# ----------------------------------------------------------------------------------------------------------
# Masked-diffusion traces (an extension: the paper evaluates autoregressive models only).


def diffusion_step_confidence(unmask_step_BG: jax.Array, confidence_BG: jax.Array, steps: int):
    """Per denoising step, the mean confidence of the tokens it unmasked: ([B, steps] float32, [B, steps] mask).

    `unmask_step` / `confidence` are `jaxllm.sampling.diffusion.generate`'s outputs (step -1 = fixed position,
    ignored); the confidence there is the probability of the chosen token when it was set. The step sequence
    plays the part of the token sequence, so `trace_confidence` and `online_stop` apply unchanged. A step that
    unmasked nothing is masked out (and the step sequence is compacted so the mask stays a prefix).
    """
    hit = unmask_step_BG[:, :, None] == jnp.arange(steps)[None, None, :]  # [B, G, S]
    count = jnp.sum(hit, axis=1)
    total = jnp.sum(jnp.where(hit, confidence_BG[:, :, None].astype(jnp.float32), 0.0), axis=1)
    has = count > 0
    conf = total / jnp.maximum(count, 1)
    order = jnp.argsort(~has, axis=1, stable=True)  # steps that set something first, in step order
    return jnp.take_along_axis(conf, order, axis=1), jnp.take_along_axis(has, order, axis=1)


def diffusion_block_stop(unmask_step_BG: jax.Array, confidence_BG: jax.Array, steps: int, steps_per_block: int,
                         threshold) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Early stop for the semi-autoregressive diffusion sampler: stop a trace after the first block whose mean
    confidence (over the tokens unmasked in that block's steps) falls below `threshold`.

    Returns (block confidence [B, num_blocks], denoising steps spent [B] int32, stopped [B] bool). A stopped trace
    would skip the forwards of every later block (`steps_per_block` per block); its blocks so far stay as they
    are, like a cut autoregressive trace, and it does not vote.
    """
    if steps % steps_per_block:
        raise ValueError(f"steps={steps} is not a multiple of steps_per_block={steps_per_block}")
    nb = steps // steps_per_block
    block = jnp.where(unmask_step_BG >= 0, unmask_step_BG // steps_per_block, -1)
    hit = block[:, :, None] == jnp.arange(nb)[None, None, :]
    count = jnp.sum(hit, axis=1)
    conf = jnp.sum(jnp.where(hit, confidence_BG[:, :, None].astype(jnp.float32), 0.0), axis=1) / jnp.maximum(count, 1)
    low = (conf < jnp.asarray(threshold, jnp.float32)) & (count > 0)
    stopped = jnp.any(low, axis=1)
    spent = jnp.where(stopped, (jnp.argmax(low, axis=1) + 1) * steps_per_block, steps).astype(jnp.int32)
    return conf, spent, stopped


# ----------------------------------------------------------------------------------------------------------
# Answers (host side).


def extract_answer(text) -> Optional[str]:
    """Content of the last `\\boxed{}` (the rewards' bounded extraction); None if absent or empty."""
    ans = last_boxed_content(text) if isinstance(text, str) else None
    if ans is None or not ans.strip() or len(ans) > MAX_ANSWER_CHARS:
        return None
    return ans.strip()


def answer_key(answer: str, equivalence: str = "math"):
    """Hashable voting key: the MATH normalisation (`strip_string`) and, for numbers, their exact value, so
    `0.5`, `1/2` and `\\frac{1}{2}` vote together ("math", the rewards' `is_equiv`); the string itself
    ("exact", the official code)."""
    if equivalence == "exact":
        return ("str", answer)
    norm = strip_string(answer)
    value = parse_number(norm)
    return ("num", value) if value is not None else ("str", norm)


def answer_ids(texts: Sequence[str], equivalence: str = "math", reference: Optional[str] = None,
               extract: Callable[[str], Optional[str]] = extract_answer):
    """Answer ids for a list of completions: (ids [N] int32, valid [N] bool, keys list, reference id).

    Ids number the distinct answer keys in order of first appearance (so id order = first-seen order);
    completions without an answer get id 0 and valid False. `reference` (e.g. the ground truth) is keyed the
    same way; when no completion gave it, its id is len(keys), an id no completion has and no vote can win (a
    vote's winner is a completion's id, or -1 when nothing voted), so "nobody found it" always scores wrong.
    `extract(text) -> answer or None` reads the answer out of a completion: `\\boxed{}` content by default, a
    task's own parser otherwise (e.g. the Sudoku `<answer>` digits, with equivalence="exact").
    """
    check_choice("equivalence", equivalence, ["math", "exact"])
    table: dict = {}
    ids = np.zeros(len(texts), np.int32)
    valid = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        ans = extract(text)
        if not ans:
            continue
        ids[i] = table.setdefault(answer_key(ans, equivalence), len(table))
        valid[i] = True
    ref = -1
    if reference is not None:
        ref = table.get(answer_key(reference, equivalence), len(table))
    return ids, valid, list(table), ref
