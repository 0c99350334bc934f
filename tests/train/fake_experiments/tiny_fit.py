"""Tiny regression fit (tests only): exercises the CLI, run_dir layout and resume in seconds.

Lives under tests/ (not experiments/); the CLI test appends this folder to `experiments.__path__`.
"""

from __future__ import annotations

import dataclasses

from jaxllm.config import check
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, train, write_summary


@dataclasses.dataclass(frozen=True)
class Config:
    batch_size: int = 8
    lr: float = 1e-2
    seed: int = 0
    trainer: TrainerConfig = TrainerConfig(steps=6, log_every=2, eval_every=3, checkpoint_every=3, progress=False)
    run_dir: str = ""

    def __post_init__(self):
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")


def run(config: Config) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tests.train.helpers import regression_task

    prepare_run_dir(config.run_dir, config)
    result = train(config.trainer, regression_task(config.batch_size, config.seed, config.lr), config.run_dir,
                   seed=config.seed)
    rows = [r for r in result.history if "loss" in r]
    fig, ax = plt.subplots()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    save_figure(fig, config.run_dir, "loss")
    summary = {"final_loss": rows[-1]["loss"], "steps": result.history[-1]["step"],
               "resumed_from": result.resumed_from}
    write_summary(config.run_dir, summary, title="tiny fit")
    return summary
