"""orbax CheckpointManager saving params, optimizer state, step, RNG and the data iterator state together.

A checkpoint that fails to restore (truncated, corrupt, or whose values differ from the fingerprint saved
with it) is reported by name (a CorruptCheckpointWarning), moved aside to `<dir>/corrupt-<step>-<time>`
(never overwritten or deleted) and the previous one is used.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be restored; it was moved aside and an older one is used."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint restored, but its contents differ from what was saved (fingerprint mismatch)."""


def fingerprint(tree: Any) -> list[int]:
    """CRC32 of every leaf's bytes (read to host one leaf at a time). orbax stores no checksum, and a garbled
    data chunk would otherwise restore silently with wrong values."""
    out = []
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(zlib.crc32(np.ascontiguousarray(jax.device_get(leaf))))
    return out


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
        meta = {**(meta or {}), "fingerprint": fingerprint(state)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
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
                if "fingerprint" in meta and fingerprint(restored["state"]) != list(meta["fingerprint"]):
                    raise CorruptCheckpointError("restored values differ from the saved fingerprint")
                return step, restored["state"], dict(restored["data"] or {}), meta
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
        if src.exists():
            shutil.move(str(src), str(dst))
        self._manager = self._make_manager()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
