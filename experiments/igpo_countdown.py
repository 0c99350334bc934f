"""IGPO RL on 3-number Countdown: all-wrong groups re-sampled with solver-trace hints (inpainting), from the
dllm_countdown_sft start; `igpo.enabled=false` is the same loop without inpainting (same seeds, same compute).

Start: the SFT checkpoint of a `dllm_countdown_sft` run (`init_from=<its run_dir>`), or one trained first in
`<run_dir>/sft_run` with the `sft.*` settings (whose held-out accuracy is only a few per cent, so nearly every
group is all wrong: IGPO's setting). Hints: the solver's trace of each RL problem, `<reasoning>` lines
`</reasoning><answer>` expression `</answer>`, the answer span (from `<answer>` on) never revealed by default
(`igpo.reveal_answer=true`: the public code's last-chunk behaviour). Reward: `countdown_reward` (1 correct,
0.1 well-formed, 0 none; a safe parser); a sample is correct at reward 1. Loss: `igpo` (GRPO token ratio,
clip 0.2, KL 0.01 to the SFT start, prompt never masked) by default; `igpo_gspo`, `igpo_spg_mix` or any other
loss of `jaxllm.rl.losses` with the same regrouping. Logged per iteration: `igpo/all_wrong_share` (before
regrouping), `igpo/rescued_groups`, `igpo/replaced`, `igpo/inpaint_correct`, `igpo/hint_ratio`; held-out
accuracy every `heldout_every` iterations. summary.json: heldout_reward_before / _after, all_wrong_share_first
/ _last, rescued_total, ...

    python -m experiments igpo_countdown init_from=runs/dllm_countdown_sft/<stamp> seed=1
    python -m experiments igpo_countdown init_from=... igpo.enabled=false      # the baseline
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from experiments import _dllm_sft as dllm
from experiments import _spg as spg
from experiments import dllm_countdown_sft as sft_exp
from jaxllm.config import check
from jaxllm.data.tasks import countdown
from jaxllm.optim import build
from jaxllm.rewards import countdown_reward
from jaxllm.rl import LOSSES, RLLossConfig
from jaxllm.rl.igpo import HintTrace, IGPOConfig, IGPORegrouper, diffusion_inpainter
from jaxllm.rl.loop import (
    PromptSet,
)
from jaxllm.rl.lora import LoraConfig
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, write_summary

# IGPO's loss settings (dllm_rl.md §6.2: clip 0.2/0.2, KL β 0.01, prompt never masked, μ = 4) with d1's
# one-step estimator; group 6 as the SPG experiments (the code: 8); SPG's blocks only matter for igpo_spg_mix.
RL_DEFAULT = RLLossConfig(mask_id=2, loss="igpo", group_size=6, clip_eps=0.2, kl_beta=0.01, p_mask_clean=0.0,
                          inner_steps=4, block_length=16, beta=1.5, omega=0.5, num_mask_draws=2)
# The code's layout scaled to a 48-token generation (its 5–10-token chunks and 30 free positions are for 256):
# chunks of 2–4 tokens, the last 6 positions free, gaps stretched by at most 1.5 and capped at 12.
IGPO_DEFAULT = IGPOConfig(chunk_min=2, chunk_max=4, free_tail=6, max_spacing=12, max_scale=1.5)


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    loss: str = "igpo"
    init_from: str = ""  # a dllm_countdown_sft run_dir; empty: train one first in <run_dir>/sft_run
    sft: sft_exp.Config = sft_exp.Config(settings="48:48:lc")
    rl: RLLossConfig = RL_DEFAULT
    igpo: IGPOConfig = IGPO_DEFAULT
    rl_run: spg.RLSettings = spg.RLSettings(iterations=20, temperature=0.9, sample_steps=48, sample_block=48,
                                            eval_steps=48, eval_block=48)
    heldout_every: int = 5  # iterations between held-out evaluations (0: before and after only)
    rl_prompts: str = "train"  # train: the SFT training problems; unseen: fresh problems with numbers up to
    # rl_max_number whose (numbers, target) pair is in neither the SFT training set nor the held-out set
    rl_max_number: int = 0  # unseen only; 0: sft.max_number (whose pairs the SFT and held-out sets nearly exhaust)
    optim: build.OptimizerConfig = spg.RL_OPTIM
    lora: LoraConfig = LoraConfig()
    trainer: TrainerConfig = spg.RL_TRAINER

    def __post_init__(self):
        check(self.loss in LOSSES, f"loss={self.loss!r} is not one of {sorted(LOSSES)}")
        check(self.sft.gen_length % self.rl.block_length == 0,
              f"rl.block_length={self.rl.block_length} must divide sft.gen_length={self.sft.gen_length}")
        check(self.heldout_every >= 0, f"heldout_every must be ≥ 0, got {self.heldout_every}")
        check(self.rl_prompts in ("train", "unseen"), f"rl_prompts={self.rl_prompts!r} must be train or unseen")


def countdown_hint(vocab: dllm.Vocab, item) -> HintTrace:
    """The solver's completion as token ids; the answer span starts at the `<answer>` tag."""
    reasoning, expr = countdown.reasoning_trace(item.numbers, item.target)
    head = vocab.encode(["<reasoning>", reasoning, "</reasoning>"])
    return HintTrace(np.array(head + vocab.encode(["<answer>", expr, "</answer>"]), np.int32), len(head))


def run_igpo(config, *, task_name: str, mcfg, vocab: dllm.Vocab, sft_params, prompts: PromptSet,
             reward_fn: Callable[[int, np.ndarray], float], hints: Callable[[int], Optional[HintTrace]],
             heldout_fn: Callable, gen_length: int, extra_summary: Optional[dict] = None) -> dict:
    """RL from `sft_params` through the one loop, with IGPO's regrouping (config.igpo) as its regroup_fn.

    The run is `experiments._spg.train_rl` (the SPG experiments' loop, SFT start and held-out protocol) with
    IGPO's regroup_fn; only the summary and the plot are IGPO's."""
    def regroup(model, scfg, rl_cfg):
        return IGPORegrouper(config.igpo, model=model, mask_id=vocab.mask, gen_length=gen_length,
                             group_size=rl_cfg.group_size, inpaint_fn=diffusion_inpainter(model, scfg),
                             reward_fn=reward_fn, hints=hints, eos_id=vocab.eos, prompt_lengths=prompts.lengths)

    run = spg.train_rl(config, mcfg=mcfg, vocab=vocab, sft_params=sft_params, prompts=prompts, reward_fn=reward_fn,
                       heldout_fn=heldout_fn, gen_length=gen_length, eval_every_iterations=config.heldout_every,
                       regroup=regroup, log_bounds=False)
    hist, seconds, tcfg, rl_cfg, settings = run.history, run.seconds, run.trainer, run.loss, config.rl_run
    mu = rl_cfg.inner_steps
    before = next(h for h in hist if h["step"] == 0 and "eval/reward" in h)
    after = hist[-1]
    per_batch = [h for h in hist if "igpo/all_wrong_share" in h and h["step"] % mu == 0]
    heldout = [(h["step"] // mu, h["eval/reward"]) for h in hist if "eval/reward" in h]
    col = lambda k: [h[k] for h in per_batch]  # noqa: E731
    summary = {
        "task": task_name, "loss": rl_cfg.loss, "igpo_enabled": config.igpo.enabled, "seed": config.seed,
        "heldout_reward_before": before["eval/reward"], "heldout_reward_after": after["eval/reward"],
        **{f"heldout_{k}_before": before[f"eval/{k}"] for k in spg._extra_keys(before)},
        **{f"heldout_{k}_after": after[f"eval/{k}"] for k in spg._extra_keys(after)},
        "heldout_curve": heldout,
        "all_wrong_share_first": per_batch[0]["igpo/all_wrong_share"] if per_batch else None,
        "all_wrong_share_last": per_batch[-1]["igpo/all_wrong_share"] if per_batch else None,
        "all_wrong_share_mean": float(np.mean(col("igpo/all_wrong_share"))) if per_batch else None,
        "all_wrong_share_after_regroup_mean": float(np.mean(col("igpo/all_wrong_share_after"))) if per_batch else None,
        "triggered_total": float(np.sum(col("igpo/triggered_groups"))),
        "rescued_total": float(np.sum(col("igpo/rescued_groups"))),
        "replaced_total": float(np.sum(col("igpo/replaced"))),
        "inpainted_total": float(np.sum(col("igpo/inpainted"))),
        "inpaint_correct_total": float(np.sum(col("igpo/inpaint_correct"))),
        "hint_ratio_mean": float(np.mean([h["igpo/hint_ratio"] for h in per_batch if h["igpo/inpainted"] > 0]))
        if any(h["igpo/inpainted"] > 0 for h in per_batch) else None,  # over the iterations that inpainted
        "train_reward_first": per_batch[0]["rollout/reward_mean"] if per_batch else None,
        "train_reward_last5": float(np.mean(col("rollout/reward_mean")[-5:])) if per_batch else None,
        "iterations": settings.iterations, "updates": tcfg.steps, "seconds": seconds,
        "per_iteration": [{k: h.get(k) for k in ("step", "igpo/all_wrong_share", "igpo/all_wrong_share_after",
                                                 "igpo/triggered_groups", "igpo/rescued_groups", "igpo/replaced",
                                                 "igpo/inpaint_correct", "igpo/hint_ratio", "rollout/reward_mean",
                                                 "rollout/sample_s", "igpo/inpaint_s", "igpo/entropy_s")}
                          for h in per_batch],
        "rl": dataclasses.asdict(rl_cfg), "igpo": dataclasses.asdict(config.igpo),
        "rl_run": dataclasses.asdict(settings), **(extra_summary or {}),
    }
    _plot(per_batch, heldout, mu, summary, config.run_dir, task_name)
    write_summary(config.run_dir, summary, f"igpo_{task_name} ({rl_cfg.loss}, igpo {config.igpo.enabled}, "
                                           f"seed {config.seed})")
    return summary


def _plot(per_batch, heldout, mu, summary, run_dir, task_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    it = [h["step"] // mu for h in per_batch]
    a.plot(it, [h["igpo/all_wrong_share"] for h in per_batch], label="all-wrong groups (sampled)")
    a.plot(it, [h["igpo/all_wrong_share_after"] for h in per_batch], label="all-wrong groups (after regroup)")
    a.set_xlabel("RL iteration")
    a.set_ylabel("share of groups")
    a.legend(fontsize=7)
    if heldout:
        b.plot(*zip(*heldout), marker="o")
    b.set_xlabel("RL iteration")
    b.set_ylabel("held-out accuracy (greedy)")
    fig.suptitle(f"igpo_{task_name}: {summary['loss']}, igpo {summary['igpo_enabled']}, seed {summary['seed']}",
                 fontsize=9)
    save_figure(fig, run_dir, "igpo")


def countdown_setup(config):
    """(sft run dir, vocab, SFT params, SFT step, train items, held-out items, pack) of a Countdown IGPO run."""
    sft_dir = config.init_from or f"{config.run_dir}/sft_run"
    if not config.init_from and not (Path(sft_dir) / "summary.json").exists():
        sft_exp.run(dataclasses.replace(config.sft, run_dir=sft_dir))
    s = config.sft
    vocab = dllm.Vocab(sft_exp.CHARS)
    params, sft_step = spg.load_sft_params(sft_dir, s.model, s.optim, s.trainer.steps)
    train_items, test = sft_exp._items(s)
    if config.rl_prompts == "unseen":  # pairs the SFT model never saw, disjoint from the held-out pairs too
        pair = lambda it: (tuple(sorted(it.numbers)), it.target)  # noqa: E731
        seen = {pair(it) for it in train_items} | {pair(it) for it in test}
        fresh = countdown.generate(s.seed + 1000, max(2 * config.rl_run.n_prompts, 400), num_count=3,
                                   number_range=(1, config.rl_max_number or s.max_number),
                                   target_range=(1, s.max_target))
        train_items = [it for it in fresh if pair(it) not in seen]
        check(len(train_items) >= config.rl_run.prompts_per_batch,
              f"only {len(train_items)} unseen problems for prompts_per_batch={config.rl_run.prompts_per_batch}")
    train_items = train_items[: config.rl_run.n_prompts]
    return sft_dir, vocab, params, sft_step, train_items, test


def run(config: Config, task_name: str = "countdown") -> dict:
    prepare_run_dir(config.run_dir, config)
    sft_dir, vocab, params, sft_step, train_items, test = countdown_setup(config)
    s = config.sft
    pack = lambda items: dllm.pack(vocab, [sft_exp._prompt(vocab, it) for it in items], [[] for _ in items],  # noqa: E731
                                   s.prompt_len, s.gen_length)[:, : s.prompt_len]
    prompts = PromptSet(pack(train_items))
    hint_cache: dict[int, HintTrace] = {}

    def hints(i):
        if i not in hint_cache:
            hint_cache[i] = countdown_hint(vocab, train_items[i])
        return hint_cache[i]

    def reward_fn(i, completion):
        return countdown_reward(vocab.decode(completion), train_items[i].numbers, train_items[i].target)

    def score(i, text):
        return countdown_reward(text, test[i].numbers, test[i].target)

    evaluate = spg.greedy_eval(s.model, vocab, pack(test), s.gen_length, config.rl_run.eval_steps,
                               config.rl_run.eval_block, score)

    def heldout(p):
        sc = np.array(evaluate(p))
        return {"reward": float(np.mean(sc == 1.0)), "well_formed": float(np.mean(sc >= 0.1))}

    return run_igpo(config, task_name=task_name, mcfg=s.model, vocab=vocab, sft_params=params, prompts=prompts,
                    reward_fn=reward_fn, hints=hints, heldout_fn=heldout, gen_length=s.gen_length,
                    extra_summary={"init_from": sft_dir, "sft_step": sft_step, "metric": "accuracy"})
