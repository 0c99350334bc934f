"""RL losses for masked diffusion LMs: SPG (ELBO / EUBO / mixture bounds), diffu-GRPO (d1) and wd1.

Each loss is a pure, jittable `loss_fn(params, batch, key) -> (loss, metrics)` built by
`make_loss(model, cfg)`, where `model(params, tokens [B, L] int32, *, attention_mask=None, positions=None)
-> logits [B, L, V] float32` is any hashable callable (the Transformer's `jaxllm.models.Model(cfg)`, or a
tabular toy model in the tests) and `cfg` an `RLLossConfig`.

The rollout batch (a dict of arrays; B = n_groups · group_size rows, each group's rows contiguous):
    tokens          [B, P+G] int32   prompt (left-padded) followed by the completion
    completion_mask [B, G]   bool    completion tokens up to and including the first EOS
    advantages      [B]      float32 group-relative advantages (`jaxllm.rl.advantages.group_advantages`)
    attention_mask  [B, P+G]         optional, passed to the model (key padding of left-padded prompts)
    positions       [B, P+G] int32   optional, passed to the model
    old_logps       [B, G]   float32 d1 only: φ_old of this inner step, from `rollout_logps` (default: the
                                     current φ without gradient, i.e. ratio 1, the reference's μ = 1 case)
    ref_logps       [B, G]   float32 d1 with kl_beta > 0: φ_ref of this inner step, from `rollout_logps`

`key` is the mask key of one inner update. The loop draws one rollout key per batch and uses
`inner_step_keys(rollout_key, cfg.inner_steps)[k]` for inner step k, for the loss and for the φ_old / φ_ref
it pre-computes with `rollout_logps` (the reference's `mask_seeds[step % μ]`, dllm_rl.md §2): each inner step
gets fresh masks, and the same masks score the old, reference and current policies.

References: SPG (arXiv 2510.09541; facebookresearch/SPG `SPGTrainer._get_per_seq_logps`, `compute_loss`),
d1 (arXiv 2504.12216; dllm-reasoning/d1 `DiffuGRPOTrainer`), wd1 (arXiv 2507.08838; xiaohangt/wd1
`RevDiffuGRPOTrainer.compute_loss`). Summaries with code locations: shared/research/dllm_rl.md §2–§5.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxllm import diffusion
from jaxllm.config import check, check_choice
from jaxllm.rl.advantages import ADVANTAGE_NORMS, advantage_metrics, check_groups

Batch = dict
LossFn = Callable[[object, Batch, jax.Array], tuple[jax.Array, dict]]

REDUCTIONS = ("group", "batch")
_TINY = 1e-8  # SPG clamps empty denominators (no masked token in a draw) to 1e-8


@dataclasses.dataclass(frozen=True)
class RLLossConfig:
    """Which loss and its hyperparameters (defaults: SPG's GSM8K/MATH mixture run and d1's train.yaml).

    mask_id: the model's mask token id (LLaDA: 126336).
    loss: a key of LOSSES: spg_mix | spg_eubo | spg_elbo | d1 | wd1.
    group_size: completions per prompt (SPG/d1 `num_generations` 6); must divide the batch.
    beta: SPG `eubo_beta` β ≥ 1 of the EUBO (1.5 GSM8K/MATH/Countdown mixture, 1.0 Sudoku).
    omega: SPG `mix_weight` ω of the mixture ω·EUBO + (1 − ω)·ELBO for A < 0 (spg_mix only).
    num_mask_draws: SPG `num_t` m, block-wise mask draws per sequence (≤ completion blocks).
    block_length: SPG's masking block (32); must divide the completion length.
    p_mask_clean: `p_mask_prompt` 0.15: SPG's light masking of the prompt and clean blocks, d1's of the prompt.
    clip_eps: d1's PPO clip ε (0.5).
    kl_beta: d1's weight of the k3 KL to the frozen reference (0.04); 0 needs no reference.
    psi: wd1's temperature ψ of w± = softmax(±ψA) (1 in the code).
    advantage_norm: for `group_advantages`: "mean" (all four references' code) or "mean_std" (GRPO).
    inner_steps: μ gradient steps per rollout batch (SPG/d1 `num_iterations`: 4 in SPG, 12 in d1).
    reduction: "group": token-weighted mean within each group, then the mean over groups (the references
      keep one group per device, and DDP averages devices); "batch": one token-weighted mean over the batch.
    """

    mask_id: int
    loss: str = "spg_mix"
    group_size: int = 6
    beta: float = 1.5
    omega: float = 0.5
    num_mask_draws: int = 2
    block_length: int = 32
    p_mask_clean: float = 0.15
    clip_eps: float = 0.5
    kl_beta: float = 0.04
    psi: float = 1.0
    advantage_norm: Literal["mean", "mean_std"] = "mean"
    inner_steps: int = 4
    reduction: Literal["group", "batch"] = "group"

    def __post_init__(self):
        check_choice("loss", self.loss, sorted(LOSSES))
        check_choice("advantage_norm", self.advantage_norm, ADVANTAGE_NORMS)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check(self.mask_id >= 0, f"mask_id must be a token id ≥ 0, got {self.mask_id}")
        check(self.group_size >= 1, f"group_size must be ≥ 1, got {self.group_size}")
        check(0.0 <= self.omega <= 1.0, f"omega must lie in [0, 1], got {self.omega}")
        # SPG Theorem 1: the Rényi bound is an upper bound on log π only for β ≥ 1 (β < 1 was unstable, Table 12)
        check(not self.uses_eubo or self.beta >= 1.0,
              f"beta={self.beta}: the EUBO (loss={self.loss!r}) needs beta ≥ 1 to bound log π from above")
        check(self.num_mask_draws >= 1, f"num_mask_draws must be ≥ 1, got {self.num_mask_draws}")
        check(self.block_length >= 1, f"block_length must be ≥ 1, got {self.block_length}")
        check(0.0 <= self.p_mask_clean < 1.0, f"p_mask_clean must lie in [0, 1), got {self.p_mask_clean}")
        check(self.clip_eps > 0.0, f"clip_eps must be > 0, got {self.clip_eps}")
        check(self.kl_beta >= 0.0, f"kl_beta must be ≥ 0, got {self.kl_beta}")
        check(self.psi > 0.0, f"psi must be > 0, got {self.psi}")
        check(self.inner_steps >= 1, f"inner_steps must be ≥ 1, got {self.inner_steps}")

    @property
    def negative_weight(self) -> float:
        """ω of the EUBO in the bound used for A < 0: spg_eubo 1, spg_elbo 0, spg_mix `omega`."""
        return {"spg_eubo": 1.0, "spg_elbo": 0.0}.get(self.loss, self.omega)

    @property
    def uses_eubo(self) -> bool:
        return self.loss.startswith("spg_") and self.negative_weight > 0.0


def inner_step_keys(rollout_key: jax.Array, inner_steps: int) -> jax.Array:
    """The mask key of each of the μ inner updates of one rollout batch: [μ] keys."""
    return jax.random.split(rollout_key, inner_steps)


# ----------------------------------------------------------------------------------------------------------
# Log-likelihood surrogates


def masked_token_logps(model, params, batch: Batch, masked_mBL: jax.Array, mask_id: int) -> jax.Array:
    """log π_θ(x_i | z_τ) at every position of m noisy copies z_τ of batch["tokens"]: [m, B, L] float32.

    masked_mBL: [m, B, L] bool, the positions fed as the mask token in copy τ. One forward pass over m·B rows
    (copy-major); the batch's attention_mask / positions (if any) are repeated for each copy.
    """
    tokens = batch["tokens"].astype(jnp.int32)
    m, B, L = masked_mBL.shape
    noisy = jnp.where(masked_mBL, jnp.int32(mask_id), tokens[None]).reshape(m * B, L)
    logits = diffusion.model_logits(model, params, noisy, batch.get("attention_mask"), batch.get("positions"))
    targets = jnp.broadcast_to(tokens[None], (m, B, L)).reshape(m * B, L)
    return diffusion.token_log_probs(logits, targets).reshape(m, B, L)


class SequenceBounds(NamedTuple):
    elbo: jax.Array  # [B] float32
    eubo: Optional[jax.Array]  # [B] float32, None when not requested


def sequence_bounds(
    logp_mBG: jax.Array,
    loss_mask_mBG: jax.Array,
    weight_mB: jax.Array,
    length_B: jax.Array,
    *,
    beta: Optional[float] = None,
    length_normalise: bool = True,
) -> SequenceBounds:
    """Monte Carlo ELBO and EUBO of each completion from m mask draws (SPG eqs. 2 and 7, dllm_rl.md §5.2).

    logp_mBG:      ℓ_τi = log π_θ(x_i | z_τ) for the completion tokens, [m, B, G] float32
    loss_mask_mBG: M_τi·C_i: token i masked in draw τ and inside the completion, [m, B, G] bool
    weight_mB:     w_τ > 0, the draw's weight w(t): 1/t̂_τ for SPG's block masks (t̂ the empirical mask ratio),
                   1/t for random-t masks; [m, B]
    length_B:      L_j = Σ_i C_ji

        ELBO_j = (1/m) Σ_τ w_τ Σ_i M_τi ℓ_τi                                        [÷ L_j]
        EUBO_j = (1/β) Σ_{i∈S} log s_i,   s_i = (1/m) Σ_τ w_τ M_τi π_τi^β            [÷ |S|]

    with S the tokens masked in at least one draw. length_normalise=True gives the reference's per-token
    scale (its ELBO is Σ_i M ℓ / Σ_i M per draw, equal to the above with w = 1/t̂ and ÷ L). log s_i is taken
    in log space, logsumexp_τ(β ℓ_τi + log w_τ) − log m over the draws that mask i, so π^β never underflows
    (the reference computes softmax(logits)^β in float and drops a token whose s_i underflows to 0).
    The plug-in EUBO is biased low for finite m (log outside the mean, Jensen) and consistent as m → ∞.
    """
    m = logp_mBG.shape[0]
    M = loss_mask_mBG.astype(bool)
    w = weight_mB.astype(jnp.float32)
    length = jnp.maximum(length_B.astype(jnp.float32), 1.0)
    elbo = jnp.mean(w * jnp.sum(jnp.where(M, logp_mBG, 0.0), axis=-1), axis=0)
    if length_normalise:
        elbo = elbo / length
    if beta is None:
        return SequenceBounds(elbo, None)
    in_S = jnp.any(M, axis=0)  # [B, G]
    terms = jnp.where(M, beta * logp_mBG + jnp.log(w)[..., None], -jnp.inf)
    terms = jnp.where(in_S[None], terms, 0.0)  # tokens outside S: a finite dummy, so no NaN reaches the grad
    log_s = jnp.where(in_S, jax.nn.logsumexp(terms, axis=0) - jnp.log(float(m)), 0.0)
    eubo = jnp.sum(log_s, axis=-1) / beta
    if length_normalise:
        eubo = eubo / jnp.maximum(jnp.sum(in_S, axis=-1).astype(jnp.float32), _TINY)
    return SequenceBounds(elbo, eubo)


def spg_bounds(model, params, batch: Batch, key: jax.Array, cfg: RLLossConfig, *, with_eubo: bool = True
               ) -> tuple[SequenceBounds, diffusion.BlockMasks]:
    """SPG's length-normalised per-sequence ELBO and EUBO on m block-wise mask draws (`forward_type=
    'block_random'`, dllm_rl.md §5.3): ([B], [B]) and the masks drawn."""
    tokens, comp = batch["tokens"], batch["completion_mask"]
    prompt_len = tokens.shape[1] - comp.shape[1]
    bm = diffusion.block_random_masks(key, prompt_len, comp, block_length=cfg.block_length,
                                      num_samples=cfg.num_mask_draws, p_mask_clean=cfg.p_mask_clean)
    logp = masked_token_logps(model, params, batch, bm.masked, cfg.mask_id)[..., prompt_len:]
    weight = 1.0 / jnp.maximum(bm.t_hat, _TINY)
    bounds = sequence_bounds(logp, bm.loss_mask, weight, jnp.sum(comp, axis=1),
                             beta=cfg.beta if with_eubo else None)
    return bounds, bm


def one_step_token_logps(model, params, batch: Batch, key: jax.Array, cfg: RLLossConfig) -> jax.Array:
    """d1's one-step estimator φ(o_k) = log π_θ(o_k | q', all of o masked): [B, G] float32.

    Every completion position is masked (t = 1), each prompt position independently with p = p_mask_clean
    (d1 `forward_process`); one forward pass gives all G per-token terms.
    """
    tokens, comp = batch["tokens"], batch["completion_mask"]
    B, L = tokens.shape
    prompt_len = L - comp.shape[1]
    is_prompt = jnp.broadcast_to(jnp.arange(L) < prompt_len, (B, L))
    mb = diffusion.forward_mask(key, tokens, cfg.mask_id, maskable_BL=is_prompt, eps=0.0,
                                t_B=jnp.full((B,), cfg.p_mask_clean, jnp.float32))
    masked = mb.masked | ~is_prompt
    return masked_token_logps(model, params, batch, masked[None], cfg.mask_id)[0, :, prompt_len:]


def rollout_logps(model, params, batch: Batch, rollout_key: jax.Array, cfg: RLLossConfig) -> jax.Array:
    """φ of every inner step's masks, computed once per rollout batch (d1's old / reference log-probs):
    [μ, B, G] float32; row k uses `inner_step_keys(rollout_key, μ)[k]`, the key the loss gets at step k."""
    keys = inner_step_keys(rollout_key, cfg.inner_steps)
    return jax.lax.map(lambda k: one_step_token_logps(model, params, batch, k, cfg), keys)


# ----------------------------------------------------------------------------------------------------------
# Losses: fn(model, cfg, params, batch, key) -> (loss, metrics)


def weighted_mean(values: jax.Array, weights: jax.Array, group_size: int, reduction: str) -> jax.Array:
    """Σ v·w / Σ w over the batch ("batch"), or within each group and then averaged over groups ("group").

    values, weights: [B] or [B, G] (per sequence or per token), rows grouped as in the rollout batch.
    """
    w = weights.astype(jnp.float32)
    vw = values * w
    if reduction == "batch":
        return jnp.sum(vw) / jnp.maximum(jnp.sum(w), _TINY)
    n = check_groups(values.shape[0], group_size)
    return jnp.mean(jnp.sum(vw.reshape(n, -1), axis=1) / jnp.maximum(jnp.sum(w.reshape(n, -1), axis=1), _TINY))


def _common_metrics(batch: Batch, loss: jax.Array) -> dict:
    return {"loss": loss, **advantage_metrics(batch["advantages"]),
            "completion_len": jnp.mean(jnp.sum(batch["completion_mask"], axis=1).astype(jnp.float32))}


def spg_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """SPG (eq. 5 with the mixture eq. 8): maximise A·ELBO for A > 0 and A·(ω·EUBO + (1 − ω)·ELBO) for A ≤ 0.

        loss = Σ_j −A_j · bound_j · L_j / Σ_j L_j        (per group, then the mean over groups)

    bound_j the length-normalised bound, so multiplying by L_j makes the sum token-weighted (SPG
    `compute_loss`). Plain policy gradient: no ratio, no clipping, no KL (SPG §F).
    """
    omega = cfg.negative_weight
    bounds, bm = spg_bounds(model, params, batch, key, cfg, with_eubo=omega > 0.0)
    adv = batch["advantages"].astype(jnp.float32)
    if omega == 0.0:
        negative = bounds.elbo
    elif omega == 1.0:
        negative = bounds.eubo
    else:
        negative = omega * bounds.eubo + (1.0 - omega) * bounds.elbo
    bound = jnp.where(adv > 0, bounds.elbo, negative)  # SPG reward_mask = (A > 0); A = 0 adds nothing
    length = jnp.sum(batch["completion_mask"], axis=1)
    loss = weighted_mean(-adv * bound, length, cfg.group_size, cfg.reduction)
    metrics = {**_common_metrics(batch, loss), "elbo_mean": jnp.mean(bounds.elbo), "bound_mean": jnp.mean(bound),
               "t_hat_mean": jnp.mean(bm.t_hat)}
    if bounds.eubo is not None:
        metrics["eubo_mean"] = jnp.mean(bounds.eubo)
    return loss, metrics


def d1_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """diffu-GRPO (d1): per-token PPO-clip on the one-step estimator plus β·k3-KL to a frozen reference.

        ρ_k = exp(φ_θ − φ_old),  ℓ_k = −min(ρ_k A, clip(ρ_k, 1 − ε, 1 + ε) A) + β (exp(φ_ref − φ_θ) − (φ_ref − φ_θ) − 1)
        loss = Σ ℓ_k C_k / Σ C_k   (per group, then the mean over groups)

    Metrics: ratio_mean, clip_frac (tokens whose clipped term is the minimum, so they get no gradient), kl.
    """
    phi = one_step_token_logps(model, params, batch, key, cfg)
    old = batch["old_logps"] if "old_logps" in batch else jax.lax.stop_gradient(phi)
    comp = batch["completion_mask"].astype(jnp.float32)
    adv = batch["advantages"].astype(jnp.float32)[:, None]
    ratio = jnp.exp(phi - old)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    n_tok = jnp.maximum(jnp.sum(comp), 1.0)
    token_mean = lambda x: jnp.sum(x * comp) / n_tok  # noqa: E731
    metrics = {"ratio_mean": token_mean(ratio), "clip_frac": token_mean((clipped < unclipped).astype(jnp.float32)),
               "logp_mean": token_mean(phi)}
    if cfg.kl_beta > 0.0:
        delta = batch["ref_logps"] - phi
        kl = jnp.exp(delta) - delta - 1.0  # k3 estimator of KL(π_θ ‖ π_ref), ≥ 0
        per_token = per_token + cfg.kl_beta * kl
        metrics["kl"] = token_mean(kl)
    loss = weighted_mean(per_token, comp, cfg.group_size, cfg.reduction)
    return loss, {**_common_metrics(batch, loss), **metrics}


def wd1_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """wd1: ratio-free weighted likelihood (wd1 eq. 9, `RevDiffuGRPOTrainer.compute_loss`).

        loss_group = Σ_i (w⁻_i − w⁺_i) log π(o_i | q),   w± = softmax(±ψ A) over the group

    log π(o_i | q) = Σ_k C_ik φ_ik, the d1 estimator summed (not averaged) over tokens, as in the code; the
    code sums over the group (the paper writes 1/G); the loss is the mean over groups. No ratio, no KL.
    Equal advantages within a group give w⁺ = w⁻ and hence a zero gradient.
    """
    phi = one_step_token_logps(model, params, batch, key, cfg)
    seq = jnp.sum(phi * batch["completion_mask"].astype(jnp.float32), axis=1)  # [B]
    w_pos, w_neg = wd1_weights(batch["advantages"], cfg.group_size, cfg.psi)
    n = seq.shape[0] // cfg.group_size
    loss = jnp.mean(jnp.sum(((w_neg - w_pos) * seq).reshape(n, cfg.group_size), axis=1))
    return loss, {**_common_metrics(batch, loss), "seq_logp_mean": jnp.mean(seq),
                  "w_pos_max": jnp.mean(jnp.max(w_pos.reshape(n, cfg.group_size), axis=1))}


def wd1_weights(advantages_B: jax.Array, group_size: int, psi: float) -> tuple[jax.Array, jax.Array]:
    """wd1's w⁺ = softmax(ψA) and w⁻ = softmax(−ψA) within each group: ([B], [B]), each summing to 1 per group."""
    n = check_groups(advantages_B.shape[0], group_size)
    adv = advantages_B.astype(jnp.float32).reshape(n, group_size)
    return (jax.nn.softmax(psi * adv, axis=1).reshape(-1), jax.nn.softmax(-psi * adv, axis=1).reshape(-1))


LOSSES: dict[str, Callable] = {
    "spg_mix": spg_loss,
    "spg_eubo": spg_loss,
    "spg_elbo": spg_loss,
    "d1": d1_loss,
    "wd1": wd1_loss,
}


def check_batch(batch: Batch, cfg: RLLossConfig) -> None:
    """Shapes and keys of a rollout batch for cfg.loss; a ValueError naming the offending entry."""
    for name in ("tokens", "completion_mask", "advantages"):
        if name not in batch:
            raise ValueError(f"rollout batch lacks {name!r} (has {sorted(batch)})")
    tokens, comp, adv = batch["tokens"], batch["completion_mask"], batch["advantages"]
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, P+G], got shape {tokens.shape}")
    B, L = tokens.shape
    if comp.ndim != 2 or comp.shape[0] != B or not 0 < comp.shape[1] < L:
        raise ValueError(f"completion_mask must be [B={B}, G] with 0 < G < {L} (tokens [B, P+G]), got {comp.shape}")
    if adv.shape != (B,):
        raise ValueError(f"advantages must be [B={B}], got {adv.shape}")
    check_groups(B, cfg.group_size)
    for name in ("attention_mask", "positions"):
        if name in batch and batch[name].shape != (B, L):
            raise ValueError(f"{name} must match tokens [B, P+G] = {(B, L)}, got {batch[name].shape}")
    G = comp.shape[1]
    for name in ("old_logps", "ref_logps"):
        if name in batch and batch[name].shape != (B, G):
            raise ValueError(f"{name} must be [B, G] = {(B, G)} (this inner step's row of rollout_logps), "
                             f"got {batch[name].shape}")
    if cfg.loss == "d1" and cfg.kl_beta > 0.0 and "ref_logps" not in batch:
        raise ValueError(f"loss='d1' with kl_beta={cfg.kl_beta} needs batch['ref_logps'] [B, G] "
                         f"(rollout_logps under the frozen reference), or kl_beta=0")


def make_loss(model, cfg: RLLossConfig) -> LossFn:
    """`loss_fn(params, batch, key) -> (loss, metrics)` for cfg.loss; pure and jittable (the batch is checked
    at trace time)."""
    fn = LOSSES[cfg.loss]

    def loss_fn(params, batch: Batch, key: jax.Array):
        check_batch(batch, cfg)
        return fn(model, cfg, params, batch, key)

    return loss_fn


# ----------------------------------------------------------------------------------------------------------
# IGPO (arXiv 2509.10396; facebookresearch/igpo `compute_loss`, dllm_rl.md §6): GRPO with clipping and a KL on
# d1's one-step estimator, every token weighted by the rollout's `token_weight` [B, G] (IGPO's entropy filter,
# `jaxllm.rl.igpo`: 0 on the hint tokens it drops, 1 elsewhere; absent = 1). The inpainted regrouping itself is
# the rollout source's (`RolloutSource(regroup_fn=jaxllm.rl.igpo.IGPORegrouper(...))`), so it composes with
# every loss; these losses add the per-token weight.

ONE_STEP_RATIO_LOSSES = ("d1", "igpo", "igpo_gspo")  # losses that read φ_old (and φ_ref) per inner step


def token_weight(batch: Batch) -> jax.Array:
    """[B, G] float32: completion_mask × batch["token_weight"] (IGPO's entropy filter; 1 when absent)."""
    comp = batch["completion_mask"].astype(jnp.float32)
    return comp * batch["token_weight"].astype(jnp.float32) if "token_weight" in batch else comp


def _igpo_grpo(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array, *, sequence_ratio: bool):
    """IGPO's GRPO on the one-step estimator, loss = Σ ℓ_k w_k / Σ w_k (per group, then the mean over groups):

        token ratio (paper, `loss=igpo`):       ρ_k = exp(φ_θ,k − φ_old,k)
        sequence ratio (code, `loss=igpo_gspo`): ρ_k = s = exp(Σ_k w_k (φ_θ,k − φ_old,k) / Σ_k w_k)   (GSPO)
        ℓ_k = −min(ρ_k A, clip(ρ_k, 1 − ε, 1 + ε) A) + β (exp(φ_ref − φ_θ) − (φ_ref − φ_θ) − 1)

    w = completion_mask × token_weight. The public code divides the GSPO log-ratio sum by the full completion
    width (256) and counts post-EOS tokens; here it is the mean over the weighted completion tokens (GSPO's
    length normalisation). IGPO's clip is 0.2 / 0.2 and β = 0.01 (set cfg.clip_eps, cfg.kl_beta); its prompt is
    never masked (cfg.p_mask_clean = 0).
    """
    if cfg.kl_beta > 0.0 and "ref_logps" not in batch:
        raise ValueError(f"loss={cfg.loss!r} with kl_beta={cfg.kl_beta} needs batch['ref_logps'] [B, G] "
                         f"(rollout_logps under the frozen reference), or kl_beta=0")
    phi = one_step_token_logps(model, params, batch, key, cfg)
    old = batch["old_logps"] if "old_logps" in batch else jax.lax.stop_gradient(phi)
    w = token_weight(batch)
    adv = batch["advantages"].astype(jnp.float32)[:, None]
    if sequence_ratio:
        log_s = jnp.sum(w * (phi - old), axis=1, keepdims=True) / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1.0)
        ratio = jnp.broadcast_to(jnp.exp(log_s), phi.shape)
    else:
        ratio = jnp.exp(phi - old)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps) * adv
    per_token = -jnp.minimum(unclipped, clipped)
    n_tok = jnp.maximum(jnp.sum(w), 1.0)
    token_mean = lambda x: jnp.sum(x * w) / n_tok  # noqa: E731
    comp = batch["completion_mask"].astype(jnp.float32)
    metrics = {"ratio_mean": token_mean(ratio), "clip_frac": token_mean((clipped < unclipped).astype(jnp.float32)),
               "logp_mean": token_mean(phi), "token_weight_frac": jnp.sum(w) / jnp.maximum(jnp.sum(comp), 1.0)}
    if cfg.kl_beta > 0.0:
        delta = batch["ref_logps"] - phi
        kl = jnp.exp(delta) - delta - 1.0
        per_token = per_token + cfg.kl_beta * kl
        metrics["kl"] = token_mean(kl)
    loss = weighted_mean(per_token, w, cfg.group_size, cfg.reduction)
    return loss, {**_common_metrics(batch, loss), **metrics}


def igpo_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """IGPO as the paper writes it: per-token GRPO ratio, clip, KL, entropy-filtered token weights."""
    return _igpo_grpo(model, cfg, params, batch, key, sequence_ratio=False)


def igpo_gspo_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """IGPO as the public code runs it (`use_gspo=true`): the GSPO sequence-level ratio, broadcast to tokens."""
    return _igpo_grpo(model, cfg, params, batch, key, sequence_ratio=True)


def igpo_spg_loss(model, cfg: RLLossConfig, params, batch: Batch, key: jax.Array) -> tuple[jax.Array, dict]:
    """IGPO's entropy filter on the SPG mixture bound (`loss=igpo_spg_mix`, SPG's cfg.beta / cfg.omega): the
    block-wise masks of `spg_bounds`, but a token enters the ELBO / EUBO sums only where w = completion_mask ×
    token_weight > 0, and the sequence weight is Σ w; without `token_weight` it equals `spg_loss`."""
    tokens, comp = batch["tokens"], batch["completion_mask"]
    prompt_len = tokens.shape[1] - comp.shape[1]
    w = token_weight(batch)
    bm = diffusion.block_random_masks(key, prompt_len, comp, block_length=cfg.block_length,
                                      num_samples=cfg.num_mask_draws, p_mask_clean=cfg.p_mask_clean)
    logp = masked_token_logps(model, params, batch, bm.masked, cfg.mask_id)[..., prompt_len:]
    loss_mask = bm.loss_mask & (w > 0)[None]
    omega = cfg.omega
    bounds = sequence_bounds(logp, loss_mask, 1.0 / jnp.maximum(bm.t_hat, _TINY), jnp.sum(w, axis=1),
                             beta=cfg.beta if omega > 0.0 else None)
    adv = batch["advantages"].astype(jnp.float32)
    negative = bounds.elbo if omega == 0.0 else omega * bounds.eubo + (1.0 - omega) * bounds.elbo
    bound = jnp.where(adv > 0, bounds.elbo, negative)
    loss = weighted_mean(-adv * bound, jnp.sum(w, axis=1), cfg.group_size, cfg.reduction)
    return loss, {**_common_metrics(batch, loss), "elbo_mean": jnp.mean(bounds.elbo), "bound_mean": jnp.mean(bound),
                  "token_weight_frac": jnp.sum(w) / jnp.maximum(jnp.sum(comp.astype(jnp.float32)), 1.0)}


LOSSES.update({"igpo": igpo_loss, "igpo_gspo": igpo_gspo_loss, "igpo_spg_mix": igpo_spg_loss})
