"""SPG RL on 3-number Countdown: RL (spg_mix | spg_eubo | spg_elbo | d1 | wd1) from the dllm_countdown_sft start.

Start: the SFT checkpoint of a `dllm_countdown_sft` run (`init_from=<its run_dir>`), or one trained first
inside this command under `<run_dir>/sft_run` with the `sft.*` settings. RL prompts: the SFT training
problems; reward: `countdown_reward` (1 correct, 0.1 well-formed but wrong, 0 no answer; a safe arithmetic
parser, never `eval`). Held-out evaluation before and after: greedy low-confidence sampling of the held-out
problems (no (numbers, target) pair seen in training), scored as the reference's exact-answer accuracy (share
of reward 1.0). summary.json: heldout_reward_before / _after (accuracy), loss, iterations, seconds, ...

The default `sft` is dllm_countdown_sft's (numbers 1–6, targets 1–30), whose start is only ≈ 2–7% accurate:
its 7215 training problems hold just 292 distinct (numbers, target) pairs, and every held-out pair is unseen,
so the tiny model has to generalise arithmetic from few examples. Making this setting learnable (a larger
model, more SFT, more distinct pairs) is left open; see docs/results/spg.md.

    python -m experiments spg_countdown loss=wd1 init_from=runs/dllm_countdown_sft/<stamp>
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np

from experiments import _dllm_sft as dllm
from experiments import _spg as spg
from experiments import dllm_countdown_sft as sft_exp
from jaxllm.optim import build
from jaxllm.rewards import countdown_reward
from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import PromptSet
from jaxllm.rl.lora import LoraConfig
from jaxllm.train import TrainerConfig, prepare_run_dir

# SPG's Countdown settings (dllm_rl.md §5.4): mixture β = 1.5 (EUBO-only runs used 2.0), ω = 0.5, m = 2,
# μ = 4, group 6; masking blocks of 16 over the 48-token generation (3 blocks).
RL_DEFAULT = RLLossConfig(mask_id=2, group_size=6, beta=1.5, omega=0.5, num_mask_draws=2, block_length=16,
                          p_mask_clean=0.15, inner_steps=4)
SFT_DEFAULT = sft_exp.Config(settings="48:48:lc")


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    init_from: str = ""  # a dllm_countdown_sft run_dir; empty: train one first in <run_dir>/sft_run
    sft: sft_exp.Config = SFT_DEFAULT
    rl: RLLossConfig = RL_DEFAULT
    rl_run: spg.RLSettings = spg.RLSettings(temperature=0.9, sample_steps=48, sample_block=48, eval_steps=48,
                                            eval_block=48)
    optim: build.OptimizerConfig = spg.RL_OPTIM
    lora: LoraConfig = LoraConfig()
    trainer: TrainerConfig = spg.RL_TRAINER

    ALIASES: ClassVar[dict] = spg.ALIASES  # loss= is rl.loss (spg_mix | spg_eubo | spg_elbo | d1 | wd1)

    def __post_init__(self):
        spg.check_config(self)


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    sft_dir = config.init_from or f"{config.run_dir}/sft_run"
    if not config.init_from and not (Path(sft_dir) / "summary.json").exists():
        sft_exp.run(dataclasses.replace(config.sft, run_dir=sft_dir))
    s = config.sft
    vocab = dllm.Vocab(sft_exp.CHARS)
    params, sft_step = spg.load_sft_params(sft_dir, s.model, s.optim, s.trainer.steps)
    train_items, test = sft_exp._items(s)  # the SFT run's own problems and held-out split
    train_items = train_items[: config.rl_run.n_prompts]
    pack = lambda items: dllm.pack(vocab, [sft_exp._prompt(vocab, it) for it in items], [[] for _ in items],  # noqa: E731
                                   s.prompt_len, s.gen_length)[:, : s.prompt_len]
    prompts = PromptSet(pack(train_items))  # left-padded with PAD, seen by the model as in SFT

    def reward_fn(i, completion):
        return countdown_reward(vocab.decode(completion), train_items[i].numbers, train_items[i].target)

    def score(i, text):
        return countdown_reward(text, test[i].numbers, test[i].target)

    evaluate = spg.greedy_eval(s.model, vocab, pack(test), s.gen_length, config.rl_run.eval_steps,
                               config.rl_run.eval_block, score)

    def heldout(p):
        sc = np.array(evaluate(p))
        return {"reward": float(np.mean(sc == 1.0)), "well_formed": float(np.mean(sc >= 0.1)),
                "mean_reward": float(np.mean(sc))}

    return spg.run_rl(config, task_name="countdown", mcfg=s.model, vocab=vocab, sft_params=params, prompts=prompts,
                      reward_fn=reward_fn, heldout_fn=heldout, gen_length=s.gen_length,
                      extra_summary={"init_from": sft_dir, "sft_step": sft_step, "metric": "accuracy"})
