"""Decode GEMV latency, dense vs R-Sparse, for 2048×2048 and 2048×8192 layers at 40-70% sparsity.

CPU: dense `x @ W` vs the jnp gather path (`rsparse_gemv_gather`). GPU (when one is present): dense `x @ W`
(cuBLAS), the Pallas kernel with every channel kept (like-for-like dense), the Pallas R-Sparse kernel and the
jax-triton one (if jax-triton imports). Each timed call runs the GEMV through `layers` distinct weight matrices
inside one jitted function (a decode step's worth of layers: one dispatch, and more weight bytes than the GPU's L2),
and the figure is time per layer. τ is calibrated on 64 random tokens so that the kept fraction is (1 − s)α.

`python -m bench.run_all rsparse` (CPU) ; `bash bench/gpu_rsparse.sh` on a GPU machine.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import header, interleaved, ratio_stats, write_result
from pallas_kernels import rsparse_gemv as rk

SHAPES = ((2048, 2048), (2048, 8192))
SPARSITIES = (0.4, 0.5, 0.6, 0.7)


def _layer(rng, d_in, d_out, sparsity, alpha, dtype, rank_cap=None):
    """Random layer with exact R-Sparse factors; returns (w, scale, tau, a, b, kept)."""
    from jaxllm.sparse.rsparse import layer_budget

    w = (rng.standard_normal((d_in, d_out), np.float32) / math.sqrt(d_in))
    scale = np.linalg.norm(w, axis=1)
    b = layer_budget("bench", d_in, d_out, sparsity, alpha)
    calib = rng.standard_normal((64, d_in), np.float32)
    tau = float(np.quantile(np.abs(calib * scale[None, :]), b.drop_fraction))
    a_f = b_f = None
    if b.rank:
        # timing only needs factors of the right shape; a random orthogonal-ish pair avoids a big SVD per layer
        a_f = jnp.asarray(rng.standard_normal((d_in, b.rank), np.float32) / math.sqrt(d_in), dtype)
        b_f = jnp.asarray(rng.standard_normal((b.rank, d_out), np.float32) / math.sqrt(b.rank), dtype)
    return jnp.asarray(w, dtype), jnp.asarray(scale), jnp.float32(tau), a_f, b_f, b


def _bound(fn, *args):
    return lambda: jax.block_until_ready(fn(*args))


def _passes(gemv, reps, x, layers):
    # reps × layers GEMVs per dispatch; x moves a little per pass so nothing is deduplicated
    return [gemv(x + jnp.asarray(1e-3 * r, x.dtype), lay) for r in range(reps) for lay in layers]


def _time(fns, repeats):
    t = interleaved(fns, repeats=repeats, warmup=2)
    return t


def run(device: str, layers: int, repeats: int, dtype_name: str, reps: int = 1, alphas=(1.0, 0.9), tokens=1, shapes=SHAPES,
        interpret=False):
    dtype = jnp.dtype(dtype_name)
    rng = np.random.default_rng(0)
    rows = []
    gpu = device == "gpu"
    have_triton = gpu and importlib.util.find_spec("jax_triton") is not None
    if have_triton:
        from pallas_kernels.rsparse_triton import rsparse_gemv_triton
    blocks = rk.BlockSizes()
    for d_in, d_out in shapes:
        x = jnp.asarray(rng.standard_normal((tokens, d_in), np.float32), dtype)
        ws = [jnp.asarray(rng.standard_normal((d_in, d_out), np.float32) / math.sqrt(d_in), dtype)
              for _ in range(layers)]
        def chain(gemv, reps=reps):
            return jax.jit(functools.partial(_passes, gemv, reps))

        dense = chain(lambda x, w: x @ w)
        fns_dense = {"dense": _bound(dense, x, ws)}
        if gpu:
            pal_dense = chain(lambda x, w: rk.dense_gemv_pallas(x, w, blocks=blocks, interpret=interpret))
            fns_dense["pallas_dense"] = _bound(pal_dense, x, ws)
        for s in SPARSITIES:
            for alpha in alphas:
                lay = [_layer(rng, d_in, d_out, s, alpha, dtype) for _ in range(layers)]
                budget = lay[0][5]
                fns = dict(fns_dense)
                if gpu:
                    packed = [rk.pack_weights(w, a, b, blocks) for (w, _, _, a, b, _) in lay]
                    args = [(p, sc, t) for p, (_, sc, t, _, _, _) in zip(packed, lay)]
                    pal = chain(lambda x, l: rk.rsparse_gemv_packed(x, *l, blocks=blocks, interpret=interpret))
                    fns["pallas_rsparse"] = _bound(pal, x, args)
                    if have_triton:
                        tri = chain(lambda x, l: rsparse_gemv_triton(x, *l, blocks=blocks))
                        fns["triton_rsparse"] = _bound(tri, x, args)
                else:
                    max_kept = min(d_in, int(math.ceil(1.1 * budget.kept)) + 8)
                    gargs = [(w, sc, t, a, b) for (w, sc, t, a, b, _) in lay]
                    gat = chain(lambda x, g, mk=max_kept: rk.rsparse_gemv_gather(x, *g, max_kept=mk))
                    fns["jnp_gather"] = _bound(gat, x, gargs)
                times = _time(fns, repeats)
                base = times["dense"]
                for name, t in times.items():
                    if name == "dense":
                        continue
                    med, lo, hi = ratio_stats(base, t)
                    rows.append((f"{d_in}×{d_out}", s, alpha, budget.kept, budget.rank, name,
                                 statistics.median(base) / (layers * reps) * 1e6, statistics.median(t) / (layers * reps) * 1e6,
                                 med, lo, hi))
                print(rows[-1], flush=True)
    return rows


def table(rows) -> str:
    out = ["| layer | s | α | kept k | rank r | path | dense µs/layer | path µs/layer | speed-up vs dense (range) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for shp, s, a, k, r, name, td, tp, med, lo, hi in rows:
        out.append(f"| {shp} | {s} | {a} | {k} | {r} | {name} | {td:.1f} | {tp:.1f} | {med:.2f}× ({lo:.2f}–{hi:.2f}) |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_rsparse")
    ap.add_argument("--device", default=None, help="cpu | gpu (default: jax's default backend)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=None, help="passes over the layers per timed call (GPU: 8)")
    ap.add_argument("--shapes", default=None, help="e.g. 256x128,256x512 (default: 2048x2048,2048x8192)")
    ap.add_argument("--interpret", action="store_true", help="Pallas interpret mode (a CPU dry run of the GPU path)")
    args = ap.parse_args(argv)
    device = args.device or jax.default_backend()
    gpu = device == "gpu"
    layers = args.layers or (16 if gpu else 2)
    repeats = args.repeats or (30 if gpu else 5)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    shapes = tuple(tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")) if args.shapes else SHAPES
    reps = args.reps or (8 if gpu else 1)
    load0 = os.getloadavg()[0]
    rows = run(device, layers, repeats, dtype, reps=reps, shapes=shapes, interpret=args.interpret)
    load1 = os.getloadavg()[0]
    cmd = "bash bench/gpu_rsparse.sh" if gpu else "python -m bench.run_all rsparse"
    text = header("R-Sparse decode GEMV latency (1 token)", cmd)
    text += (f"- device: {device}; dtype {dtype}; {layers} distinct layers × {reps} passes per timed call (one dispatch); {repeats} interleaved "
             f"repeats; speed-up = median of paired dense/path time ratios\n"
             f"- 1-minute load average at start / end: {load0:.1f} / {load1:.1f} on {os.cpu_count()} cores (other jobs "
             f"running make CPU figures noisy)\n\n")
    text += table(rows)
    write_result(args.out or ("rsparse_bench_gpu.md" if gpu else "rsparse_bench_cpu.md"), text)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
