"""Shared by the SPG RL experiments: load the SFT start, run RL through the one trainer (`jaxllm.rl.loop`),
evaluate on the held-out split before and after, write summary.json and the reward plot."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _dllm_sft as dllm
from jaxllm.config import check
from jaxllm.models import Model, init_params, logical_axes
from jaxllm.optim import build
from jaxllm.rl import LOSSES, RLLossConfig
from jaxllm.rl.loop import (
    PromptSet,
    RolloutConfig,
    RolloutSource,
    check_trainer,
    diffusion_sampler,
    make_rl_task,
)
from jaxllm.rl.lora import LoraConfig, LoraLinear, add_lora, lora_logical_axes, lora_optimizer, merge_lora
from jaxllm.rl.losses import ONE_STEP_RATIO_LOSSES
from jaxllm.sampling.diffusion import DiffusionSamplerConfig
from jaxllm.train import TrainerConfig, save_figure, train, write_summary
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.trainer import TrainState

# AdamW(0.9, 0.99) as SPG's train.yaml, constant lr, clipping at 1 (SPG clips at 0.2 for an 8B LoRA; the tiny
# model's gradient norms are larger). lr 1e-4: at 3e-4 SPG-mix collapses on Sudoku, at 3e-5 nothing moves
# (docs/results/spg.md).
RL_OPTIM = build.AdamWConfig(learning_rate=1e-4, b2=0.99, weight_decay=0.0, grad_clip=1.0)
RL_TRAINER = TrainerConfig(steps=4, log_every=4, checkpoint_every=40, updates_per_batch=4, progress=True)


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """The RL part of an spg_* experiment (the loss is `rl.loss`, also spelled `loss=`).

    iterations: rollout batches (each gives rl.inner_steps = μ updates). prompts_per_batch × rl.group_size
    completions per batch. temperature / sample_steps / sample_block: the rollout sampler (low-confidence
    remasking). eval_steps / eval_block: the greedy held-out protocol. eval_sampled: also evaluate the
    held-out prompts by sampling at the rollout temperature (one fixed key, `eval/sampled_*`), since RL can
    sharpen the sampling distribution without moving the greedy mode, or the reverse.
    """

    iterations: int = 25
    prompts_per_batch: int = 8
    temperature: float = 0.7
    sample_steps: int = 32
    sample_block: int = 32
    eval_steps: int = 32
    eval_block: int = 32
    n_prompts: int = 4000  # RL prompts drawn from the SFT training problems
    eval_sampled: bool = False

    def __post_init__(self):
        check(self.iterations >= 1, f"rl_run.iterations must be ≥ 1, got {self.iterations}")
        check(self.prompts_per_batch >= 1, f"rl_run.prompts_per_batch must be ≥ 1, got {self.prompts_per_batch}")
        check(self.temperature >= 0, f"rl_run.temperature must be ≥ 0, got {self.temperature}")


def check_config(config) -> None:
    """The checks every spg_* experiment Config shares (call from its __post_init__): the loss is known and
    the SPG masking block divides the generation."""
    check(config.rl.loss in LOSSES, f"rl.loss={config.rl.loss!r} is not one of {sorted(LOSSES)}")
    check(config.sft.gen_length % config.rl.block_length == 0,
          f"rl.block_length={config.rl.block_length} must divide sft.gen_length={config.sft.gen_length}")


# `loss=` is another spelling of `rl.loss` (one setting, one field): put this in an spg_* Config as
# `ALIASES: ClassVar[dict] = spg.ALIASES`.
ALIASES = {"loss": "rl.loss", "lr": "optim.learning_rate", "iterations": "rl_run.iterations"}


def load_sft_params(sft_run_dir: str, mcfg, sft_optim: build.OptimizerConfig, sft_steps: int):
    """The parameters of the newest SFT checkpoint in `<sft_run_dir>/sft/checkpoints` (a dllm_*_sft run)."""
    state, step = load_sft_state(sft_run_dir, mcfg, sft_optim, sft_steps)
    return state.params, step


def load_sft_state(sft_run_dir: str, mcfg, sft_optim: build.OptimizerConfig, sft_steps: int):
    """(TrainState, step) of the newest SFT checkpoint in `<sft_run_dir>/sft/checkpoints`: parameters and the
    SFT optimizer's state (built by `sft_optim`, the run's own optimizer config)."""
    ckpt_dir = Path(sft_run_dir) / "sft" / "checkpoints"
    check(ckpt_dir.is_dir(), f"init_from={sft_run_dir!r}: no SFT checkpoints at {ckpt_dir}")
    saved = json.loads((Path(sft_run_dir) / "config.json").read_text())["model"]
    mine = dataclasses.asdict(mcfg)
    diff = sorted(k for k in mine if k in saved and json.loads(json.dumps(mine[k])) != saved[k])
    check(not diff, f"init_from={sft_run_dir!r} holds a model with different {diff} than sft.model")
    saved_optim = json.loads((Path(sft_run_dir) / "config.json").read_text()).get("optim", {}).get("name")
    check(saved_optim in (None, sft_optim.name),
          f"init_from={sft_run_dir!r} was trained with the {saved_optim!r} optimizer, this run's SFT optimizer is "
          f"{sft_optim.name!r}: its optimizer state does not restore into another family (choose the run's own "
          f"optimizer, or an SFT run trained with {sft_optim.name!r})")
    params = jax.eval_shape(lambda: init_params(mcfg, jax.random.PRNGKey(0)))
    opt = jax.eval_shape(sft_optim.build(sft_steps).init, params)
    abstract = TrainState(params, opt, jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.uint32))
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    try:
        restored = ckpt.restore_latest(abstract)
    finally:
        ckpt.close()
    check(restored is not None, f"init_from={sft_run_dir!r}: no checkpoint in {ckpt_dir} restores")
    step, state, _, _ = restored
    return TrainState(*state), step


def greedy_eval(mcfg, vocab: dllm.Vocab, prompts_NP: np.ndarray, gen_length: int, steps: int, block: int,
                score: Callable[[int, str], float], temperature: float = 0.0, seed: int = 0) -> list[float]:
    """The reference's held-out protocol: greedy (τ = 0) low-confidence sampling of every prompt; with
    temperature > 0, sampling at that temperature under fixed keys (`seed`), the same draws before and after."""
    def evaluate(params):
        rows = dllm.evaluate_settings(mcfg, params, vocab, prompts_NP, gen_length, [(steps, block, "low_confidence")],
                                      score, temperature=temperature, seed=seed)
        return rows[0]["scores"]

    return evaluate


class RLRun(NamedTuple):
    history: list  # the trainer's rows
    seconds: float  # wall-clock of the RL part (held-out evaluations included)
    trainer: TrainerConfig  # as run: steps = iterations · μ
    loss: RLLossConfig  # as run (loss name and mask id filled in)
    state: TrainState  # the trainer's final state (LoRA runs: factors and their optimizer state)
    params: dict  # the trained policy's full parameters (LoRA factors merged), for serving after RL


# regroup(model, sampler config, loss config) -> a RolloutSource regroup_fn (IGPO's inpainting), or None
RegroupFactory = Callable[[Model, DiffusionSamplerConfig, RLLossConfig], Callable]


def train_rl(config, *, mcfg, vocab: dllm.Vocab, sft_params, prompts: PromptSet,
             reward_fn: Callable[[int, np.ndarray], float], heldout_fn: Callable, gen_length: int,
             eval_every_iterations: int = 0, regroup: Optional[RegroupFactory] = None,
             log_bounds: bool = True) -> RLRun:
    """RL from `sft_params` through the one trainer with config.rl (config.loss where the config has one) /
    config.rl_run / config.optim / config.trainer / config.lora: the rollout source (diffusion sampler,
    `reward_fn`, optional `regroup`), LoRA or full fine-tuning, `heldout_fn` as the trainer's eval_fn (step 0,
    every `eval_every_iterations` iterations when > 0, and the last step)."""
    rl_cfg: RLLossConfig = dataclasses.replace(config.rl, loss=getattr(config, "loss", config.rl.loss),
                                               mask_id=vocab.mask)
    settings: RLSettings = config.rl_run
    mu = rl_cfg.inner_steps
    tcfg = dataclasses.replace(config.trainer, steps=settings.iterations * mu, updates_per_batch=mu,
                               eval_every=eval_every_iterations * mu or config.trainer.eval_every)
    check_trainer(tcfg, rl_cfg)
    lora: LoraConfig = config.lora
    model = Model(mcfg, linear=LoraLinear(lora.scale)) if lora.rank else Model(mcfg)
    scfg = DiffusionSamplerConfig(gen_length=gen_length, block_length=settings.sample_block,
                                  steps=settings.sample_steps, mask_id=vocab.mask, temperature=settings.temperature)
    rollout = RolloutConfig(batch_size=settings.prompts_per_batch * rl_cfg.group_size, group_size=rl_cfg.group_size,
                            eos_id=vocab.eos)
    needs_ref = rl_cfg.loss in ONE_STEP_RATIO_LOSSES and rl_cfg.kl_beta > 0
    source = RolloutSource(diffusion_sampler(model, scfg), reward_fn, prompts, rollout, rl_cfg, model=model,
                           ref_params=sft_params if needs_ref else None,
                           regroup_fn=regroup(model, scfg, rl_cfg) if regroup else None, log_bounds=log_bounds)
    start = jax.tree.map(np.asarray, sft_params)  # host copy: init_params is traced by the trainer
    optimizer, axes = config.optim.build(tcfg.steps), logical_axes(mcfg)
    if lora.rank:  # LoRA factors on the SFT weights; only the factors train; evaluation on merged weights
        init = lambda key: add_lora(jax.tree.map(jnp.asarray, start), lora, key)  # noqa: E731
        optimizer, axes = lora_optimizer(optimizer), lora_logical_axes(axes, lora)
        merged = lambda p: merge_lora(p, lora)  # noqa: E731
    else:
        init, merged = (lambda key: jax.tree.map(jnp.asarray, start)), (lambda p: p)
    evaluate = lambda p: heldout_fn(merged(p))  # noqa: E731
    task = make_rl_task(model, rl_cfg, optimizer, source, init, logical_axes=axes, eval_fn=evaluate)
    t0 = time.perf_counter()
    result = train(tcfg, task, f"{config.run_dir}/rl", seed=config.seed)
    return RLRun(result.history, time.perf_counter() - t0, tcfg, rl_cfg, result.state, merged(result.state.params))


def run_rl(config, *, task_name: str, mcfg, vocab: dllm.Vocab, sft_params, prompts: PromptSet,
           reward_fn: Callable[[int, np.ndarray], float], heldout_fn: Callable, gen_length: int,
           extra_summary: Optional[dict] = None) -> dict:
    """RL from `sft_params` (`train_rl`), then summary.json and the reward plot.

    heldout_fn(params) -> dict with "reward" (the reference metric) and more held-out figures; it runs at step 0
    (before) and at the last step (after) as the trainer's eval_fn.
    """
    run = train_rl(config, mcfg=mcfg, vocab=vocab, sft_params=sft_params, prompts=prompts, reward_fn=reward_fn,
                   heldout_fn=heldout_fn, gen_length=gen_length)
    hist, seconds, tcfg, rl_cfg, settings = run.history, run.seconds, run.trainer, run.loss, config.rl_run
    mu = rl_cfg.inner_steps
    before = next(h for h in hist if h["step"] == 0)
    after = hist[-1]
    per_batch = [h for h in hist if "rollout/reward_mean" in h and h["step"] % mu == 0]
    summary = {
        "task": task_name, "loss": rl_cfg.loss, "seed": config.seed,
        "heldout_reward_before": before["eval/reward"], "heldout_reward_after": after["eval/reward"],
        **{f"heldout_{k}_before": before[f"eval/{k}"] for k in _extra_keys(before)},
        **{f"heldout_{k}_after": after[f"eval/{k}"] for k in _extra_keys(after)},
        "iterations": settings.iterations, "updates": tcfg.steps, "seconds": seconds,
        "train_reward_first": per_batch[0]["rollout/reward_mean"] if per_batch else None,
        "train_reward_last5": float(np.mean([h["rollout/reward_mean"] for h in per_batch[-5:]])) if per_batch else None,
        "zero_std_frac_mean": float(np.mean([h["rollout/zero_std_frac"] for h in per_batch])) if per_batch else None,
        "reward_errors_total": after.get("rollout/reward_errors_total"),
        "rl": dataclasses.asdict(rl_cfg), "rl_run": dataclasses.asdict(settings),
        **(extra_summary or {}),
    }
    _plot(per_batch, mu, summary, config.run_dir, task_name)
    write_summary(config.run_dir, summary, f"spg_{task_name} ({rl_cfg.loss}, seed {config.seed})")
    return summary


def _extra_keys(row: dict) -> list[str]:
    return sorted(k[5:] for k in row if k.startswith("eval/") and k != "eval/reward")


def _plot(per_batch: list[dict], mu: int, summary: dict, run_dir: str, task_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    it = [h["step"] // mu for h in per_batch]
    ax.plot(it, [h["rollout/reward_mean"] for h in per_batch], label="rollout reward (mean)", lw=1)
    ax.plot(it, [h["rollout/reward_max"] for h in per_batch], label="rollout reward (max)", lw=0.6, alpha=0.6)
    n = it[-1] if it else 1
    ax.scatter([0, n], [summary["heldout_reward_before"], summary["heldout_reward_after"]], color="k", zorder=3,
               label="held-out (greedy), before / after")
    ax.set_xlabel("RL iteration (rollout batch)")
    ax.set_ylabel("reward")
    ax.set_title(f"spg_{task_name}: {summary['loss']}, seed {summary['seed']}", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, run_dir, "reward")
