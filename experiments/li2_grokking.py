"""Li2 grokking (arXiv 2509.21519): 2-layer x² network on group multiplication, three stages and Fourier features.

One run of the paper's setting as the reference code runs it: all pairs of a group (Z_M by default), a seeded
train/test split, the bias-free network σ(XW)V, MSE to centred one-hot labels, full-batch Adam with coupled L2.
Logged per log step: train/test loss and accuracy, ‖G_F‖, weight movement per layer, per-node energy
E(w)=½‖Ỹᵀσ(Xw)‖², Fourier concentration and frequencies covered (Z_M), and the stage (lazy / independent /
interactive, rule in `jaxllm.models.li2.stage_of`).

    python -m experiments li2_grokking modulus=71 train_fraction=0.3 optimizer=muon hidden=128
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.data.tasks import group_arithmetic as ga
from jaxllm.models import li2
from jaxllm.optim import build as optim_build
from jaxllm.train import Task, TrainerConfig, init_state, prepare_run_dir, save_figure, train, write_summary

GROK_THRESHOLD = 0.95


@dataclasses.dataclass(frozen=True)
class Config:
    group: str = "cyclic"  # cyclic | dihedral | symmetric | product:AxB[xC]
    modulus: int = 41  # M of Z_M; n of D_n / S_n
    train_fraction: float = 0.4  # boundary for Z_41: 2.7482·ln 41/41 = 0.249
    hidden: int = 512  # K
    activation: str = "sqr"  # sqr | relu | silu | relu2
    loss: str = "mse"  # mse | ce
    # optim=adam (coupled L2, as the reference) | adamw | muon (W) + adam (V): optim_build.LI2_OPTIMIZERS
    optim: optim_build.OptimizerConfig = optim_build.LI2_OPTIMIZERS["adam"]
    top_init_scale: float = 1.0  # multiplies V at init; 0 = zero-init top layer
    seed: int = 0  # split, init and mini-batch order
    batch_size: int = 0  # 0 = full batch (the reference); > 0 = shuffled mini-batches from a grain pipeline
    fourier_threshold: float = 0.6  # a node counts as a frequency's feature when ≥ this share of its power is there
    run_dir: str = ""
    trainer: TrainerConfig = TrainerConfig(steps=2000, log_every=20, checkpoint_every=500)

    CHOICES: ClassVar[dict] = {"optim": optim_build.LI2_OPTIMIZERS}
    # the spellings of the documented commands (`steps=3000 optimizer=muon lr=0.01 weight_decay=0`)
    ALIASES: ClassVar[dict] = {"steps": "trainer.steps", "optimizer": "optim", "lr": "optim.learning_rate",
                               "weight_decay": "optim.weight_decay"}

    def __post_init__(self):
        order = ga.make_group(self.group, self.modulus).order  # validates group / modulus
        n_train, _ = ga.split_sizes(order**2, self.train_fraction)
        li2.Li2Config(order, self.hidden, self.activation, self.loss, self.top_init_scale)
        check(self.trainer.steps >= 1, f"trainer.steps must be >= 1, got {self.trainer.steps}")
        check(self.batch_size >= 0, f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")
        check(0 < self.fourier_threshold <= 1, f"fourier_threshold must be in (0, 1], got {self.fourier_threshold}")
        check(self.batch_size <= n_train, f"batch_size={self.batch_size} exceeds the {n_train} training pairs")


def build(config: Config):
    """(group, split, model config, Task) for a config: the pieces a notebook can reuse."""
    group = ga.make_group(config.group, config.modulus)
    split = ga.split_pairs(group, config.train_fraction, config.seed)
    model = li2.Li2Config(group.order, config.hidden, config.activation, config.loss, config.top_init_scale)
    train_arrays = tuple(jnp.asarray(x) for x in (split.train_a, split.train_b, split.train_y))

    def loss_fn(params, batch, rng):
        del rng
        a, b, y = train_arrays if batch is None else (batch["a"], batch["b"], batch["y"])
        loss, acc = li2.loss_and_accuracy(model, params, a, b, y)
        return loss, {"batch_accuracy": acc}

    batches = None
    if config.batch_size:
        import grain

        a, b, y = split.train_a, split.train_b, split.train_y
        batches = (grain.MapDataset.range(len(a)).shuffle(seed=config.seed).repeat()
                   .map(lambda i: {"a": a[i], "b": b[i], "y": y[i]})
                   .batch(config.batch_size, drop_remainder=True).to_iter_dataset())
    task = Task(init_params=partial(li2.init_params, model), loss_fn=loss_fn,
                optimizer=config.optim.build(config.trainer.steps, matrices=optim_build.li2_matrices),
                batches=batches)
    return group, split, model, task


@partial(jax.jit, static_argnames=("model", "cyclic", "threshold"))
def diagnostics(model: li2.Li2Config, params, params0, train_arrays, test_arrays, cyclic: bool, threshold: float):
    """Every logged quantity of one step, in one jitted call: scalars plus the covered-frequency mask."""
    train_loss, train_acc = li2.loss_and_accuracy(model, params, *train_arrays)
    test_loss, test_acc = li2.loss_and_accuracy(model, params, *test_arrays)
    _, feats = li2.forward(model, params, train_arrays[0], train_arrays[1])
    grad_f = li2.backprop_gradient(params, feats, train_arrays[2])
    grad_f_ref = li2.backprop_gradient(params, feats, train_arrays[2], reference=True)
    energy = li2.node_energy(params, *train_arrays, model.activation)
    out = {
        "train/loss": train_loss, "train/accuracy": train_acc, "test/loss": test_loss, "test/accuracy": test_acc,
        "grad_F_norm": jnp.linalg.norm(grad_f), "grad_F_norm_reference": jnp.linalg.norm(grad_f_ref),
        "grad_F_signal_cos": li2.signal_alignment(params, *train_arrays, model.activation),
        "movement/W": li2.relative_movement(params["W"], params0["W"]),
        "movement/V": li2.relative_movement(params["V"], params0["V"]),
        "energy/mean": jnp.mean(energy), "energy/median": jnp.median(energy), "energy/max": jnp.max(energy),
        "energy/p90": jnp.quantile(energy, 0.9),
    }
    covered = jnp.zeros((1,), bool)
    if cyclic:
        fs = li2.fourier_analysis(params["W"], threshold)
        weight = jnp.sum(fs.power, axis=-1)
        out["fourier/concentration"] = jnp.sum(fs.concentration * weight) / jnp.sum(weight)  # power-weighted
        out["fourier/concentration_mean"] = jnp.mean(fs.concentration)
        out["fourier/n_covered"] = jnp.sum(fs.covered)
        covered = fs.covered
    return out, covered


def run(config: Config) -> dict:
    t0 = time.perf_counter()
    run_dir = config.run_dir or "runs/li2_grokking/default"
    prepare_run_dir(run_dir, config)
    group, split, model, task = build(config)
    cyclic = config.group == "cyclic"
    n_freq = (group.order - 1) // 2 if cyclic else 0
    train_arrays = tuple(jnp.asarray(x) for x in (split.train_a, split.train_b, split.train_y))
    test_arrays = tuple(jnp.asarray(x) for x in (split.test_a, split.test_b, split.test_y))
    params0 = init_state(task, config.seed).params  # the trainer's own initial parameters
    energy0 = float(jnp.mean(li2.node_energy(params0, *train_arrays, model.activation)))

    def log_fn(params, step):
        out, covered = diagnostics(model, params, params0, train_arrays, test_arrays, cyclic,
                                   config.fourier_threshold)
        row = {k: float(v) for k, v in jax.device_get(out).items()}
        if cyclic:
            row["fourier/covered"] = [int(f) for f in np.nonzero(np.asarray(covered))[0]]
            coverage = row["fourier/n_covered"] / max(n_freq, 1)
        else:
            coverage = None  # no Fourier basis here: the detector reports lazy / independent only
        row["energy/growth"] = row["energy/mean"] / energy0
        row["stage"] = li2.stage_of(row["energy/growth"], coverage)
        row["stage_id"] = li2.STAGES.index(row["stage"])
        return row

    task = dataclasses.replace(task, log_fn=log_fn)
    result = train(config.trainer, task, run_dir, seed=config.seed)
    history = [r for r in result.history if "test/accuracy" in r]
    final_params = result.state.params

    summary = summarise(config, group, split, history, final_params, n_freq)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    plot_run(run_dir, history, final_params, group, cyclic, config.fourier_threshold)
    write_summary(run_dir, summary, title=f"Li2 grokking on {group.name}")
    return summary


def first_step(history: list[dict], key: str, threshold: float):
    return next((r["step"] for r in history if r.get(key, -1.0) >= threshold), None)


def stage_boundaries(history: list[dict]) -> dict:
    """First logged step of each stage that the run entered."""
    out = {}
    for r in history:
        out.setdefault(r["stage"], r["step"])
    return out


def summarise(config: Config, group: ga.Group, split: ga.Split, history: list[dict], params, n_freq: int) -> dict:
    last = history[-1]
    p_crit = ga.critical_train_fraction(group.order, max_irrep_degree=group.max_irrep_degree)
    summary = {
        "group": group.name,
        "train_accuracy": last["train/accuracy"],
        "test_accuracy": last["test/accuracy"],
        "grok_step": first_step(history, "test/accuracy", GROK_THRESHOLD),
        "memorise_step": first_step(history, "train/accuracy", GROK_THRESHOLD),
        "frequencies_covered": last.get("fourier/covered"),
        "n_frequencies_covered": int(last["fourier/n_covered"]) if "fourier/n_covered" in last else None,
        "n_frequencies_total": n_freq or None,
        "fourier_concentration": last.get("fourier/concentration"),
        "train_fraction": config.train_fraction,
        "critical_train_fraction": round(p_crit, 4),
        "above_boundary": config.train_fraction > p_crit,
        "n_train": int(len(split.train_a)),
        "n_test": int(len(split.test_a)),
        "stage_boundaries": stage_boundaries(history),
        "grad_F_norm_final": last["grad_F_norm"],
        "grad_F_norm_peak_step": max(history, key=lambda r: r["grad_F_norm"])["step"],
        "movement_W": last["movement/W"],
        "movement_V": last["movement/V"],
        "steps": config.trainer.steps,
    }
    return summary


def plot_run(run_dir: str, history: list[dict], params, group: ga.Group, cyclic: bool, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    col = lambda k: np.array([r.get(k, np.nan) for r in history], dtype=float)  # noqa: E731
    bounds = stage_boundaries(history)

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax.plot(steps, col("train/accuracy"), label="train")
    ax.plot(steps, col("test/accuracy"), label="test")
    ax.set_ylabel("accuracy")
    ax2.plot(steps, col("grad_F_norm"), color="C3", label="‖G_F‖")
    ax2.set_ylabel("‖G_F‖")
    ax2b = ax2.twinx()
    ax2b.plot(steps, col("movement/W"), color="C4", ls="--", label="‖ΔW‖/‖W0‖")
    ax2b.plot(steps, col("movement/V"), color="C5", ls=":", label="‖ΔV‖/‖V0‖")
    ax2b.set_ylabel("relative movement")
    for name, s in bounds.items():
        for a in (ax, ax2):
            a.axvline(s, color="grey", lw=0.8)
        ax.text(s, 1.02, name, rotation=30, fontsize=8, transform=ax.get_xaxis_transform())
    ax.legend(loc="center right")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax2b.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="center right", fontsize=8)
    ax2.set_xlabel("step")
    fig.suptitle(f"Li2 on {group.name}: accuracy and stages")
    save_figure(fig, run_dir, "accuracy")

    fig, ax = plt.subplots(figsize=(7, 4))
    for k in ("energy/max", "energy/p90", "energy/median", "energy/mean"):
        ax.plot(steps, col(k), label=k.split("/")[1])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("E(w_j) = ½‖Ỹᵀσ(Xw_j)‖²")
    ax.legend()
    ax.set_title("per-node energy over training")
    save_figure(fig, run_dir, "energy")

    if cyclic:
        fs = jax.device_get(li2.fourier_analysis(params["W"], threshold))
        power = fs.power / fs.power.sum(axis=1, keepdims=True)
        order = np.lexsort((-fs.concentration, fs.dominant))
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
        ax.imshow(power[order].T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        ax.set_xlabel("hidden node (sorted by dominant frequency)")
        ax.set_ylabel("frequency")
        ax.set_title("normalised Fourier power of W per node")
        strong = fs.concentration >= threshold
        counts = np.bincount(fs.dominant[strong], minlength=power.shape[1])
        ax2.bar(np.arange(len(counts)), counts)
        ax2.set_xlabel("frequency")
        ax2.set_ylabel(f"nodes (concentration ≥ {threshold})")
        ax2.set_title("feature count per frequency")
        save_figure(fig, run_dir, "fourier")


if __name__ == "__main__":  # pragma: no cover
    print(run(Config(run_dir=f"runs/li2_grokking/manual-{int(time.time())}")))
