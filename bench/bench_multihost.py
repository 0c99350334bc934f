"""Multi-process overhead: step time of the 140M-shaped decoder (mobilellm_r1_140m) on 2 processes x 2 CPU
devices (gloo collectives over loopback) against 1 process x 4 devices, and the time to save and restore its
checkpoint (params + AdamW state, orbax, through `jaxllm.train.checkpoint.Checkpointer`) in both layouts.
Writes the table between the bench markers of docs/results/multihost.md.

    python -m bench.bench_multihost [repeats=5 batch=4 seq=64 save_repeats=3 tmp=DIR record=FILE.jsonl]
    python -m bench.bench_multihost report=FILE.jsonl [note=TEXT] ...   # the doc from a record file

Both layouts run at the same time, each in its own processes (`role=child`): the 2-process one through
`python -m jaxllm.launch -n 2`, the 1-process one directly. They hold their state in memory and take turns:
the parent writes a `go_<i>` file, the layout runs action i (warm-up = init + compile + one update; an update;
a synchronous save; a restore onto the same shardings) while the other layout sleeps, and process 0 writes
`done_<i>.json` with the seconds. Actions alternate layout by layout (two, one, two, one, ...), so drift in
the machine's load hits both alike.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, header

ROOT = Path(__file__).resolve().parent.parent
DOC = RESULTS / "multihost.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
LIMIT_S = 3000  # the whole benchmark
POLL_S = 0.02


def _wait_for(path: Path, procs: list, deadline: float) -> None:
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a benchmark process ended early (exit {p.returncode}) while waiting for {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} before the deadline")
        time.sleep(POLL_S)


def child(opts: dict) -> None:
    import jax
    import numpy as np

    from jaxllm import parallel
    from jaxllm.models import get_preset
    from jaxllm.optim import build
    from jaxllm.train.checkpoint import Checkpointer
    from jaxllm.train.lm import lm_task
    from jaxllm.train.trainer import TrainerConfig, _jit_step, _put_batch, init_state

    batch, seq = int(opts["batch"]), int(opts["seq"])
    turns = Path(opts["dir"])
    main = parallel.is_main_process()
    cfg = get_preset("mobilellm_r1_140m")
    mesh_cfg = parallel.MeshConfig(data=2, fsdp=2)
    task = lm_task(cfg, build.AdamWConfig(learning_rate=1e-4).build(1000), None)
    tcfg = TrainerConfig(steps=1000, mesh=mesh_cfg)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    state = step_fn = data = None
    i = 0
    while True:
        go = turns / f"go_{i}"
        while not go.exists():
            time.sleep(POLL_S)
        action = go.read_text().strip()
        if action == "stop":
            return
        t = time.perf_counter()
        out: dict = {}
        if action == "warm":
            mesh = parallel.make_mesh(mesh_cfg)
            state = init_state(task, 0, mesh)
            step_fn = _jit_step(task, tcfg, state, mesh)
            data = _put_batch({"tokens": tokens}, mesh)
            state, m = step_fn(state, data)
            out["loss"] = float(m["loss"])
            out["params"] = sum(x.size for x in jax.tree.leaves(state.params))
        elif action == "step":
            state, m = step_fn(state, data)
            out["loss"] = float(m["loss"])  # waits for the update
        elif action.startswith("save "):
            ckpt = Checkpointer(turns / "ckpt" / action.split()[1], keep=1, async_save=False)
            ckpt.save(int(state.step), state, {})
            ckpt.wait()
            ckpt.close()
        elif action.startswith("restore "):
            where = turns / "ckpt" / action.split()[1]
            ckpt = Checkpointer(where, keep=1, async_save=False)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            kind, state = type(state), None  # the restored state replaces it (one copy in memory, not two)
            restored = ckpt.restore_latest(abstract)  # also checks the saved fingerprint on device
            jax.block_until_ready(restored[1])
            ckpt.close()
            out["step"], state = restored[0], kind(*restored[1])
            del restored
        else:
            raise ValueError(f"unknown action {action!r}")
        parallel.barrier(f"action-{i}")  # every process of the layout has finished it
        out["s"] = time.perf_counter() - t
        if action.startswith("restore ") and main:
            shutil.rmtree(where)  # 1.7 GB per checkpoint
        if main:
            tmp = turns / f"done_{i}.tmp"
            tmp.write_text(json.dumps(out))
            tmp.rename(turns / f"done_{i}.json")
        i += 1


def _full_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return head + (" plus a working tree with uncommitted changes" if dirty else "")


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main(argv: list[str]) -> None:
    opts = {"repeats": "5", "batch": "4", "seq": "64", "save_repeats": "3",
            **dict(a.split("=", 1) for a in argv if "=" in a)}
    if opts.get("role") == "child":
        child(opts)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop the layouts' processes too
    args = [f"{k}={v}" for k, v in opts.items() if k not in ("report", "note")]
    if opts.get("report"):  # only write the doc from a record file (a run the OOM killer ended, say)
        write_doc(*_from_record(opts["report"]), opts, args, opts.get("note", ""))
        return
    repeats, save_repeats = int(opts["repeats"]), int(opts["save_repeats"])
    layouts = {"2 processes x 2 devices": "two", "1 process x 4 devices": "one"}
    actions = ["warm"] + ["step"] * repeats + [f"{a} {k}" for k in range(save_repeats) for a in ("save", "restore")]
    times: dict[str, dict[str, list[float]]] = {name: {} for name in layouts}
    info: dict[str, dict] = {}
    deadline = time.monotonic() + LIMIT_S
    if opts.get("tmp"):
        Path(opts["tmp"]).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=opts.get("tmp")) as tmp:
        procs, logs = [], []
        for tag in layouts.values():
            d = Path(tmp) / tag
            d.mkdir()
            me = ["role=child", *[f"{k}={v}" for k, v in opts.items() if k in ("batch", "seq")], f"dir={d}"]
            if tag == "two":
                cmd = [sys.executable, "-m", "jaxllm.launch", "-n", "2", "--timeout", str(LIMIT_S),
                       "--module", "bench.bench_multihost", *me]
                devices = 2
            else:
                cmd, devices = [sys.executable, "-m", "bench.bench_multihost", *me], 4
            env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
            log = open(d.parent / f"{tag}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            for i, action in enumerate(actions):
                for name, tag in layouts.items():
                    d = Path(tmp) / tag
                    (d / f"go_{i}").write_text(action)
                    _wait_for(d / f"done_{i}.json", procs, deadline)
                    out = json.loads((d / f"done_{i}.json").read_text())
                    times[name].setdefault(action.split()[0], []).append(out["s"])
                    if opts.get("record"):  # every measurement as it comes (kept if a later action fails)
                        with open(opts["record"], "a") as f:
                            f.write(json.dumps({"layout": name, "action": action, **out}) + "\n")
                    if action == "warm":
                        info[name] = out
                    elif action == "step":
                        info[name].setdefault("losses", []).append(out["loss"])
            for tag in layouts.values():
                (Path(tmp) / tag / f"go_{len(actions)}").write_text("stop")
            for p in procs:
                p.wait(timeout=120)
        except BaseException:
            for p in procs:  # the launcher forwards SIGTERM and kills its processes if they ignore it
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            for log in logs:
                log.flush()
            for tag in layouts.values():
                sys.stderr.write(f"--- {tag}.log ---\n" + (Path(tmp) / f"{tag}.log").read_text()[-3000:])
            raise
        finally:
            for log in logs:
                log.close()
    write_doc(times, info, opts, args)


def _from_record(path: str) -> tuple[dict, dict]:
    """(times, info) of a `record=` file: what a run measured before it ended (completely or not)."""
    times: dict[str, dict[str, list[float]]] = {}
    info: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        times.setdefault(r["layout"], {}).setdefault(r["action"].split()[0], []).append(r["s"])
        if r["action"] == "warm":
            info[r["layout"]] = dict(r)
        elif r["action"] == "step":
            info[r["layout"]].setdefault("losses", []).append(r["loss"])
    return times, info


def write_doc(times: dict, info: dict, opts: dict, args: list[str], note: str = "") -> None:
    load = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    names = list(times)
    two, one = (times[n] for n in names)

    def cell(t, key):
        return f"{_stats(t[key])}, n={len(t[key])}" if t.get(key) else "—"

    rows = ["| layout | warm-up (init + compile + 1 update) s | update s, median (range) | save s, median (range) | "
            "restore s, median (range) |", "|---|---|---|---|---|"]
    for name in names:
        t = times[name]
        rows.append(f"| {name} | {t['warm'][0]:.1f} | {cell(t, 'step')} | {cell(t, 'save')} | {cell(t, 'restore')} |")
    ratios = [a / b for a, b in zip(two["step"], one["step"])]
    n = info[names[1]]["params"]
    a, b = info[names[0]]["losses"], info[names[1]]["losses"]
    worst = max(abs(x - y) for x, y in zip(a, b))
    head = header("Multi-process overhead (bench_multihost)", "python -m bench.bench_multihost " + " ".join(args))
    head = "\n".join(f"- commit: `{_full_commit()}`" if line.startswith("- commit: ") else line
                     for line in head.splitlines()) + "\n"
    text = ("###" + head[1:]
            + f"mobilellm_r1_140m ({n / 1e6:.1f}M parameters, full width), AdamW, batch {opts['batch']} x "
            f"{opts['seq']} tokens, mesh data=2 x fsdp=2 in both layouts. Interleaved: each action ran in one "
            f"layout while the other slept, alternating (warm-up, then {opts['repeats']} updates each, then "
            f"{opts['save_repeats']} save + restore pairs each). Save = `Checkpointer.save` synchronous (orbax, "
            f"params + AdamW moments + step + rng, with the on-device fingerprint); restore = "
            f"`restore_latest` onto the same shardings (with the fingerprint check).\n\n"
            + (note + "\n\n" if note else "")
            + "\n".join(rows) + "\n\n"
            f"Per-repeat ratio of update time, 2x2 / 1x4: median {statistics.median(ratios):.2f} "
            f"(range {min(ratios):.2f}–{max(ratios):.2f}, n={len(ratios)}). Losses of the two layouts on the same "
            f"batch, update by update: largest difference {worst:.2g} (float32 reduction order).\n\n"
            f"Load average when the table was written: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (`{uptime}`; the benchmark's own "
            f"three processes count in it).\n")
    doc = DOC.read_text() if DOC.exists() else f"{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    before, rest = doc.split(START, 1)
    DOC.write_text(before + START + "\n" + text + END + rest.split(END, 1)[1])
    print(text)
    print(json.dumps(times))


if __name__ == "__main__":
    main(sys.argv[1:])
