"""Group-relative advantages (dllm_rl.md §2, SPG eq. 4).

A rollout batch holds B = n_groups · group_size completions, the group_size completions of one prompt
contiguous (row b belongs to group b // group_size), the order TRL's `repeat_interleave` gives and the one
the losses of `jaxllm.rl.losses` assume.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

AdvantageNorm = Literal["mean", "mean_std"]
ADVANTAGE_NORMS = ("mean", "mean_std")

GRPO_STD_EPS = 1e-4  # TRL GRPOTrainer: (r − mean) / (std + 1e-4)


def check_groups(batch_size: int, group_size: int, what: str = "batch") -> int:
    """Number of groups; a clear error when group_size does not divide the batch."""
    if group_size < 1:
        raise ValueError(f"group_size must be ≥ 1, got {group_size}")
    if batch_size % group_size:
        raise ValueError(f"group_size={group_size} does not divide the {what} size {batch_size}: a rollout batch "
                         f"holds whole groups of group_size completions of one prompt, contiguous")
    return batch_size // group_size


def group_advantages(rewards_B: jax.Array, group_size: int, normalise: AdvantageNorm = "mean") -> jax.Array:
    """Advantages [B] float32 from rewards [B].

    "mean":     A = r − mean_group(r). SPG, d1, wd1 and IGPO all do this in code (the group std is only
                logged, if at all): Dr. GRPO's choice, which SPG cites.
    "mean_std": A = (r − mean) / (std + 1e-4), the GRPO (DeepSeekMath) form that d1's paper writes; std with
                Bessel's correction as torch.std (0 for group_size = 1).
    """
    if normalise not in ADVANTAGE_NORMS:
        raise ValueError(f"normalise={normalise!r} is not one of {list(ADVANTAGE_NORMS)}")
    n = check_groups(rewards_B.shape[0], group_size, "rewards")
    r = rewards_B.astype(jnp.float32).reshape(n, group_size)
    adv = r - jnp.mean(r, axis=1, keepdims=True)
    if normalise == "mean_std":
        std = jnp.std(r, axis=1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(adv)
        adv = adv / (std + GRPO_STD_EPS)
    return adv.reshape(-1)


def reward_metrics(rewards_B: jax.Array, group_size: int) -> dict:
    """reward_mean, reward_std (mean within-group std) and zero_std_frac (groups whose rewards are all equal,
    which give no learning signal under any of these losses)."""
    n = check_groups(rewards_B.shape[0], group_size, "rewards")
    r = rewards_B.astype(jnp.float32).reshape(n, group_size)
    std = jnp.std(r, axis=1)
    return {"reward_mean": jnp.mean(r), "reward_std": jnp.mean(std),
            "zero_std_frac": jnp.mean((std < 1e-6).astype(jnp.float32))}


def advantage_metrics(advantages_B: jax.Array) -> dict:
    """Summary of a batch's advantages: mean |A| and the fractions with A > 0 and A < 0."""
    a = advantages_B.astype(jnp.float32)
    return {"adv_abs_mean": jnp.mean(jnp.abs(a)), "adv_pos_frac": jnp.mean((a > 0).astype(jnp.float32)),
            "adv_neg_frac": jnp.mean((a < 0).astype(jnp.float32))}
