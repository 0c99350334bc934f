"""The one trainer and the run-directory helpers."""

from jaxllm.train.run import prepare_run_dir, save_figure, write_summary
from jaxllm.train.trainer import (
    NonFiniteError,
    Task,
    TrainerConfig,
    TrainResult,
    TrainState,
    init_state,
    make_train_step,
    train,
)

__all__ = [
    "NonFiniteError", "Task", "TrainResult", "TrainState", "TrainerConfig", "init_state", "make_train_step",
    "prepare_run_dir", "save_figure", "train", "write_summary",
]
