"""The composition evidence of issue 20: `compose_sudoku` for the baseline, each part alone and all parts together, over seeds.

Rows (each a `compose_sudoku` run per seed, in <run_dir>/<row>/seed<s>, resumable: a finished row is read back):

    baseline          optimizer=adamw  rl.loss=none      serve.method=dense            vote=majority
    galore2           optimizer=<optimizer>                                            (the others as baseline)
    rl                rl.loss=<rl>
    sparse            serve.method=<serve> serve.sparsity=<sparsity>
    deepconf          vote=<vote>
    sparse+deepconf   both (the interference the issue names: sparse serving changes the confidences DeepConf reads)
    all               every part on

Every row of a seed shares its SFT with the other rows of the same optimizer family (`init_from`), so its
train_seconds are that SFT's seconds plus its own RL seconds. Seeds set both the SFT seed (data order,
initialisation, the held-out puzzles) and the RL / serving seed. The table (summary.md / table.md) gives the
mean and [min, max] over seeds of held-out cell accuracy (voted, one trace, plain majority of the same traces),
generated tokens, training seconds, optimizer-state bytes and serving seconds per problem, and each row's
paired difference from the baseline (same seed) next to the sum of its parts' differences.

    python -m experiments compose_sudoku_table                         # 3 seeds, 7 rows: ~1 h on one core
    python -m experiments compose_sudoku_table seeds=0 rows=baseline,all base.sft.trainer.steps=100
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from experiments import compose_sudoku as cs
from jaxllm.config import check, comma_list
from jaxllm.train import prepare_run_dir, write_summary

ROW_PARTS = {  # row -> the switches it turns on
    "baseline": (),
    "galore2": ("optimizer",),
    "rl": ("rl",),
    "sparse": ("serve",),
    "deepconf": ("vote",),
    "sparse+deepconf": ("serve", "vote"),
    "all": ("optimizer", "rl", "serve", "vote"),
}
SINGLE_ROWS = {"optimizer": "galore2", "rl": "rl", "serve": "sparse", "vote": "deepconf"}
FIGURES = ("heldout_acc", "heldout_acc_single", "heldout_acc_majority", "tokens_generated", "train_seconds",
           "optimizer_state_bytes", "serve_seconds_per_problem")


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seeds: str = "0,1,2"
    rows: str = ",".join(ROW_PARTS)
    optimizer: str = "galore2"  # the optimizer family of the rows that switch it on
    rl: str = "spg_mix"
    serve: str = "rsparse"
    sparsity: float = 0.5
    vote: str = "deepconf_low"
    base: cs.Config = cs.Config(rl=dataclasses.replace(cs.Config().rl, loss="none"))  # the baseline run

    def __post_init__(self):
        check(comma_list(self.seeds) and all(s.lstrip("-").isdigit() for s in comma_list(self.seeds)),
              f"seeds must be a comma-separated list of integers, got {self.seeds!r}")
        unknown = [r for r in comma_list(self.rows) if r not in ROW_PARTS]
        check(comma_list(self.rows) and not unknown, f"rows: unknown {unknown}; known: {', '.join(ROW_PARTS)}")
        check(self.optimizer != "adamw" and self.rl != "none" and self.serve != "dense"
              and self.vote != "majority", "optimizer / rl / serve / vote name the parts switched on: not the baseline's")
        check(self.base.optimizer == "adamw" and self.base.rl.loss == "none" and self.base.serve.method == "dense"
              and self.base.vote.method == "majority", "base must be the baseline (adamw, rl.loss=none, dense, majority)")
        for row in comma_list(self.rows):  # every row's config is valid before anything runs
            self.row_config(row, int(comma_list(self.seeds)[0]), "")

    def row_config(self, row: str, seed: int, run_dir: str, init_from: str = "") -> cs.Config:
        parts, c = ROW_PARTS[row], self.base
        c = dataclasses.replace(c, run_dir=run_dir, seed=seed, init_from=init_from,
                                sft=dataclasses.replace(c.sft, seed=seed))
        if "optimizer" in parts:
            c = dataclasses.replace(c, optimizer=self.optimizer)
        if "rl" in parts:
            c = dataclasses.replace(c, rl=dataclasses.replace(c.rl, loss=self.rl))
        if "serve" in parts:
            c = dataclasses.replace(c, serve=dataclasses.replace(c.serve, method=self.serve, sparsity=self.sparsity))
        if "vote" in parts:
            c = dataclasses.replace(c, vote=dataclasses.replace(c.vote, method=self.vote))
        return c


def spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def fmt(s: dict, digits: int = 3) -> str:
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def run_rows(config: Config, log=print) -> dict[str, dict[int, dict]]:
    """row -> seed -> that compose_sudoku run's summary (train_seconds including its shared SFT's seconds)."""
    seeds, rows = [int(s) for s in comma_list(config.seeds)], comma_list(config.rows)
    out: dict[str, dict[int, dict]] = {r: {} for r in rows}
    sft_of: dict[tuple, tuple[str, float]] = {}  # (optimizer, seed) -> (sft run dir, its seconds)
    for seed in seeds:
        # rows that train their SFT first, so that the others start from it
        for row in sorted(rows, key=lambda r: "rl" in ROW_PARTS[r]):
            family = config.optimizer if "optimizer" in ROW_PARTS[row] else "adamw"
            sub = Path(config.run_dir) / row / f"seed{seed}"
            shared = sft_of.get((family, seed))
            cfg = config.row_config(row, seed, str(sub), shared[0] if shared else "")
            done = sub / "summary.json"
            if done.exists() and json.loads((sub / "config.json").read_text())["init_from"] == cfg.init_from:
                summary = json.loads(done.read_text())
                log(f"{row} seed {seed}: read back from {done}")
            else:
                log(f"{row} seed {seed}: running in {sub}")
                summary = cs.run(cfg)
            if not shared:
                sft_of[(family, seed)] = (summary["sft_dir"], summary["sft_seconds"])
                shared = sft_of[(family, seed)]
            summary = {**summary, "train_seconds": shared[1] + summary["rl_seconds"]}
            out[row][seed] = summary
    return out


def active_parts(per_seed: dict[int, dict], seeds) -> str:
    """The parts a row's runs detected as active (`parts_active`), with the number of seeds where they were
    when that is not every seed."""
    counts: dict[str, int] = {}
    for s in seeds:
        for k, v in per_seed[s]["parts_active"].items():
            if v not in ("adamw", "none", "dense", "majority"):
                counts[f"{k}={v}"] = counts.get(f"{k}={v}", 0) + 1
    return ", ".join(p if n == len(seeds) else f"{p} ({n}/{len(seeds)} seeds)" for p, n in counts.items()) or "—"


def table(config: Config, results: dict[str, dict[int, dict]]) -> tuple[str, dict]:
    seeds = [int(s) for s in comma_list(config.seeds)]
    stats = {row: {f: spread([results[row][s][f] for s in seeds]) for f in FIGURES} for row in results}
    lines = ["| row | parts active | acc (voted) | acc (1 trace) | acc (majority) | tokens | train s | "
             "opt-state KiB | serve s/problem |", "|---|---|---|---|---|---|---|---|---|"]
    for row, st in stats.items():
        on = active_parts(results[row], seeds)
        kib = {k: v / 1024 for k, v in st["optimizer_state_bytes"].items() if k != "n"} | {"n": st["optimizer_state_bytes"]["n"]}
        lines.append(f"| {row} | {on} | {fmt(st['heldout_acc'])} | {fmt(st['heldout_acc_single'])} | "
                     f"{fmt(st['heldout_acc_majority'])} | {fmt(st['tokens_generated'], 0)} | "
                     f"{fmt(st['train_seconds'], 0)} | {fmt(kib, 0)} | {fmt(st['serve_seconds_per_problem'], 3)} |")
    paired = {}
    if "baseline" in results:
        base = results["baseline"]
        lines += ["", "Paired differences from the baseline (same seed): mean [min, max] over seeds; 'sum of parts' adds "
                  "the single-part rows' differences of the same seed.", "",
                  "| row | Δ acc (voted) | Δ acc, sum of parts | Δ tokens | Δ opt-state KiB | serve s ratio |",
                  "|---|---|---|---|---|---|"]
        for row in results:
            if row == "baseline":
                continue
            d = {f: [results[row][s][f] - base[s][f] for s in seeds] for f in FIGURES}
            ratio = [results[row][s]["serve_seconds_per_problem"] / base[s]["serve_seconds_per_problem"] for s in seeds]
            singles = [SINGLE_ROWS[p] for p in ROW_PARTS[row]]
            parts_sum = ([sum(results[r][s]["heldout_acc"] - base[s]["heldout_acc"] for r in singles) for s in seeds]
                         if len(singles) > 1 and all(r in results for r in singles) else None)
            paired[row] = {"d_acc": spread(d["heldout_acc"]), "d_acc_parts_sum": spread(parts_sum) if parts_sum else None,
                           "d_tokens": spread(d["tokens_generated"]), "serve_ratio": spread(ratio),
                           "d_state_kib": spread(np.asarray(d["optimizer_state_bytes"]) / 1024)}
            p = paired[row]
            lines.append(f"| {row} | {fmt(p['d_acc'])} | {fmt(p['d_acc_parts_sum']) if parts_sum else '—'} | "
                         f"{fmt(p['d_tokens'], 0)} | {fmt(p['d_state_kib'], 0)} | {fmt(p['serve_ratio'], 2)} |")
    return "\n".join(lines), {"stats": stats, "paired": paired}


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    results = run_rows(config)
    text, figures = table(config, results)
    (Path(config.run_dir) / "table.md").write_text(text + "\n")
    print(text)
    rows = {r: {str(s): {f: v[f] for f in FIGURES} | {"parts_active": v["parts_active"]} for s, v in per.items()}
            for r, per in results.items()}
    (Path(config.run_dir) / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    summary = {f"{row}/{k}": v["mean"] for row, st in figures["stats"].items() for k, v in st.items()}
    summary |= {f"{row}/d_acc": p["d_acc"]["mean"] for row, p in figures["paired"].items()}
    write_summary(config.run_dir, summary, "compose_sudoku_table")
    return summary
