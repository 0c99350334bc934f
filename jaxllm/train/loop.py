"""The small pieces `train` calls: which steps log / evaluate / checkpoint (`Schedule`), and the metric rows
(`Reporter`: train metrics read one step late, host metrics of the batch, log_fn / eval_fn diagnostics,
per-phase seconds, hooks, and the non-finite check)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterable, Optional

import jax

from jaxllm.train.metrics import MetricsWriter, NonFiniteError, non_finite, non_finite_keys
from jaxllm.train.source import FullBatch, IteratorSource, batch_key, split_output


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step s (1-based) is the s-th update; every count is in updates. Batch b feeds updates
    b·μ+1 .. (b+1)·μ, so step s starts a batch when (s-1) % μ == 0."""

    steps: int
    updates_per_batch: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    params_at_log: bool  # a log_fn needs the parameters of the log step itself
    params_at_eval: bool  # an eval_fn needs the parameters of the eval step itself

    def starts_batch(self, s: int) -> bool:
        return (s - 1) % self.updates_per_batch == 0

    def batch_index(self, s: int) -> int:
        return (s - 1) // self.updates_per_batch

    def evaluates(self, s: int) -> bool:
        return s == self.steps or bool(self.eval_every and s % self.eval_every == 0)

    def logs(self, s: int) -> bool:
        return s % self.log_every == 0 or self.evaluates(s)

    def checkpoints(self, s: int) -> bool:
        return s % self.checkpoint_every == 0 or s == self.steps

    def syncs(self, s: int) -> bool:
        """Whether step s's metrics are read at once (before the next dispatch, which donates the state):
        checkpoints, and log / eval steps whose diagnostics need that step's parameters."""
        return (self.checkpoints(s) or (self.params_at_eval and self.evaluates(s))
                or (self.params_at_log and self.logs(s)))


@dataclasses.dataclass
class Pending:
    """An update's outputs not read yet: its step, device metrics and its batch's host metrics."""

    step: int
    metrics: dict
    host: dict


class Reporter:
    """Builds, checks and writes the metric rows; times the phases between rows.

    perf/batch_s, perf/host_s and perf/update_s split the wall time since the previous row: inside the batch
    source, in log_fn / eval_fn / checkpoint saves (a save counts in the next row), and the rest (dispatching
    and waiting for the updates, reading metrics, writing rows); they sum to that wall time. A source that
    reads the state is called once the previous update is done and its metrics read, so its seconds exclude
    the updates and count in the row of its batch's steps. A plain iterator is read while the device works
    (overlapping the updates), and a late row also counts the next batch's read.
    """

    def __init__(self, writer: MetricsWriter, hooks: Iterable[Callable], schedule: Schedule,
                 log_fn: Optional[Callable], eval_fn: Optional[Callable], start: int):
        self.writer, self.hooks, self.schedule = writer, list(hooks), schedule
        self.log_fn, self.eval_fn = log_fn, eval_fn
        self._t_row, self._s_row = time.perf_counter(), start
        self._batch_s = self._host_s = 0.0

    @contextlib.contextmanager
    def host_time(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self._host_s += time.perf_counter() - t

    def fetch(self, source: Callable, state: Any, s: int) -> tuple[Any, dict]:
        """The batch for the updates starting at step s, and the source's host metrics for it."""
        if getattr(source, "uses_state", True):
            jax.block_until_ready(state)  # the source reads the state: wait here, not inside its timer
        builtin = isinstance(source, (IteratorSource, FullBatch))  # they ignore the key: no dispatch for it
        key = None if builtin else batch_key(state.rng, self.schedule.batch_index(s))
        t = time.perf_counter()
        batch, host = split_output(source(state, key))
        self._batch_s += time.perf_counter() - t
        return batch, host

    def initial_row(self, params: Any) -> None:
        """Step 0: the diagnostics of the initial parameters (no train metrics, no perf)."""
        row = self._diagnostics(0, params, evaluate=True)
        self.writer.write(0, row)
        self._t_row, self._host_s = time.perf_counter(), 0.0  # step 1's row times from here

    def finish(self, p: Pending, params: Any = None) -> tuple[Optional[dict], Optional[str]]:
        """Read step p.step's metrics, check them, write its row if it is a log or eval step or non-finite.
        `params` (that step's parameters, for log_fn / eval_fn) is given when the step synced.

        Returns (row or None, name of the first non-finite metric or None)."""
        metrics = {k: float(v) for k, v in jax.device_get(p.metrics).items()}
        clash = sorted(set(metrics) & set(p.host))
        if clash:
            raise ValueError(f"the batch source's metrics {clash} have the names of train metrics; rename them")
        values = {**metrics, **p.host}
        bad = non_finite(values)
        if bad is None and not self.schedule.logs(p.step):
            return None, None
        row = dict(values)
        if params is not None:
            row.update(self._diagnostics(p.step, params, evaluate=self.schedule.evaluates(p.step) and bad is None))
        row.update(self._perf(p.step))
        self.writer.write(p.step, row)
        for h in self.hooks:
            h(p.step, row)
        return row, bad or non_finite(row)

    def _diagnostics(self, step: int, params: Any, evaluate: bool) -> dict:
        row = {}
        with self.host_time():
            if self.log_fn is not None:
                row.update(self.log_fn(params, step))
            if evaluate and self.eval_fn is not None:
                row.update({f"eval/{k}": v for k, v in self.eval_fn(params).items()})
        return row

    def _perf(self, step: int) -> dict:
        now = time.perf_counter()
        wall = max(now - self._t_row, 1e-9)
        perf = {"perf/steps_per_s": (step - self._s_row) / wall, "perf/batch_s": self._batch_s,
                "perf/host_s": self._host_s, "perf/update_s": max(wall - self._batch_s - self._host_s, 0.0)}
        self._t_row, self._s_row = now, step
        self._batch_s = self._host_s = 0.0
        return perf


def non_finite_error(step: int, row: dict, bad: str, last_good: Optional[int], ckpt_dir: str) -> NonFiniteError:
    others = [k for k in non_finite_keys(row) if k != bad]
    also = f" (also non-finite: {', '.join(others)})" if others else ""
    return NonFiniteError(f"non-finite metric {bad!r} = {row[bad]} at step {step}{also}; stopped, last good "
                          f"checkpoint: {last_good} in {ckpt_dir}")
