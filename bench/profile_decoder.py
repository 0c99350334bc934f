"""Where the decoder's train step spends its time: XLA's per-op profile beside torch.profiler's, same shape.

    python -m bench.profile_decoder [preset=mobilellm_r1_140m batch=4 seq=256 steps=3 top=25 torch=1
                                     model.x=... (TransformerConfig overrides, e.g. model.logits_chunk=1024)]

Ours: the jitted train step (forward + backward + AdamW, the same step as bench_decoder) is traced with
`jax.profiler` for `steps` steps after a warm-up; every XLA op event of the trace (fusions, YNNPACK dots,
custom calls) is summed by op name and labelled with what it computes (the op's HLO opcode / fused root and
its shape, read from the compiled module). Theirs: transformers + torch on the same config and batch under
`torch.profiler` (CPU), `key_averages()` by self time. Both tables are per step, ms, largest first; the last
lines group ours into categories (matmuls, attention, elementwise, reductions, copies/transposes, ...).
Prints Markdown; docs/results/decoder_profile.md quotes it.
"""

from __future__ import annotations

import collections
import glob
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm import config as cfgmod
from jaxllm.models import get_preset
from jaxllm.train.lm import lm_task
from jaxllm.train.trainer import init_state, make_train_step


def _hlo_labels(hlo_text: str) -> dict[str, str]:
    """op name -> 'opcode shape' (for fusions: the fused computation's root op), from optimised HLO text."""
    labels: dict[str, str] = {}
    roots: dict[str, str] = {}
    comp = None
    for line in hlo_text.splitlines():
        m = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and "=" not in line.split("{")[0]:
            comp = m.group(1)
            continue
        m = re.match(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+?\[[^\]]*\]|\([^)]*\)|\S+)\s+([\w\-]+)\(", line)
        if not m:
            continue
        is_root, name, shape, opcode = m.groups()
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        labels[name] = f"{opcode} {shape}" + (f" calls={calls.group(1)}" if calls else "")
        if is_root and comp:
            roots[comp] = f"{opcode} {shape}"
    for name, lab in list(labels.items()):
        c = re.search(r"calls=([\w.\-]+)", lab)
        if c and c.group(1) in roots:
            labels[name] = lab.split(" calls=")[0] + f" [root {roots[c.group(1)]}]"
    return labels


def _category(label: str) -> str:
    lab = label.lower()
    if "dot" in lab or "ynn" in lab or "convolution" in lab:
        return "matmul (dot / YNNPACK)"
    if "reduce" in lab:
        return "reductions (softmax, norms, sums)"
    if any(k in lab for k in ("transpose", "copy", "concatenate", "slice", "pad", "bitcast", "dynamic-update")):
        return "copies / transposes / slices"
    if "gather" in lab or "scatter" in lab:
        return "gather / scatter (embedding, targets)"
    return "elementwise fusions and other"


def profile_ours(cfg, batch: int, seq: int, steps: int) -> tuple[list, float, dict]:
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    batch_j = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
    task = lm_task(cfg, optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1), None)
    state = init_state(task, 0)
    compiled = jax.jit(make_train_step(task), donate_argnums=0).lower(state, batch_j).compile()
    mem = compiled.memory_analysis()
    labels = _hlo_labels(compiled.as_text())
    state, m = compiled(state, batch_j)
    m["loss"].block_until_ready()
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = compiled(state, batch_j)
            m["loss"].block_until_ready()
        wall = (time.perf_counter() - t0) / steps
        jax.profiler.stop_trace()
        data = jax.profiler.ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[-1])
    per_op: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python" or "XLAEigen" in line.name:
                continue  # python-side events, and Eigen pool workers (their time is inside the op events)
            for e in line.events:
                if e.name.startswith(("ThreadpoolListener", "end: ")) or e.name not in labels:
                    continue
                per_op[e.name] += e.duration_ns / 1e6 / steps
    rows = sorted(((ms, name, labels.get(name, "?")) for name, ms in per_op.items()), reverse=True)
    memory = {"arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
              "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes}
    return rows, wall * 1e3, memory


def profile_torch(cfg, batch: int, seq: int, steps: int) -> tuple[list, float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.bench_decoder import _torch_model

    model = _torch_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.as_tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch, seq + 1)), dtype=torch.long)

    def step():
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    rows = sorted(((e.self_cpu_time_total / 1e3 / steps, e.key, e.count // steps) for e in prof.key_averages()),
                  reverse=True)
    return rows, wall * 1e3


def main(argv: list[str]) -> str:
    opts = {"preset": "mobilellm_r1_140m", "batch": "4", "seq": "256", "steps": "3", "top": "25", "torch": "1"}
    model_over = {}
    for a in argv:
        k, _, v = a.partition("=")
        if k.startswith("model."):
            model_over[k[len("model."):]] = v
        else:
            opts[k] = v
    batch, seq, steps, top = int(opts["batch"]), int(opts["seq"]), int(opts["steps"]), int(opts["top"])
    cfg = cfgmod.apply_overrides(get_preset(opts["preset"], max_seq_len=max(seq, 512)),
                                 [f"{k}={v}" for k, v in model_over.items()])
    rows, wall, mem = profile_ours(cfg, batch, seq, steps)
    total = sum(r[0] for r in rows)
    out = [f"## jaxllm train step {batch}×{seq} ({opts['preset']}{''.join(f', {k}={v}' for k, v in model_over.items())})",
           "", f"wall {wall:,.0f} ms per step; op events sum to {total:,.0f} ms (both cores' ops overlap, so the sum "
           f"can exceed the wall); memory_analysis: arguments {mem['arguments'] / 2**20:,.0f} MiB, temporaries "
           f"{mem['temporaries'] / 2**20:,.0f} MiB, outputs {mem['outputs'] / 2**20:,.0f} MiB, aliased "
           f"{mem['aliased'] / 2**20:,.0f} MiB", "", "| ms / step | share | op | what |", "|---|---|---|---|"]
    out += [f"| {ms:,.1f} | {ms / total:.1%} | `{name}` | `{lab[:110]}` |" for ms, name, lab in rows[:top]]
    cats: dict[str, float] = collections.defaultdict(float)
    for ms, _, lab in rows:
        cats[_category(lab)] += ms
    out += ["", "| category | ms / step | share |", "|---|---|---|"]
    out += [f"| {c} | {ms:,.0f} | {ms / total:.1%} |" for c, ms in sorted(cats.items(), key=lambda kv: -kv[1])]
    if opts["torch"] != "0":
        trows, twall = profile_torch(cfg, batch, seq, steps)
        ttotal = sum(r[0] for r in trows)
        out += ["", f"## transformers + torch, same step (self CPU time per step; wall {twall:,.0f} ms)", "",
                "| ms / step | share | op | calls / step |", "|---|---|---|---|"]
        out += [f"| {ms:,.1f} | {ms / ttotal:.1%} | `{k}` | {n} |" for ms, k, n in trows[:top]]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
