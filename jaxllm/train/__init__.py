"""The one trainer and the run-directory helpers."""

from jaxllm.train.checkpoint import CorruptCheckpointWarning
from jaxllm.train.data import batches_or_none, minibatches
from jaxllm.train.metrics import read_metrics
from jaxllm.train.run import prepare_run_dir, save_figure, write_summary
from jaxllm.train.trainer import (
    NonFiniteError,
    Task,
    TrainerConfig,
    TrainResult,
    TrainState,
    init_state,
    log_line,
    make_train_step,
    train,
)

__all__ = [
    "CorruptCheckpointWarning", "batches_or_none", "log_line", "minibatches", "read_metrics",
    "NonFiniteError", "Task", "TrainResult", "TrainState", "TrainerConfig", "init_state", "make_train_step",
    "prepare_run_dir", "save_figure", "train", "write_summary",
]
