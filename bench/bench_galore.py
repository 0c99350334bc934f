"""GaLore benchmark: optimizer-state bytes (AdamW vs GaLore, real decoder shapes via jax.eval_shape, nothing
allocated) and optimizer-update step time without / with a projector refresh (exact vs randomized SVD) at
2048x2048 and 1536x6144 with r = 128 and 512, against galore-torch 1.0 and torch AdamW in the same run.

    python -m bench.run_all galore                      # CPU, writes docs/results/galore_bench.md
    python -m bench.bench_galore --quick                # small shapes, smoke test
    python -m bench.bench_galore --out galore_bench_gpu.md   # on a GPU machine (torch on cuda too)
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import fmt_ratio, header, interleaved, ratio_stats, write_result
from jaxllm.models import presets
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.optim import galore as gl


@functools.lru_cache(maxsize=None)
def load_galore_torch():
    """galore_torch.GaLoreAdamW; its __init__ imports bitsandbytes (8-bit variant), so fall back to loading
    the two modules we need straight from the installed package when bitsandbytes is absent."""
    try:
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW
    except ImportError:
        sys.modules.pop("galore_torch", None)
        roots = [Path(p) / "galore_torch" for p in sys.path if (Path(p or ".") / "galore_torch" / "adamw.py").exists()]
        if not roots:
            raise
        root = roots[0]
        pkg = types.ModuleType("galore_torch")
        pkg.__path__ = [str(root)]
        sys.modules["galore_torch"] = pkg
        for name in ("galore_projector", "adamw"):
            s = importlib.util.spec_from_file_location(f"galore_torch.{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(s)
            sys.modules[f"galore_torch.{name}"] = mod
            s.loader.exec_module(mod)
        pkg.GaLoreAdamW = sys.modules["galore_torch.adamw"].AdamW
        return pkg.GaLoreAdamW


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def memory_section(cases=(("mobilellm_r1_140m", (64, 128)), ("mobilellm_r1_950m", (128, 256, 384)))) -> str:
    lines = ["## Optimizer-state bytes (fp32 moments; `jax.eval_shape`, nothing allocated)\n",
             "GaLore on attention/MLP kernels (projector + low-rank moments), AdamW on embeddings/head/norms.\n",
             "| model | params | AdamW state | GaLore r | GaLore state | ratio | matrices: AdamW → GaLore |",
             "|---|---|---|---|---|---|---|"]
    for name, ranks in cases:
        cfg = presets.get_preset(name)
        params = jax.eval_shape(lambda c=cfg: tfm.init_params(c, jax.random.PRNGKey(0)))
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        adamw = _bytes(jax.eval_shape(optax.adamw(1e-3).init, params))
        labels = jax.tree.leaves(build.transformer_labels(params))
        mat_elems = sum(int(np.prod(x.shape)) for x, lab in zip(jax.tree.leaves(params), labels) if lab == "galore")
        for r in ranks:
            state = jax.eval_shape(build.galore_adamw(1e-3, rank=r).init, params)
            galore = _bytes(state)
            gal_leaves = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, gl.GaLoreLeafState))
                          if isinstance(s, gl.GaLoreLeafState)]
            mat_state = sum(_bytes((s.projector, s.mu, s.nu)) for s in gal_leaves)
            lines.append(f"| {name} | {n_params / 1e6:.1f}M | {adamw / 2**20:.1f} MiB | {r} | {galore / 2**20:.1f} MiB | "
                         f"{galore / adamw:.3f} | {2 * 4 * mat_elems / 2**20:.1f} → {mat_state / 2**20:.1f} MiB |")
    return "\n".join(lines) + "\n\n"


def _jax_fns(m, n, r, key):
    kp, kg = jax.random.split(key)
    p = {"w": jax.random.normal(kp, (m, n), jnp.float32)}
    g = {"w": jax.random.normal(kg, (m, n), jnp.float32)}

    def stepper(tx):
        @jax.jit
        def step(g, s, p):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        return step

    adamw = optax.adamw(1e-3)
    adamw_state = adamw.init(p)
    adamw_step = stepper(adamw)
    fns = {"jax adamw": lambda: jax.block_until_ready(adamw_step(g, adamw_state, p))}
    for proj, variant in (("svd", "fast"), ("randomized", "fast"), ("randomized-halko", "halko")):
        tx = gl.galore_only(1e-3, rank=r, update_proj_gap=10**9, projector=proj.split("-")[0],
                            randomized_variant=variant)
        s0 = tx.init(p)
        step = stepper(tx)
        _, s1 = step(g, s0, p)  # count 1, projector set: later calls from s1 never refresh
        if proj == "svd":
            fns["jax galore (no refresh)"] = (lambda st=s1, f=step: jax.block_until_ready(f(g, st, p)))
        fns[f"jax galore refresh {proj}"] = (lambda st=s0, f=step: jax.block_until_ready(f(g, st, p)))
    return fns


def _torch_fns(m, n, r, device):
    import torch

    GaLoreAdamW = load_galore_torch()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(m, n, generator=gen).to(device)
    grad = torch.randn(m, n, generator=gen).to(device)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)

    def make(opt_factory):
        p = torch.nn.Parameter(w.clone())
        p.grad = grad.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = opt_factory(p)
        opt.step()  # state (and the first projector) exists from here on

        def f():
            opt.step()
            sync()

        return f

    group = lambda p, gap: [{"params": [p], "rank": r, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"}]
    return {
        "torch adamw": make(lambda p: torch.optim.AdamW([p], lr=1e-3)),
        "galore-torch (no refresh)": make(lambda p: GaLoreAdamW(group(p, 10**9), lr=1e-3)),
        "galore-torch refresh svd": make(lambda p: GaLoreAdamW(group(p, 1), lr=1e-3)),
    }


def _ms(ts):
    return f"{1e3 * statistics.median(ts):.2f}"


def timing_section(shapes, ranks, repeats, refresh_repeats, torch_device, with_torch=True) -> tuple[str, list]:
    rows = ["## Optimizer update time (one matrix, jitted update + apply; median ms over interleaved repeats)\n",
            "| shape | r | jax AdamW | jax GaLore no-refresh | ratio vs AdamW | torch AdamW | galore-torch no-refresh | "
            "torch ratio | jax refresh exact | jax refresh randomized | exact / randomized | randomized (halko variant) | "
            "galore-torch refresh |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    raw = []
    for (m, n) in shapes:
        for r in ranks:
            jf = _jax_fns(m, n, r, jax.random.PRNGKey(0))
            tf = _torch_fns(m, n, r, torch_device) if with_torch else {}
            cheap = {k: v for k, v in {**jf, **tf}.items() if "refresh " not in k}
            dear = {k: v for k, v in {**jf, **tf}.items() if "refresh " in k}
            t1 = interleaved(cheap, repeats=repeats, warmup=2)
            t2 = interleaved(dear, repeats=refresh_repeats, warmup=1)
            t = {**t1, **t2}
            raw.append(((m, n), r, t))
            tor = (lambda k, t=t: _ms(t[k]) if k in t else "–")
            rows.append(
                f"| {m}×{n} | {r} | {_ms(t['jax adamw'])} | {_ms(t['jax galore (no refresh)'])} | "
                f"{fmt_ratio(t['jax galore (no refresh)'], t['jax adamw'])} | {tor('torch adamw')} | "
                f"{tor('galore-torch (no refresh)')} | "
                + (f"{fmt_ratio(t['galore-torch (no refresh)'], t['torch adamw'])}" if with_torch else "–")
                + f" | {_ms(t['jax galore refresh svd'])} | {_ms(t['jax galore refresh randomized'])} | "
                f"{fmt_ratio(t['jax galore refresh svd'], t['jax galore refresh randomized'])} | "
                f"{_ms(t['jax galore refresh randomized-halko'])} | {tor('galore-torch refresh svd')} |")
            print(rows[-1], flush=True)
    return "\n".join(rows) + "\n\n", raw


def targets_section(raw) -> str:
    lines = ["## Targets\n"]
    for (m, n), r, t in raw:
        no_ref = ratio_stats(t["jax galore (no refresh)"], t["jax adamw"])[0]
        speed = ratio_stats(t["jax galore refresh svd"], t["jax galore refresh randomized"])[0]
        lines.append(f"- {m}×{n}, r={r}: no-refresh update / AdamW = {no_ref:.2f}× (target ≤ 1.1: "
                     f"{'met' if no_ref <= 1.1 else 'NOT met'}); exact / randomized refresh = {speed:.1f}× "
                     f"(target ≥ 5: {'met' if speed >= 5 else 'NOT met'})")
    return "\n".join(lines) + "\n\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_galore")
    ap.add_argument("--quick", action="store_true", help="small shapes and ranks (smoke test)")
    ap.add_argument("--out", default="galore_bench.md")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--refresh-repeats", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        shapes, ranks = [(256, 256), (192, 768)], [16, 64]
    else:
        shapes, ranks = [(2048, 2048), (1536, 6144)], [128, 512]
    device = "cpu"
    if not args.no_torch:
        import torch

        device = "cuda" if torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"
    cmd = "python -m bench.bench_galore " + " ".join(argv) if argv else "python -m bench.run_all galore"
    text = header("GaLore: optimizer state and update time", cmd)
    text += (f"torch device: {device}; jax device: {jax.devices()[0].device_kind}. Timing: `bench.common.interleaved`, "
             f"{args.repeats} repeats (update without refresh), {args.refresh_repeats} (with refresh); ratios are "
             "median (range) of per-repeat ratios. GaLore update = project, Adam on r-rank moments, project back, "
             "apply (scale 0.25, std side); 'refresh' steps also recompute the projector (exact: full fp32 SVD; "
             "randomized: range finder, oversample 8, 2 power iterations, `fast` variant = 3 QRs + eigh of the l x l "
             "Gram matrix; `halko` variant = Alg. 4.4, 5 QRs + SVD of the sketch).\n\n")
    text += memory_section()
    timing, raw = timing_section(shapes, ranks, args.repeats, args.refresh_repeats, device, not args.no_torch)
    text += timing + targets_section(raw)
    write_result(args.out, text)


if __name__ == "__main__":
    main(sys.argv[1:])
