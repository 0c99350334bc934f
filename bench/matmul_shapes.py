"""Bare fp32 matmuls at the 140M decoder's train-step shapes (4×256 tokens): XLA:CPU against torch, interleaved.

    python -m bench.matmul_shapes [repeats=7]

Each row: the forward `x @ W`, the backward's `dY @ Wᵀ` and `Xᵀ @ dY` of the MLP, a q projection, one chunk of
the LM head and a large square matmul; GFLOP/s from the median of `repeats` rounds of 5 calls each; ratio =
torch time / jax time per round, median. docs/results/decoder_profile.md quotes it.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [("x @ W, MLP up", (1024, 576), (576, 2048), "nn"), ("dY @ Wᵀ, MLP", (1024, 2048), (576, 2048), "nt"),
          ("Xᵀ @ dY, MLP", (1024, 576), (1024, 2048), "tn"), ("x @ W, q", (1024, 576), (576, 576), "nn"),
          ("LM head chunk", (1024, 576), (576, 16384), "nn"), ("square", (2048, 2048), (2048, 2048), "nn")]


def _op(mode: str):
    return {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b}[mode]


def main(argv: list[str]) -> str:
    import torch

    torch.set_num_threads(2)
    repeats = int(dict(a.split("=", 1) for a in argv).get("repeats", 7))
    rng = np.random.default_rng(0)
    out = ["| matmul | m×k×n | jax GFLOP/s | torch GFLOP/s | torch time / jax time |", "|---|---|---|---|---|"]
    for name, sa, sb, mode in SHAPES:
        a, b = rng.standard_normal(sa, np.float32), rng.standard_normal(sb, np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        f, g = jax.jit(_op(mode)), _op(mode)
        y = f(ja, jb).block_until_ready()
        g(ta, tb)
        m, n = y.shape
        k = sa[0] if mode == "tn" else sa[1]
        rounds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(5):
                f(ja, jb).block_until_ready()
            t1 = time.perf_counter()
            for _ in range(5):
                g(ta, tb)
            rounds.append(((t1 - t0) / 5, (time.perf_counter() - t1) / 5))
        flop = 2 * m * n * k
        tj, tt = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[1] / r[0] for r in rounds)
        out.append(f"| {name} | {m}×{k}×{n} | {flop / tj / 1e9:.0f} | {flop / tt / 1e9:.0f} | {ratio:.2f} |")
    text = "\n".join(out)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
