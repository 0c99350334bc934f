"""Run directories: config.json, summary.json / summary.md, plots/. Shared by every experiment."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from jaxllm import parallel
from jaxllm.config import ConfigError, to_dict

# Keys that may change when a run is resumed (extending a run is allowed).
RESUMABLE_CHANGES = ("trainer.steps", "run_dir", "steps")


def default_run_dir(exp_name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", exp_name, stamp)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def prepare_run_dir(run_dir: str, config: Any) -> Path:
    """Create `run_dir` and write config.json; an existing run must have the same config (resume)."""
    path = Path(run_dir)
    (path / "plots").mkdir(parents=True, exist_ok=True)
    cfg = to_dict(config)
    cfg_file = path / "config.json"
    if cfg_file.exists():
        old = _flatten(json.loads(cfg_file.read_text()))
        new = _flatten(cfg)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(diff)}); "
                "use another run_dir or the same settings to resume"
            )
    if not parallel.is_main_process():  # the others checked the config; process 0 writes it
        return path
    tmp = cfg_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, cfg_file)  # atomic: a run killed here leaves the old or the new file, never half of one
    return path


def write_summary(run_dir: str | os.PathLike, summary: dict, title: str = "") -> None:
    """summary.json (machine) and summary.md (human) with the run's headline figures (process 0 only)."""
    if not parallel.is_main_process():
        return
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = [f"# {title or path.name}", "", "| figure | value |", "|---|---|"]
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        lines.append(f"| {k} | {v} |")
    (path / "summary.md").write_text("\n".join(lines) + "\n")


def save_figure(fig, run_dir: str | os.PathLike, name: str) -> Path:
    """Save a matplotlib figure to <run_dir>/plots/<name>.png (process 0 only) and close it."""
    import matplotlib.pyplot as plt

    out = Path(run_dir) / "plots" / f"{name}.png"
    if parallel.is_main_process():
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
