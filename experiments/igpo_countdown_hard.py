"""IGPO RL on harder 3-number Countdown: RL prompts with numbers 1–9 and pairs the SFT start never saw.

The same experiment as `igpo_countdown` (same SFT start, hints, loss and logging; see its docstring) with
`rl_prompts="unseen"`, `rl_max_number=9`: the RL problems are fresh ones with numbers 1–9 (the SFT data has
1–6; with 1–6 the SFT and held-out sets hold nearly every (numbers, target) pair) whose pair is in neither the
SFT training set nor the held-out set. The held-out set is dllm_countdown_sft's (numbers 1–6). Nearly every group is all wrong at the start, IGPO's setting; rescue needs the model to finish a correct
expression from a partial solver trace.

    python -m experiments igpo_countdown_hard init_from=runs/dllm_countdown_sft/<stamp> igpo.enabled=false
"""

from __future__ import annotations

import dataclasses

from experiments import igpo_countdown as base


@dataclasses.dataclass(frozen=True)
class Config(base.Config):
    rl_prompts: str = "unseen"
    rl_max_number: int = 9


def run(config: Config) -> dict:
    return base.run(config, task_name="countdown_hard")
