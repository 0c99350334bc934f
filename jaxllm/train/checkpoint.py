"""orbax CheckpointManager saving params, optimizer state, step, RNG and the batch source's host state (the
data iterator's position, or a BatchSource's get_state()) together.

`resume` is the trainer's restart: the newest checkpoint that restores gives the state and the batch source's
host state, and metrics.jsonl is cut back to its step.

A checkpoint that fails to restore (truncated, corrupt, or whose values differ from the fingerprint saved
with it) is reported by name (a CorruptCheckpointWarning), moved aside to `<dir>/corrupt-<step>-<time>`
(never overwritten or deleted) and the previous one is used.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from jaxllm import parallel
from jaxllm.config import ConfigError
from jaxllm.train.metrics import MetricsWriter
from jaxllm.train.source import set_source_state


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be restored; it was moved aside and an older one is used."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint restored, but its contents differ from what was saved (fingerprint mismatch)."""


def fingerprint(tree: Any) -> list[int]:
    """One uint32 per leaf: sum over its 32-bit words w_i of w_i · (2i + 1) mod 2^32, computed on the devices
    (jitted, so a sharded leaf is reduced where it lives and only a scalar reaches the host; a process needs no
    leaf it cannot address). orbax stores no checksum, and a garbled data chunk would otherwise restore
    silently with wrong values. Integer sums are exact, so the value is the same in every mesh layout (a
    checkpoint saved on 2 processes and restored on 1 checks against it), and an odd weight changes the sum
    whenever any single word changes."""
    leaves = [jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
              for x in jax.tree.leaves(tree)]
    return [int(v) for v in jax.device_get(_leaf_sums(leaves))]


@jax.jit
def _leaf_sums(leaves: list) -> list:
    return [_word_sum(x) for x in leaves]


def _word_sum(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    elif x.dtype.itemsize in (4, 8):  # a 64-bit element gives two words (a trailing axis of 2)
        words = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:  # 8- and 16-bit types: one word per element
        words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(words.ndim)):  # the flat (row-major) index of each word
        index = index + jax.lax.broadcasted_iota(jnp.uint32, words.shape, d) * jnp.uint32(stride % 2**32)
        stride *= words.shape[d]
    return jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


# meta key of `fingerprint` (checkpoints with an older key, CRC32 of host copies, restore unchecked)
FINGERPRINT_KEY = "word_sums"


def _all_processes(data_state: dict) -> list[dict]:
    """Every process's batch-source state, in process order, on every process (each process has its own data
    position when it reads its own shard; orbax writes JSON items from process 0 only)."""
    if jax.process_count() == 1:
        return [data_state]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    length = int(np.max(multihost_utils.process_allgather(np.asarray([raw.size], np.int32))))
    padded = np.zeros(length, np.uint8)
    padded[:raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), length)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gathered]


def _this_process(data: dict, where: Path) -> dict:
    """This process's batch-source state from a checkpoint's data item. The same checkpoint restores with
    another process count when every process had the same state (each read the whole batch)."""
    if "processes" not in data:  # written before per-process states: one state for all
        return data
    states = data["processes"]
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    if all(s == states[0] for s in states):
        return states[0]
    raise ConfigError(f"checkpoint {where} holds the data positions of {len(states)} processes that each read "
                      f"their own shard; resume it with {len(states)} processes, not {jax.process_count()}")


class Checkpointer:
    """Keeps the last `keep` checkpoints and, when `best_metric` is set, the best one by that metric."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, best_metric: Optional[str] = None,
                 best_mode: str = "min", async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.keep, self.best_metric, self.best_mode, self.async_save = keep, best_metric, best_mode, async_save
        self.corrupt: list[str] = []
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        policies = [cm.LatestN(self.keep)]
        if self.best_metric:
            policies.append(cm.BestN(
                get_metric_fn=lambda m: m[self.best_metric], reverse=self.best_mode == "min", n=1,
                keep_checkpoints_without_metrics=False,
            ))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            enable_async_checkpointing=self.async_save,
            create=True,
            cleanup_tmp_directories=True,  # unfinished saves of a killed run (never a finished checkpoint)
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Optional[dict] = None, metrics: Optional[dict] = None,
             meta: Optional[dict] = None) -> None:
        meta = {**(meta or {}), FINGERPRINT_KEY: fingerprint(state)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave({"processes": _all_processes(data_state or {})}),
            meta=ocp.args.JsonSave(meta),
        )
        if self.best_metric and (metrics is None or self.best_metric not in metrics):
            metrics = None
        self._manager.save(step, args=args, metrics=metrics, force=True)

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict, dict]]:
        """(step, state, data_state, meta) of the newest checkpoint that restores, or None if there is none."""
        self._manager.wait_until_finished()
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ))
                meta = dict(restored["meta"] or {})
                if FINGERPRINT_KEY in meta and fingerprint(restored["state"]) != list(meta[FINGERPRINT_KEY]):
                    raise CorruptCheckpointError("restored values differ from the saved fingerprint")
                data = _this_process(dict(restored["data"] or {}), self.directory / str(step))
                return step, restored["state"], data, meta
            except ConfigError:
                raise  # a readable checkpoint this run cannot use: not corruption
            except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                self._quarantine(step, e)
        return None

    def _quarantine(self, step: int, error: Exception) -> None:
        src = self.directory / str(step)
        dst = self.directory / f"corrupt-{step}-{int(time.time())}"
        msg = f"checkpoint {src} cannot be restored ({type(error).__name__}: {str(error)[:200]}); moved to {dst}"
        warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
        self.corrupt.append(str(src))
        self._manager.close()
        # Every process fails on the same checkpoint (they read the same files); one moves it, after the
        # others stopped reading and before any of them lists the directory again.
        parallel.barrier(f"quarantine-{step}-before")
        if parallel.is_main_process() and src.exists():
            shutil.move(str(src), str(dst))
        parallel.barrier(f"quarantine-{step}-after")
        self._manager = self._make_manager()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def resume(ckpt: Checkpointer, writer: MetricsWriter, state: Any, source: Callable, updates_per_batch: int,
           run_dir: str) -> tuple[Any, Optional[int]]:
    """(state, step resumed from or None). `state` is the fresh initial state: it gives the abstract shapes and
    shardings to restore onto, and is returned as is when there is no checkpoint. Metric rows after the
    restored step (or all rows, without a checkpoint) are dropped so that every step is logged once."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = ckpt.restore_latest(abstract)
    if restored is None:
        dropped = writer.truncate_after(-1)
        if dropped and parallel.is_main_process():
            print(f"no checkpoint in {run_dir}: starting from step 0 ({dropped} old metric rows dropped)", flush=True)
        return state, None
    step, tree, data_state, _ = restored
    if step % updates_per_batch:
        raise ConfigError(f"checkpoint step {step} in {ckpt.directory} is not a multiple of "
                          f"trainer.updates_per_batch={updates_per_batch}: it was written with another value; "
                          "resume with the run's own setting")
    set_source_state(source, data_state)
    dropped = writer.truncate_after(step)
    if parallel.is_main_process():
        print(f"resumed from checkpoint step {step} in {run_dir} ({dropped} later metric rows dropped)", flush=True)
    return type(state)(*tree), step
