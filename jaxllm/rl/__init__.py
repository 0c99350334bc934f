"""Reinforcement learning for (masked diffusion) LMs: group advantages and the SPG / d1 / wd1 losses."""

from jaxllm.rl.advantages import advantage_metrics, check_groups, group_advantages, reward_metrics
from jaxllm.rl.losses import (
    LOSSES,
    RLLossConfig,
    SequenceBounds,
    check_batch,
    d1_loss,
    inner_step_keys,
    make_loss,
    masked_token_logps,
    one_step_token_logps,
    rollout_logps,
    sequence_bounds,
    spg_bounds,
    spg_loss,
    wd1_loss,
    wd1_weights,
    weighted_mean,
)

__all__ = [
    "LOSSES", "RLLossConfig", "SequenceBounds", "advantage_metrics", "check_batch", "check_groups", "d1_loss",
    "group_advantages", "inner_step_keys", "make_loss", "masked_token_logps", "one_step_token_logps",
    "reward_metrics", "rollout_logps", "sequence_bounds", "spg_bounds", "spg_loss", "wd1_loss", "wd1_weights",
    "weighted_mean",
]
