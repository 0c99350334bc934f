"""Metrics to `metrics.jsonl` and TensorBoard from one place; progress bar as a hook."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if hasattr(v, "shape") and getattr(v, "shape", None) == ():
        v = np.asarray(v).item()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # 'nan' / 'inf' as strings: JSON has no non-finite numbers
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All complete JSON lines of a metrics file (a torn last line from a kill is ignored)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _summary_writer_class():
    """tensorboardX.SummaryWriter, imported without dragging in torch (tensorboardX imports torch when it is
    installed, only to recognise torch tensors; that costs a second at every start). Torch is hidden just for
    that import and stays importable afterwards."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    `truncate_after(step)` drops lines logged after the checkpoint a resumed run restarts from, so the file
    ends with no duplicated or missing step.

    enabled=False (every process but process 0 of a multi-process run, whose rows are the same): writes
    nothing, neither file nor TensorBoard.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            self._tb = _summary_writer_class()(str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> int:
        """Keep rows with step <= `step`; return how many rows were dropped."""
        if not self.enabled:
            return 0
        rows = read_metrics(self.path)
        kept = [r for r in rows if r.get("step", -1) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        return len(rows) - len(kept)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


class ProgressBar:
    """tqdm progress hook (steps/s, loss); silent when stderr is not a terminal unless forced."""

    def __init__(self, total: int, initial: int = 0, enabled: Optional[bool] = None):
        enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, dynamic_ncols=True, unit="step")

    @property
    def active(self) -> bool:
        return self._bar is not None

    def __call__(self, step: int, metrics: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.n = step
        if "loss" in metrics:
            self._bar.set_postfix(loss=f"{float(metrics['loss']):.4g}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class NonFiniteError(RuntimeError):
    """Raised when a metric becomes NaN or infinite; names the step and the metric."""


def non_finite_keys(metrics: dict[str, Any]) -> list[str]:
    """Names of the metrics that are non-finite numbers, `loss` first."""
    bad = [k for k, v in metrics.items()
           if isinstance(v, (float, int, np.floating)) and not isinstance(v, bool) and not math.isfinite(float(v))]
    return sorted(bad, key=lambda k: k != "loss")


def non_finite(metrics: dict[str, Any]) -> Optional[str]:
    """Name of the offending metric (`loss` if it is non-finite, else the first non-finite one), or None."""
    bad = non_finite_keys(metrics)
    return bad[0] if bad else None


def last_step(rows: Iterable[dict]) -> int:
    return max((r.get("step", -1) for r in rows), default=-1)
