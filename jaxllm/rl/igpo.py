"""IGPO: inpainting-guided policy optimisation for masked diffusion LMs (arXiv 2509.10396; dllm_rl.md §6).

A group RL batch whose group is all wrong has zero advantages and teaches nothing. IGPO re-samples such a group
with chunks of the ground-truth reasoning fixed in place (inpainting, native to a diffusion LM: the sampler's
`fixed_tokens` / `fixed`), verifies the inpainted samples with the task's reward, swaps up to ⌊λG⌋ correct ones
into the group, and trains on the final group, where among the hint tokens only the top τ by policy entropy
carry gradient. Here that is one `regroup_fn` of the one RL loop (`RolloutSource(regroup_fn=IGPORegrouper(...))`),
called after scoring and before the advantages; the loss reads the per-token `token_weight` it puts in the
batch (`loss=igpo | igpo_gspo | igpo_spg_mix` in `jaxllm.rl.losses`).

Per rollout batch (rows of group g contiguous, G = group size):

    all_wrong[g]   = no reward of group g reaches `correct_at`                 (the paper: all rewards 0)
    for each all-wrong group with a ground-truth trace y* (`HintTrace`):
        η_1..η_G   ~ U[η_low, η_high], sorted                                   (one hint ratio per sample)
        z_j        = hint layout of y* for η_j (`hint_layout`)                  (chunks, spacing, free tail)
        õ_j        = sampler(prompt, fixed = z_j)                               (hint tokens never change)
        K          = min(#{j : r(õ_j) ≥ correct_at}, ⌊λG⌋)
        the first K rows of the group ← the first K correct õ_j                 (the code's order)
    token_weight   = 1 on self-generated tokens; on the hint tokens of a replaced row, 1 for the top ⌈τ·n⌉ of
                     its n hint positions by the entropy of π_old at that position (completion fully masked,
                     prompt clean: the one-step estimator's view), 0 for the rest  (`entropy_filter`)

The loop then takes A = r − mean_group(r) on the final group: for binary rewards, 1 − ρ on the K replaced rows
and −ρ on the others, ρ = K/G (Theorem 1: the expected gradient is ρ(1 − ρ)(g_correct − g_wrong)).

Paper vs public code (facebookresearch/igpo), and which one is the default here:
- Answer tokens: the paper excludes the final answer from the hints (default: chunks cover only
  `trace[:answer_start]`); the code chunks the whole trace and always reveals the last chunk, which can hold the
  answer (`reveal_answer=True`).
- Layout: the code's `create_spacing_scaled_inpainting_sequence` (both modes): sequential chunks of
  U{chunk_min..chunk_max} tokens (a tail shorter than chunk_min dropped); int(n·(1 − η)) chunks masked, the rest
  revealed; revealed chunks placed with the gaps between them stretched by scale = clip((gen − free_tail) /
  |y*|, 1, max_scale), each gap at most max_spacing, nothing in the last free_tail positions.
- Ratio in the loss: the paper's per-token GRPO ratio (`loss=igpo`) or the code's GSPO sequence ratio
  (`loss=igpo_gspo`); see `jaxllm.rl.losses.igpo_loss`.
- Entropy filter: ⌈τ·n⌉ kept hint positions here (the code: max(1, int(τ·n))).
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import diffusion
from jaxllm.config import check
from jaxllm.models.model import left_padding_layout
from jaxllm.rl.loop import RewardFn, completion_mask, safe_rewards
from jaxllm.sampling.diffusion import DiffusionSamplerConfig, generate
from jaxllm.train.source import host_rng

# inpaint_fn(params, prompts [b, P], key, prompt_lengths [b] | None, fixed_tokens [b, G], fixed [b, G]) -> [b, P+G]
InpaintFn = Callable[[Any, jax.Array, jax.Array, Optional[jax.Array], jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class IGPOConfig:
    """IGPO's rollout settings (defaults: the paper's τ and η range, the public code's chunking and λ = 4/8).

    enabled: False runs the same loop without inpainting (the "GRPO" baseline; token_weight stays 1).
    max_replace_frac: λ; at most ⌊λG⌋ rows of a group are replaced.
    eta_low / eta_high: the per-sample hint ratio η ~ U[eta_low, eta_high] (0 / 0: re-sampling without hints,
      the code's "resample-size-matched GRPO" baseline).
    chunk_min / chunk_max: chunk sizes U{chunk_min..chunk_max} tokens (code: 5..10 of a 256-token generation).
    free_tail: the last positions never hold a hint (code: 30 of 256). max_spacing / max_scale: the layout's
      gap cap (100) and stretch cap (1.5); max_scale = 1 places the revealed chunks at their own positions.
    reveal_answer: False (paper): hints from the reasoning only; True (code): chunks over the whole trace, the
      last chunk always revealed.
    entropy_tau: τ, the share of each row's hint positions kept in the loss, by entropy (1: no filter).
    correct_at: a sample is correct when its reward ≥ correct_at (the reference's correctness reward 3.0 of 3.0).
    """

    enabled: bool = True
    max_replace_frac: float = 0.5
    eta_low: float = 0.2
    eta_high: float = 0.6
    chunk_min: int = 5
    chunk_max: int = 10
    free_tail: int = 30
    max_spacing: int = 100
    max_scale: float = 1.5
    reveal_answer: bool = False
    entropy_tau: float = 0.2
    correct_at: float = 1.0

    def __post_init__(self):
        check(0.0 <= self.max_replace_frac <= 1.0, f"igpo.max_replace_frac must lie in [0, 1], got {self.max_replace_frac}")
        check(0.0 <= self.eta_low <= self.eta_high <= 1.0,
              f"igpo needs 0 ≤ eta_low ≤ eta_high ≤ 1, got {self.eta_low}, {self.eta_high}")
        check(1 <= self.chunk_min <= self.chunk_max, f"igpo needs 1 ≤ chunk_min ≤ chunk_max, got {self.chunk_min}, "
              f"{self.chunk_max}")
        check(self.free_tail >= 0 and self.max_spacing >= 0, "igpo.free_tail and igpo.max_spacing must be ≥ 0")
        check(self.max_scale >= 1.0, f"igpo.max_scale must be ≥ 1, got {self.max_scale}")
        check(0.0 < self.entropy_tau <= 1.0, f"igpo.entropy_tau must lie in (0, 1], got {self.entropy_tau}")


class HintTrace(NamedTuple):
    """A ground-truth completion as token ids; tokens[answer_start:] is the final-answer span."""

    tokens: np.ndarray
    answer_start: int


class HintLayout(NamedTuple):
    fixed_tokens: np.ndarray  # [gen_length] int32 (0 where not fixed)
    fixed: np.ndarray  # [gen_length] bool
    source: np.ndarray  # [gen_length] int32: the trace index of each fixed token, −1 elsewhere


def hint_layout(trace: HintTrace, gen_length: int, eta: float, rng: np.random.Generator, cfg: IGPOConfig) -> HintLayout:
    """The hint tokens of one inpainted sample (the code's spacing-scaled layout; see the module doc)."""
    tokens = np.asarray(trace.tokens)
    L = len(tokens)
    check(0 <= trace.answer_start <= L, f"HintTrace.answer_start={trace.answer_start} outside [0, {L}]")
    span = L if cfg.reveal_answer else trace.answer_start
    fixed_tokens = np.zeros(gen_length, np.int32)
    fixed = np.zeros(gen_length, bool)
    source = np.full(gen_length, -1, np.int32)
    chunks, pos = [], 0
    while pos < span:
        end = min(pos + int(rng.integers(cfg.chunk_min, cfg.chunk_max + 1)), span)
        if end - pos < cfg.chunk_min:
            break  # the code drops a tail shorter than chunk_min
        chunks.append((pos, end))
        pos = end
    n = len(chunks)
    if n == 0 or L == 0:
        return HintLayout(fixed_tokens, fixed, source)
    masked = set(rng.choice(n, int(n * (1.0 - eta)), replace=False).tolist())
    revealed = [c for k, c in enumerate(chunks) if k not in masked]
    if cfg.reveal_answer and eta > 0 and chunks[-1] not in revealed:
        revealed.append(chunks[-1])  # the code's inpaint_last_chunk_end=True
    effective = gen_length - cfg.free_tail
    scale = min(max(effective / L, 1.0), cfg.max_scale)
    prev_orig = prev_new = None
    for s, e in revealed:
        start = int(s * scale) if prev_orig is None else prev_new + min(int((s - prev_orig) * scale), cfg.max_spacing)
        for j in range(e - s):
            p = start + j
            if p >= effective:
                break
            fixed[p], fixed_tokens[p], source[p] = True, tokens[s + j], s + j
        prev_orig, prev_new = e, start + (e - s)
    return HintLayout(fixed_tokens, fixed, source)


def max_replacements(group_size: int, cfg: IGPOConfig) -> int:
    """⌊λG⌋."""
    return int(math.floor(cfg.max_replace_frac * group_size + 1e-9))


def replacement_pairs(inpaint_rewards_G: np.ndarray, max_replace: int, correct_at: float) -> list[tuple[int, int]]:
    """(slot, inpainted sample) pairs for an all-wrong group: the first K = min(#correct, max_replace) correct
    inpainted samples go into slots 0..K−1 (the code's order; every original row is wrong)."""
    correct = [j for j, r in enumerate(np.asarray(inpaint_rewards_G)) if r >= correct_at]
    return [(slot, j) for slot, j in enumerate(correct[:max_replace])]


def entropy_filter(entropy_BG: np.ndarray, hint_BG: np.ndarray, tau: float) -> np.ndarray:
    """[B, G] bool: every non-hint position, and per row the ⌈τ·n⌉ hint positions of largest entropy (n the
    row's hint count; ties to the lower position)."""
    ent, hint = np.asarray(entropy_BG, np.float64), np.asarray(hint_BG, bool)
    n = hint.sum(axis=1)
    k = np.ceil(tau * n - 1e-9).astype(int)
    score = np.where(hint, ent, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")
    ranks = np.argsort(order, axis=1, kind="stable")
    return ~hint | (ranks < k[:, None])


@partial(jax.jit, static_argnums=(0, 1, 2))
def _entropy_jit(model, mask_id: int, gen_length: int, params, tokens, attention_mask, positions):
    P = tokens.shape[1] - gen_length
    noisy = tokens.at[:, P:].set(jnp.int32(mask_id))  # the one-step estimator's input: completion all masked
    logits = diffusion.model_logits(model, params, noisy, attention_mask, positions)[:, P:].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def policy_entropy(model, params, tokens_BL, gen_length: int, mask_id: int, prompt_lengths_B=None) -> np.ndarray:
    """[B, gen_length] float32: H(π(· | prompt, completion fully masked)) at every completion position."""
    tokens = jnp.asarray(tokens_BL, jnp.int32)
    mask = pos = None
    if prompt_lengths_B is not None:
        mask, pos = left_padding_layout(jnp.asarray(prompt_lengths_B, jnp.int32), tokens.shape[1] - gen_length,
                                        tokens.shape[1])
    return np.asarray(_entropy_jit(model, mask_id, gen_length, params, tokens, mask, pos))


def diffusion_inpainter(model, config: DiffusionSamplerConfig) -> InpaintFn:
    """The LLaDA sampler with the hint tokens fixed (`generate(..., fixed_tokens=, fixed=)`)."""

    def inpaint(params, prompts, key, prompt_lengths, fixed_tokens, fixed):
        return generate(model, params, prompts, key, config, prompt_lengths=prompt_lengths,
                        fixed_tokens=fixed_tokens, fixed=fixed).tokens

    return inpaint


class IGPORegrouper:
    """The `regroup_fn` of `RolloutSource` for IGPO (see the module doc).

    model / mask_id: for the entropy of π_old at the hint positions. inpaint_fn: `diffusion_inpainter`.
    reward_fn: the rollout's reward (prompt index, completion ids). hints(prompt index) -> HintTrace, or None
    for a prompt without a trace (its all-wrong group is counted in `igpo/no_trace_groups` and left alone).
    prompt_lengths: [N] of the PromptSet when it is left-padded with an attention mask (None otherwise).
    The number of inpainted groups is padded to a power of two (repeating one), so the sampler compiles for
    at most log2(groups) + 1 shapes; the padding rows are discarded.
    """

    def __init__(self, cfg: IGPOConfig, *, model, mask_id: int, gen_length: int, group_size: int,
                 inpaint_fn: InpaintFn, reward_fn: RewardFn, hints: Callable[[int], Optional[HintTrace]],
                 eos_id: Optional[int] = None, prompt_lengths: Optional[np.ndarray] = None):
        check(gen_length > cfg.free_tail, f"igpo.free_tail={cfg.free_tail} leaves no room in gen_length={gen_length}")
        self.cfg, self.model, self.mask_id, self.gen_length, self.G = cfg, model, mask_id, gen_length, group_size
        self.inpaint_fn, self.reward_fn, self.hints, self.eos_id = inpaint_fn, reward_fn, hints, eos_id
        self.prompt_lengths = None if prompt_lengths is None else np.asarray(prompt_lengths)

    def __call__(self, state, tokens: np.ndarray, rewards: np.ndarray, rows: np.ndarray, key: jax.Array):
        cfg, G, gl = self.cfg, self.G, self.gen_length
        tokens, rewards = np.array(tokens, np.int32), np.array(rewards, np.float32)
        B, L = tokens.shape
        P = L - gl
        n = B // G
        all_wrong = ~(rewards.reshape(n, G) >= cfg.correct_at).any(axis=1)
        hint_BG = np.zeros((B, gl), bool)
        # every metric finite (the trainer stops on a non-finite one): hint_ratio / eta_mean are 0 when nothing
        # was inpainted (igpo/inpainted = 0)
        m = {"igpo/all_wrong_share": float(all_wrong.mean()), "igpo/triggered_groups": 0.0,
             "igpo/no_trace_groups": 0.0, "igpo/inpainted": 0.0, "igpo/inpaint_correct": 0.0,
             "igpo/rescued_groups": 0.0, "igpo/replaced": 0.0, "igpo/hint_ratio": 0.0,
             "igpo/eta_mean": 0.0, "igpo/hint_tokens": 0.0, "igpo/hint_tokens_kept": 0.0,
             "igpo/inpaint_s": 0.0, "igpo/entropy_s": 0.0, "igpo/reward_errors": 0.0}
        groups, traces = [], []
        if cfg.enabled:
            for g in np.flatnonzero(all_wrong):
                tr = self.hints(int(rows[g * G]))
                if tr is None:
                    m["igpo/no_trace_groups"] += 1
                else:
                    groups.append(int(g))
                    traces.append(tr)
        if groups:
            t0 = time.perf_counter()
            rng = host_rng(key)
            n_pad = 1 << (len(groups) - 1).bit_length()  # power of two ≥ len(groups)
            ft = np.zeros((n_pad * G, gl), np.int32)
            fx = np.zeros((n_pad * G, gl), bool)
            ratios, etas = [], []
            for a, tr in enumerate(traces):
                for j, eta in enumerate(np.sort(rng.uniform(cfg.eta_low, cfg.eta_high, G))):
                    lay = hint_layout(tr, gl, float(eta), rng, cfg)
                    ft[a * G + j], fx[a * G + j] = lay.fixed_tokens, lay.fixed
                    ratios.append(lay.fixed.sum() / max(len(tr.tokens), 1))
                    etas.append(eta)
            src_groups = groups + [groups[0]] * (n_pad - len(groups))
            sub = np.concatenate([np.arange(g * G, (g + 1) * G) for g in src_groups])
            extra = n_pad - len(groups)  # padding rows: copies of the first group's hints, discarded below
            ft[len(groups) * G:], fx[len(groups) * G:] = np.tile(ft[:G], (extra, 1)), np.tile(fx[:G], (extra, 1))
            lengths = None if self.prompt_lengths is None else jnp.asarray(self.prompt_lengths[rows[sub]], jnp.int32)
            out = np.asarray(jax.device_get(self.inpaint_fn(state.params, jnp.asarray(tokens[sub, :P]),
                                                            jax.random.fold_in(key, 1), lengths,
                                                            jnp.asarray(ft), jnp.asarray(fx))))
            k = len(groups) * G
            out, sub, fx = out[:k], sub[:k], fx[:k]
            if not np.array_equal(out[:, P:][fx], ft[:k][fx]):
                raise RuntimeError("inpaint_fn changed hint tokens (fixed positions must never change)")
            inp_r, errors, _ = safe_rewards(self.reward_fn, rows[sub], out[:, P:])
            kmax = max_replacements(G, cfg)
            for a, g in enumerate(groups):
                pairs = replacement_pairs(inp_r[a * G:(a + 1) * G], kmax, cfg.correct_at)
                for slot, j in pairs:
                    tokens[g * G + slot] = out[a * G + j]
                    rewards[g * G + slot] = inp_r[a * G + j]
                    hint_BG[g * G + slot] = fx[a * G + j]
                m["igpo/rescued_groups"] += float(bool(pairs))
                m["igpo/replaced"] += len(pairs)
            m.update({"igpo/triggered_groups": float(len(groups)), "igpo/inpainted": float(k),
                      "igpo/inpaint_correct": float(np.sum(inp_r >= cfg.correct_at)),
                      "igpo/hint_ratio": float(np.mean(ratios)), "igpo/eta_mean": float(np.mean(etas)),
                      "igpo/reward_errors": float(errors), "igpo/inpaint_s": time.perf_counter() - t0})
        weight = np.ones((B, gl), np.float32)
        hint_BG &= completion_mask(tokens[:, P:], self.eos_id)  # hints after an early EOS are not in the loss
        if hint_BG.any():
            t0 = time.perf_counter()
            lengths = None if self.prompt_lengths is None else self.prompt_lengths[rows]
            ent = policy_entropy(self.model, state.params, tokens, gl, self.mask_id, lengths)
            keep = entropy_filter(ent, hint_BG, cfg.entropy_tau)
            weight = keep.astype(np.float32)
            m["igpo/hint_tokens"] = float(hint_BG.sum())
            m["igpo/hint_tokens_kept"] = float((keep & hint_BG).sum())
            m["igpo/entropy_s"] = time.perf_counter() - t0
        m["igpo/all_wrong_share_after"] = float((~(rewards.reshape(n, G) >= cfg.correct_at).any(axis=1)).mean())
        return tokens, rewards, {"token_weight": weight}, m
