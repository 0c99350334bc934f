"""Reinforcement learning for (masked diffusion) LMs: group advantages, the SPG / d1 / wd1 losses, the RL loop
(rollouts as the one trainer's batch source, `jaxllm.rl.loop`) and LoRA (`jaxllm.rl.lora`)."""

from jaxllm.rl.advantages import advantage_metrics, check_groups, group_advantages, reward_metrics
from jaxllm.rl.loop import (
    PromptSet,
    RolloutConfig,
    RolloutSource,
    check_trainer,
    completion_mask,
    diffusion_sampler,
    make_rl_task,
    rl_loss_fn,
    safe_rewards,
    select_inner_step,
)
from jaxllm.rl.lora import LoraConfig, LoraLinear, add_lora, lora_logical_axes, lora_optimizer, merge_lora
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
    # the loop
    "PromptSet", "RolloutConfig", "RolloutSource", "check_trainer", "completion_mask", "diffusion_sampler",
    "make_rl_task", "rl_loss_fn", "safe_rewards", "select_inner_step",
    # LoRA
    "LoraConfig", "LoraLinear", "add_lora", "lora_logical_axes", "lora_optimizer", "merge_lora",
]
