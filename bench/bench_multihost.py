"""Multi-process overhead: step time of the 140M-shaped decoder (mobilellm_r1_140m) on 2 processes x 2 CPU
devices (gloo collectives over loopback) against 1 process x 4 devices, and the time to save and restore its
checkpoint (params + AdamW state, orbax) in both layouts. Writes the table between the bench markers of
docs/results/multihost.md.

    python -m bench.bench_multihost [steps=3 batch=4 seq=64]

Each layout runs in its own processes (`role=child` is one of them): init, compile, `steps` timed updates,
a synchronous save, a restore onto the same shardings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, header

ROOT = Path(__file__).resolve().parent.parent
DOC = RESULTS / "multihost.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
LIMIT_S = 1800


def child(opts: dict) -> None:
    import jax
    import numpy as np

    from jaxllm import parallel
    from jaxllm.models import get_preset
    from jaxllm.optim import build
    from jaxllm.train.checkpoint import Checkpointer
    from jaxllm.train.lm import lm_task
    from jaxllm.train.trainer import TrainerConfig, _jit_step, _put_batch, init_state

    steps, batch, seq = int(opts["steps"]), int(opts["batch"]), int(opts["seq"])
    cfg = get_preset("mobilellm_r1_140m")
    mesh_cfg = parallel.MeshConfig(data=2, fsdp=2)
    mesh = parallel.make_mesh(mesh_cfg)
    task = lm_task(cfg, build.AdamWConfig(learning_rate=1e-4).build(steps + 1), None)
    tcfg = TrainerConfig(steps=steps + 1, mesh=mesh_cfg)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    t = time.perf_counter()
    state = init_state(task, 0, mesh)
    step_fn = _jit_step(task, tcfg, state, mesh)
    data = _put_batch({"tokens": tokens}, mesh)
    state, m = step_fn(state, data)
    jax.block_until_ready(m)
    first = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step_fn(state, data)
        float(m["loss"])
        times.append(time.perf_counter() - t)
    ckpt = Checkpointer(Path(opts["dir"]) / "checkpoints", keep=1, async_save=False)
    parallel.barrier("save")
    t = time.perf_counter()
    ckpt.save(steps + 1, state, {})
    ckpt.wait()
    parallel.barrier("saved")
    save_s = time.perf_counter() - t
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    t = time.perf_counter()
    restored = ckpt.restore_latest(abstract)
    jax.block_until_ready(restored[1])
    restore_s = time.perf_counter() - t
    ckpt.close()
    if parallel.is_main_process():
        print("RESULT " + json.dumps({"first_s": first, "step_s": times, "save_s": save_s, "restore_s": restore_s,
                                      "params": sum(x.size for x in jax.tree.leaves(state.params))}), flush=True)


def _run(cmd: list[str], devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LIMIT_S)
    found = re.search(r"RESULT (\{.*\})", out.stdout)
    if out.returncode or not found:
        raise RuntimeError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(found.group(1))


def main(argv: list[str]) -> None:
    opts = {"steps": "3", "batch": "4", "seq": "64", **dict(a.split("=", 1) for a in argv if "=" in a)}
    if opts.get("role") == "child":
        child(opts)
        return
    args = [f"{k}={v}" for k, v in opts.items()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        me = ["--module", "bench.bench_multihost"]
        results["2 processes x 2 devices"] = _run(
            [sys.executable, "-m", "jaxllm.launch", "-n", "2", "--timeout", str(LIMIT_S - 60), *me, "role=child",
             *args, f"dir={tmp}/two"], devices=2)
        results["1 process x 4 devices"] = _run(
            [sys.executable, "-m", "bench.bench_multihost", "role=child", *args, f"dir={tmp}/one"], devices=4)
    load = os.getloadavg()[0]
    rows = ["| layout | first step (compile) s | step s (median of %s) | save s | restore s |" % opts["steps"],
            "|---|---|---|---|---|"]
    for name, r in results.items():
        med = sorted(r["step_s"])[len(r["step_s"]) // 2]
        rows.append(f"| {name} | {r['first_s']:.1f} | {med:.2f} | {r['save_s']:.2f} | {r['restore_s']:.2f} |")
    n = next(iter(results.values()))["params"]
    text = (header("Multi-process overhead (bench_multihost)", "python -m bench.bench_multihost " + " ".join(args))
            + f"mobilellm_r1_140m ({n / 1e6:.0f}M parameters), AdamW, batch {opts['batch']} x {opts['seq']} tokens, "
            f"mesh data=2 x fsdp=2; load average at the end {load:.1f}.\n\n" + "\n".join(rows) + "\n")
    doc = DOC.read_text() if DOC.exists() else f"{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    before, rest = doc.split(START, 1)
    DOC.write_text(before + START + "\n" + text + END + rest.split(END, 1)[1])
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
