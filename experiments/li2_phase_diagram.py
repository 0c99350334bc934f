"""Li2 phase diagram: test accuracy over moduli × train fractions (× seeds), with the 2.7482·ln M/M boundary.

For each modulus M every (train fraction, seed) run has the same shapes once the training pairs are padded to
the largest split with a 0/1 weight, so one jitted, vmapped full-batch training loop trains them all at once.
Train fractions are `fraction_scales` × p*(M), p*(M) = 2.7482·ln M/M (the reference's critical ratio), unless
`train_fractions` gives absolute ones. A rerun with the same run_dir skips the moduli already in results.jsonl;
`workers=N` trains N moduli at once in separate processes (largest first).

The boundary is fitted per modulus (`boundary_fit`): the train fraction where the mean test accuracy over seeds
crosses 1/2, interpolated in log fraction between the two grid points that bracket it; then the constant c of
p(M) = c·ln M/M (least squares in log space) and the free slope b of log p = log a + b·log(ln M/M) (b = 1 is the
law's shape), each with a 95 % bootstrap interval over seeds (boundary_fit.json, plots/boundary_fit.png).

    python -m experiments li2_phase_diagram moduli=23,41,71 seeds=3 steps=3000
    python -m experiments li2_phase_diagram moduli=23,31,41,53,71,97 seeds=3 \\
        fraction_scales=0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5 workers=2        # the boundary-law sweep of li2.md
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import check
from jaxllm.data.tasks import group_arithmetic as ga
from jaxllm.models import li2
from jaxllm.optim import build as optim_build
from jaxllm.train import prepare_run_dir, save_figure, write_summary

GROK_THRESHOLD = 0.95


@dataclasses.dataclass(frozen=True)
class Config:
    moduli: tuple[int, ...] = (23, 31, 41)
    fraction_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)  # train fraction = scale × p*(M)
    train_fractions: tuple[float, ...] = ()  # absolute train fractions; when given, replaces fraction_scales
    seeds: int = 2  # seeds 0..seeds-1 (split and init)
    hidden: int = 512
    activation: str = "sqr"
    loss: str = "mse"
    optim: optim_build.OptimizerConfig = optim_build.LI2_OPTIMIZERS["adam"]  # optim=adam | adamw | muon
    steps: int = 2000
    eval_every: int = 100  # test accuracy is recorded every this many steps (for the grok step)
    workers: int = 1  # processes training moduli side by side (1: all in this process)
    bootstrap: int = 2000  # resamples of the seeds for the boundary fit's intervals
    run_dir: str = ""

    CHOICES: ClassVar[dict] = {"optim": optim_build.LI2_OPTIMIZERS}
    ALIASES: ClassVar[dict] = {"optimizer": "optim", "lr": "optim.learning_rate", "weight_decay": "optim.weight_decay"}

    def __post_init__(self):
        check(len(self.moduli) >= 1, "moduli must list at least one modulus")
        for m in self.moduli:
            ga.cyclic_group(m)
        check(len(self.fraction_scales) >= 1 or len(self.train_fractions) >= 1,
              "give fraction_scales or train_fractions")
        for m in self.moduli:
            for f in self.fractions(m):
                ga.split_sizes(m * m, f)
        check(all(s > 0 for s in self.fraction_scales), f"fraction_scales must be > 0, got {self.fraction_scales}")
        check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        li2.Li2Config(max(self.moduli), self.hidden, self.activation, self.loss)
        check(self.steps >= 1 and self.eval_every >= 1 and self.steps % self.eval_every == 0,
              f"steps ({self.steps}) must be a positive multiple of eval_every ({self.eval_every})")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        check(self.bootstrap >= 1, f"bootstrap must be >= 1, got {self.bootstrap}")

    def fractions(self, modulus: int) -> list[float]:
        if self.train_fractions:
            return [float(f) for f in self.train_fractions]
        p_crit = ga.critical_train_fraction(modulus)
        return [round(s * p_crit, 4) for s in self.fraction_scales]


def stacked_splits(group: ga.Group, fractions: list[float], seeds: int):
    """Padded train sets and test masks of every (fraction, seed) run: dict of [R, ...] arrays, R = runs."""
    a_all, b_all, y_all = ga.all_pairs(group)
    runs = [(f, s) for f in fractions for s in range(seeds)]
    n_max = max(ga.split_sizes(len(a_all), f)[0] for f in fractions)
    idx = np.zeros((len(runs), n_max), np.int32)
    weight = np.zeros((len(runs), n_max), np.float32)
    test_mask = np.ones((len(runs), len(a_all)), np.float32)
    for r, (f, s) in enumerate(runs):
        perm = np.random.default_rng(s).permutation(len(a_all))  # the same split as ga.split_pairs
        train = np.sort(perm[:ga.split_sizes(len(a_all), f)[0]])
        idx[r, :len(train)] = train
        weight[r, :len(train)] = 1.0
        test_mask[r, train] = 0.0
    return runs, {"a": a_all[idx], "b": b_all[idx], "y": y_all[idx], "w": weight, "test_mask": test_mask}


def train_runs(model: li2.Li2Config, tx: optax.GradientTransformation, data: dict, seeds: jax.Array,
               steps: int, eval_every: int, all_pairs: tuple) -> tuple[jax.Array, jax.Array]:
    """Full-batch training of every run at once (vmapped). Returns (train_acc, test_acc), each [R, steps/eval_every]."""

    def one_run(a, b, y, w, test_mask, seed):
        params = li2.init_params(model, jax.random.PRNGKey(seed))
        opt_state = tx.init(params)

        def loss(p):
            return li2.loss_and_accuracy(model, p, a, b, y, w)[0]

        def step(carry, _):
            p, o = carry
            grads = jax.grad(loss)(p)
            updates, o = tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), None

        def chunk(carry, _):
            carry, _ = jax.lax.scan(step, carry, None, length=eval_every)
            _, train_acc = li2.loss_and_accuracy(model, carry[0], a, b, y, w)
            _, test_acc = li2.loss_and_accuracy(model, carry[0], *all_pairs, test_mask)
            return carry, (train_acc, test_acc)

        _, accs = jax.lax.scan(chunk, (params, opt_state), None, length=steps // eval_every)
        return accs

    return jax.vmap(one_run)(data["a"], data["b"], data["y"], data["w"], data["test_mask"], seeds)


def train_modulus(config: Config, m: int) -> tuple[list[dict], float]:
    """Every (fraction, seed) run of modulus m, trained at once: (result rows, seconds)."""
    t_m = time.perf_counter()
    tx = config.optim.build(config.steps, matrices=optim_build.li2_matrices)
    group = ga.cyclic_group(m)
    model = li2.Li2Config(m, config.hidden, config.activation, config.loss)
    runs, data = stacked_splits(group, config.fractions(m), config.seeds)
    seeds = jnp.asarray([s for _, s in runs], jnp.int32)
    all_pairs = tuple(jnp.asarray(x) for x in ga.all_pairs(group))
    fn = jax.jit(partial(train_runs, model, tx, steps=config.steps, eval_every=config.eval_every,
                         all_pairs=all_pairs))
    train_acc, test_acc = jax.device_get(fn({k: jnp.asarray(v) for k, v in data.items()}, seeds))
    new = []
    for r, (f, s) in enumerate(runs):
        grok = np.nonzero(test_acc[r] >= GROK_THRESHOLD)[0]
        new.append({"modulus": m, "train_fraction": f, "seed": s,
                    "critical_train_fraction": round(ga.critical_train_fraction(m), 4),
                    "train_accuracy": float(train_acc[r, -1]), "test_accuracy": float(test_acc[r, -1]),
                    "grok_step": int((grok[0] + 1) * config.eval_every) if len(grok) else None})
    return new, time.perf_counter() - t_m


def run(config: Config) -> dict:
    t0 = time.perf_counter()
    run_dir = Path(config.run_dir or "runs/li2_phase_diagram/default")
    prepare_run_dir(str(run_dir), config)
    results_file = run_dir / "results.jsonl"
    rows = [json.loads(x) for x in results_file.read_text().splitlines()] if results_file.exists() else []
    done = {r["modulus"] for r in rows}
    pending = [m for m in config.moduli if m not in done]

    def finished(m: int, new: list[dict], seconds: float) -> None:
        with open(results_file, "a") as fh:  # only this process writes: a modulus at a time, whole
            fh.write("".join(json.dumps(x) + "\n" for x in new))
        rows.extend(new)
        print(f"M={m}: {len(new)} runs in {seconds:.1f}s; test acc by fraction "
              + ", ".join(f"{f}: {np.mean([x['test_accuracy'] for x in new if x['train_fraction'] == f]):.2f}"
                          for f in config.fractions(m)), flush=True)

    if config.workers > 1 and len(pending) > 1:
        # spawn, not fork: a forked JAX runtime is not safe; the largest moduli first (they take longest)
        with ProcessPoolExecutor(min(config.workers, len(pending)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_modulus, config, m): m for m in sorted(pending, reverse=True)}
            for fut in as_completed(futures):
                finished(futures[fut], *fut.result())
    else:
        for m in pending:
            finished(m, *train_modulus(config, m))

    rows = [r for r in rows if r["modulus"] in config.moduli]
    summary = summarise(config, rows)
    fit = boundary_fit(rows, config.moduli, config.bootstrap)
    (run_dir / "boundary_fit.json").write_text(json.dumps(fit, indent=1) + "\n")
    summary |= {f"boundary_{k}": fit[k] for k in ("constant", "constant_interval", "slope", "slope_interval")}
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    plot_phase_diagram(str(run_dir), config, rows)
    plot_boundary_fit(str(run_dir), fit)
    (run_dir / "phase_table.md").write_text(phase_table(config, rows) + "\n" + boundary_table(fit))
    write_summary(str(run_dir), summary, title="Li2 phase diagram")
    return summary


# ----------------------------------------------------------------------------------------------------------
# The boundary, fitted.


def crossing(fractions, accuracies, level: float = 0.5):
    """The train fraction where accuracy crosses `level` from below: the smallest grid index j from which every
    accuracy is ≥ level, interpolated in log fraction between grid points j−1 and j. Returns (fraction, lower
    bracket, upper bracket), or None when the grid does not bracket it (all ≥ level: below the grid; the
    largest fraction < level: above it)."""
    f = np.asarray(fractions, np.float64)
    a = np.asarray(accuracies, np.float64)
    order = np.argsort(f)
    f, a = f[order], a[order]
    above = a >= level
    if not above[-1] or above.all():
        return None
    j = int(len(a) - np.argmin(above[::-1]))  # first index of the final run of ≥ level
    lo, hi = np.log(f[j - 1]), np.log(f[j])
    t = (level - a[j - 1]) / (a[j] - a[j - 1])
    return float(np.exp(lo + t * (hi - lo))), float(f[j - 1]), float(f[j])


def _law_fit(moduli, boundaries) -> tuple[float, float]:
    """(c, b): c of p = c·x with x = ln M/M (least squares on log p − log x), b the slope of log p on log x."""
    x = np.log(np.log(moduli) / np.asarray(moduli, np.float64))
    y = np.log(boundaries)
    c = float(np.exp(np.mean(y - x)))
    b = float(np.polyfit(x, y, 1)[0]) if len(set(moduli)) >= 2 else None
    return c, b


def boundary_fit(rows: list[dict], moduli, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Per modulus the boundary (`crossing` of the mean test accuracy over seeds) and its 95 % interval over
    seed resamples; the law's constant c and free slope b on the moduli whose boundary the grid brackets, with
    95 % intervals from resampling each modulus's seeds."""
    rng = np.random.default_rng(seed)
    table: dict[int, dict] = {}
    per_m = {}
    for m in moduli:
        mine = [r for r in rows if r["modulus"] == m]
        fr = sorted({r["train_fraction"] for r in mine})
        seeds = sorted({r["seed"] for r in mine})
        acc = np.array([[next(r["test_accuracy"] for r in mine if r["train_fraction"] == f and r["seed"] == s)
                         for s in seeds] for f in fr])  # [fractions, seeds]
        per_m[m] = (fr, acc)
        cross = crossing(fr, acc.mean(axis=1))
        p_star = ga.critical_train_fraction(m)
        table[m] = {"predicted": p_star, "boundary": None if cross is None else cross[0],
                    "bracket": None if cross is None else list(cross[1:]),
                    "ratio_to_predicted": None if cross is None else cross[0] / p_star}
    fitted = [m for m in moduli if table[m]["boundary"] is not None]
    out = {"moduli": {str(m): v for m, v in table.items()}, "fitted_moduli": fitted,
           "reference_constant": ga.CRITICAL_RATIO_MULTIPLIER, "constant": None, "constant_interval": None,
           "slope": None, "slope_interval": None, "bootstrap": bootstrap}
    if not fitted:
        return out
    c, b = _law_fit(fitted, [table[m]["boundary"] for m in fitted])
    cs, bs, per_boot = [], [], {m: [] for m in fitted}
    for _ in range(bootstrap):
        picks = {}
        for m in fitted:
            fr, acc = per_m[m]
            cross = crossing(fr, acc[:, rng.integers(0, acc.shape[1], acc.shape[1])].mean(axis=1))
            if cross is None:  # this resample's grid does not bracket modulus m: the resample is dropped
                break
            picks[m] = cross[0]
        else:
            for m in fitted:
                per_boot[m].append(picks[m])
            cb, bb = _law_fit(fitted, [picks[m] for m in fitted])
            cs.append(cb)
            bs.append(bb)
    for m in fitted:
        table[m]["interval"] = ([float(np.percentile(per_boot[m], 2.5)), float(np.percentile(per_boot[m], 97.5))]
                                if per_boot[m] else None)
    out |= {"moduli": {str(m): v for m, v in table.items()}, "constant": c, "slope": b,
            "constant_interval": [float(np.percentile(cs, 2.5)), float(np.percentile(cs, 97.5))] if cs else None,
            "slope_interval": ([float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]
                               if bs and len(fitted) >= 2 else None),
            "bootstrap_kept": len(cs)}
    return out


def boundary_table(fit: dict) -> str:
    lines = ["| M | p* = 2.7482·ln M/M | fitted boundary | 95 % interval (seeds) | bracket | boundary / p* |",
             "|---|---|---|---|---|---|"]
    for m, v in fit["moduli"].items():
        if v["boundary"] is None:
            lines.append(f"| {m} | {v['predicted']:.4f} | not bracketed by the grid | | | |")
            continue
        iv = v.get("interval") or [float("nan")] * 2
        lines.append(f"| {m} | {v['predicted']:.4f} | {v['boundary']:.4f} | [{iv[0]:.4f}, {iv[1]:.4f}] | "
                     f"[{v['bracket'][0]:.4f}, {v['bracket'][1]:.4f}] | {v['ratio_to_predicted']:.3f} |")
    if fit["constant"] is not None:
        ci, si = fit["constant_interval"], fit["slope_interval"]
        lines += ["", f"Fitted constant c of p = c·ln M/M: {fit['constant']:.4f}"
                  + (f" (95 % interval [{ci[0]:.4f}, {ci[1]:.4f}])" if ci else "")
                  + f"; the reference's {fit['reference_constant']}."
                  + ("" if fit["slope"] is None else f" Free slope b of log p on log(ln M/M): {fit['slope']:.3f}"
                     + (f" ([{si[0]:.3f}, {si[1]:.3f}])" if si else "") + " (the law: b = 1).")]
    return "\n".join(lines) + "\n"


def plot_boundary_fit(run_dir: str, fit: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [int(m) for m in fit["fitted_moduli"]]
    if not ms:
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    p = np.array([fit["moduli"][str(m)]["boundary"] for m in ms])
    iv = np.array([fit["moduli"][str(m)]["interval"] or [b, b] for m, b in zip(ms, p)])
    ax.errorbar(ms, p, yerr=[p - iv[:, 0], iv[:, 1] - p], fmt="o", capsize=4, label="fitted boundary (95 % over seeds)")
    grid = np.linspace(min(ms) * 0.9, max(ms) * 1.1, 200)
    ax.plot(grid, fit["reference_constant"] * np.log(grid) / grid, "k--", label=f"{fit['reference_constant']}·ln M / M")
    ax.plot(grid, fit["constant"] * np.log(grid) / grid, "r-", label=f"fitted {fit['constant']:.3f}·ln M / M")
    ax.set_xlabel("modulus M")
    ax.set_ylabel("train fraction at the boundary")
    ax.set_yscale("log")
    ax.legend()
    save_figure(fig, run_dir, "boundary_fit")


def mean_test_accuracy(rows: list[dict], m: int, f: float) -> float:
    return float(np.mean([r["test_accuracy"] for r in rows if r["modulus"] == m and r["train_fraction"] == f]))


def summarise(config: Config, rows: list[dict]) -> dict:
    """Flat headline figures per modulus: the predicted boundary p*, the smallest swept fraction whose mean test
    accuracy ≥ 0.95 and the largest one below 0.5 (the full grid goes to phase_table.md)."""
    summary: dict = {"runs": len(rows)}
    above = [r["test_accuracy"] for r in rows if r["train_fraction"] > r["critical_train_fraction"]]
    below = [r["test_accuracy"] for r in rows if r["train_fraction"] < r["critical_train_fraction"]]
    summary["mean_test_accuracy_above_boundary"] = round(float(np.mean(above)), 4) if above else None
    summary["mean_test_accuracy_below_boundary"] = round(float(np.mean(below)), 4) if below else None
    for m in config.moduli:
        fr = sorted(config.fractions(m))
        acc = [mean_test_accuracy(rows, m, f) for f in fr]
        summary[f"M{m}_predicted_fraction"] = round(ga.critical_train_fraction(m), 4)
        summary[f"M{m}_smallest_generalising_fraction"] = next((f for f, a in zip(fr, acc) if a >= GROK_THRESHOLD), None)
        summary[f"M{m}_largest_memorising_fraction"] = max((f for f, a in zip(fr, acc) if a < 0.5), default=None)
    return summary


def phase_table(config: Config, rows: list[dict]) -> str:
    """Markdown grid of mean test accuracy: one row per modulus, one column per fraction."""
    lines = ["| M | p* | " + " | ".join(f"fraction {i + 1}" for i in range(len(config.fractions(config.moduli[0]))))
             + " |", "|---" * (2 + len(config.fractions(config.moduli[0]))) + "|"]
    for m in config.moduli:
        cells = [f"{f}: {mean_test_accuracy(rows, m, f):.2f}" for f in sorted(config.fractions(m))]
        lines.append(f"| {m} | {ga.critical_train_fraction(m):.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_phase_diagram(run_dir: str, config: Config, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for m in config.moduli:
        fr = sorted(config.fractions(m))
        acc = [mean_test_accuracy(rows, m, f) for f in fr]
        sc = ax.scatter([m] * len(fr), fr, c=acc, cmap="RdYlGn", vmin=0, vmax=1, s=260, marker="s", edgecolors="k")
    grid = np.linspace(min(config.moduli) * 0.9, max(config.moduli) * 1.1, 200)
    ax.plot(grid, ga.CRITICAL_RATIO_MULTIPLIER * np.log(grid) / grid, "k--",
            label="p* = 2.7482·ln M / M")
    ax.set_xlabel("modulus M")
    ax.set_ylabel("train fraction")
    ax.set_yscale("log")
    ax.legend()
    fig.colorbar(sc, ax=ax, label=f"test accuracy (mean of {config.seeds} seeds)")
    ax.set_title(f"Li2 phase diagram (K={config.hidden}, {config.optim.name}, wd={config.optim.weight_decay}, "
                 f"{config.steps} steps)")
    save_figure(fig, run_dir, "phase_diagram")
