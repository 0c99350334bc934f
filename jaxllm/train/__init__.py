"""The one trainer and the run-directory helpers."""

from jaxllm.data.batching import batches_or_none, minibatches  # re-exported: the trainer's usual batch source
from jaxllm.train.checkpoint import CorruptCheckpointWarning
from jaxllm.train.metrics import NonFiniteError, read_metrics
from jaxllm.train.run import prepare_run_dir, save_figure, write_summary
from jaxllm.train.source import BatchSource, SourceBatch, batch_key, host_rng, update_key
from jaxllm.train.trainer import (
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
    "BatchSource", "CorruptCheckpointWarning", "SourceBatch", "batch_key", "batches_or_none", "host_rng",
    "log_line", "minibatches", "read_metrics", "NonFiniteError", "Task", "TrainResult", "TrainState",
    "TrainerConfig", "init_state", "make_train_step", "prepare_run_dir", "save_figure", "train", "update_key",
    "write_summary",
]
