"""A trivially learnable RL task for the loop tests (importable from subprocesses as `tests.rl.loop_toy`).

Policy: `TableModel` (tests/rl/toy.py), an any-order masked model given by a logit table over prompts of 2
tokens and completions of 2 tokens, vocabulary {0, 1, 2} (+ the mask id 3), starting from uniform logits.
Reward: the share of completion tokens equal to 1, so the uniform start has expected reward 1/3 and the
optimum 1. Sampler: the LLaDA sampler at temperature 1 (2 steps, one block).
"""

from __future__ import annotations

import numpy as np
import optax

from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import (
    PromptSet,
    RolloutConfig,
    RolloutSource,
    check_trainer,
    diffusion_sampler,
    make_rl_task,
)
from jaxllm.sampling.diffusion import DiffusionSamplerConfig
from jaxllm.train import TrainerConfig
from tests.rl.toy import TableModel

MODEL = TableModel(length=4, vocab=3)
PROMPTS = PromptSet(np.array([[0, 0], [0, 1], [1, 2], [2, 2]], np.int32))


def ones_reward(index: int, completion: np.ndarray) -> float:
    return float(np.mean(np.asarray(completion) == 1))


def toy_run(loss: str = "spg_mix", reward_fn=ones_reward, iterations: int = 12, inner_steps: int = 2,
            lr: float = 0.3, checkpoint_every_batches: int = 2, kl_beta: float = 0.0, group_size: int = 4):
    """(TrainerConfig, Task) of an RL run of `iterations` rollout batches of 2 prompts × group_size."""
    cfg = RLLossConfig(mask_id=MODEL.mask_id, loss=loss, group_size=group_size, beta=1.0, num_mask_draws=2,
                       block_length=1, inner_steps=inner_steps, kl_beta=kl_beta)
    sampler = diffusion_sampler(MODEL, DiffusionSamplerConfig(gen_length=2, block_length=2, steps=2,
                                                              mask_id=MODEL.mask_id, temperature=1.0))
    init = np.zeros(((MODEL.vocab + 1) ** MODEL.length, MODEL.length, MODEL.vocab + 1), np.float32)
    source = RolloutSource(sampler, reward_fn, PROMPTS, RolloutConfig(batch_size=2 * group_size,
                                                                      group_size=group_size),
                           cfg, model=MODEL, ref_params=init if kl_beta > 0 else None)
    trainer = TrainerConfig(steps=iterations * inner_steps, log_every=1, checkpoint_every=checkpoint_every_batches
                            * inner_steps, keep_checkpoints=2, updates_per_batch=inner_steps, progress=False)
    check_trainer(trainer, cfg)
    task = make_rl_task(MODEL, cfg, optax.adam(lr), source, lambda key: init)
    return trainer, task
