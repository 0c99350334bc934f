"""Li2 full-batch training steps/s (M=97, K=2048) vs a plain PyTorch CPU loop, and the default phase diagram's
wall time. `python -m bench.run_all li2` -> docs/results/li2_bench.md."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax

from bench.common import fmt_ratio, header, interleaved, write_result

MODULUS, HIDDEN, TRAIN_FRACTION, LR, WD = 97, 2048, 0.3, 1e-3, 2e-4
STEPS_PER_CALL = 5


def jax_stepper():
    """The trainer's own jitted step (donated state) on the li2_grokking task."""
    from experiments import li2_grokking
    from jaxllm.config import apply_overrides
    from jaxllm.train import TrainerConfig, init_state, make_train_step

    cfg = apply_overrides(li2_grokking.Config(trainer=TrainerConfig(steps=1, progress=False)), [
        f"modulus={MODULUS}", f"hidden={HIDDEN}", f"train_fraction={TRAIN_FRACTION}", f"lr={LR}", f"weight_decay={WD}"])
    _, split, _, task = li2_grokking.build(cfg)
    step = jax.jit(make_train_step(task), donate_argnums=0)
    box = [init_state(task, 0)]

    def run():
        state = box[0]
        for _ in range(STEPS_PER_CALL):
            state, metrics = step(state, None)
        jax.block_until_ready(metrics["loss"])
        box[0] = state

    return run, split


def torch_stepper(split, gather: bool):
    """The reference's model and loop (cogo/modular_addition_simple2.py): frozen identity embedding, one-hot
    concat, Linear(2M, K) -> x² -> Linear(K, M), MSE to centred one-hot, torch Adam with coupled L2.
    gather=True replaces the one-hot matmul by indexing rows of W (what our JAX forward does)."""
    import torch

    torch.manual_seed(0)
    m = MODULUS
    w = torch.nn.Linear(2 * m, HIDDEN, bias=False)
    v = torch.nn.Linear(HIDDEN, m, bias=False)
    opt = torch.optim.Adam(list(w.parameters()) + list(v.parameters()), lr=LR, weight_decay=WD)
    a = torch.as_tensor(split.train_a, dtype=torch.long)
    b = torch.as_tensor(split.train_b, dtype=torch.long)
    y = torch.as_tensor(split.train_y, dtype=torch.long)
    eye = torch.eye(m)
    x = torch.cat([eye[a], eye[b]], dim=1)

    def loss_fn():
        h = (w.weight.T[a] + w.weight.T[m + b]) if gather else w(x)
        o = v(h.pow(2))
        o = o - o.mean(dim=1, keepdim=True)
        return o.pow(2).sum(1).mean() - 2 * o.gather(1, y[:, None]).mean() + 1 - 1.0 / m

    def run():
        for _ in range(STEPS_PER_CALL):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
        float(loss.detach())

    return run


def main(argv: list[str]) -> None:
    import torch

    command = "python -m bench.run_all li2"
    jax_run, split = jax_stepper()
    fns = {"jax": jax_run, "torch_onehot": torch_stepper(split, gather=False),
           "torch_gather": torch_stepper(split, gather=True)}
    times = interleaved(fns, repeats=5, warmup=1)
    sps = {k: [STEPS_PER_CALL / t for t in v] for k, v in times.items()}

    from experiments import li2_phase_diagram

    with tempfile.TemporaryDirectory() as tmp:
        cfg = li2_phase_diagram.Config(run_dir=tmp)
        t0 = time.perf_counter()
        pd = li2_phase_diagram.run(cfg)
        pd_wall = time.perf_counter() - t0

    lines = [header("Li2 benchmark", command)]
    lines.append(f"- torch {torch.__version__}, {torch.get_num_threads()} threads; XLA CPU, "
                 f"{os.cpu_count()} cores visible\n")
    lines.append(f"## Full-batch training steps/s: Z_{MODULUS}, K={HIDDEN}, train fraction {TRAIN_FRACTION} "
                 f"({len(split.train_a)} pairs), x², MSE, Adam+L2\n")
    lines.append("Each timing is a call of "
                 f"{STEPS_PER_CALL} steps; 1 warm-up round, then 5 repeats interleaved jax / torch one-hot / "
                 "torch gather. The JAX step is the trainer's jitted step (donated state); the torch loop is "
                 "the reference's model (one-hot concat through nn.Linear) and the same model with a row "
                 "gather instead of the one-hot matmul (our JAX forward's formulation).\n")
    lines.append("| implementation | steps/s (median) | range |\n|---|---|---|")
    for k, v in sps.items():
        lines.append(f"| {k} | {statistics.median(v):.2f} | {min(v):.2f}–{max(v):.2f} |")
    lines.append("")
    lines.append(f"- speed-up of JAX over the reference torch loop (one-hot): "
                 f"{fmt_ratio(times['torch_onehot'], times['jax'])}")
    lines.append(f"- speed-up of JAX over torch with the same gather formulation: "
                 f"{fmt_ratio(times['torch_gather'], times['jax'])}\n")
    lines.append("## Default phase diagram wall time\n")
    lines.append(f"`python -m experiments li2_phase_diagram` (moduli {list(cfg.moduli)}, scales "
                 f"{list(cfg.fraction_scales)} × p*, {cfg.seeds} seeds, K={cfg.hidden}, {cfg.steps} steps): "
                 f"**{pd_wall:.1f} s** for {pd['runs']} runs; mean test accuracy above / below the boundary "
                 f"{pd['mean_test_accuracy_above_boundary']} / {pd['mean_test_accuracy_below_boundary']}.\n")
    load = os.getloadavg()[0]
    lines.append(f"1-min load average at the end of the run: {load:.1f} on {os.cpu_count()} cores (above ~1, other "
                 "jobs shared the cores: absolute numbers are then noisy; the interleaved ratio is the figure to read).\n")
    write_result("li2_bench.md", "\n".join(lines))


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(sys.argv[1:])
