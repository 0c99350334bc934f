"""Run one experiment on several processes of JAX's multi-controller runtime (`jax.distributed`).

    python -m jaxllm.launch -n 2 EXP key=value ...     # 2 local processes on loopback (make train PROCS=2)
    python -m jaxllm.launch --worker EXP key=value ... # this process is one of many (SLURM, a TPU pod slice)

The arguments are those of `python -m experiments EXP key=value ...`. With `-n N` the launcher starts N
processes on 127.0.0.1 with a free coordinator port; each gets the CPU devices its `XLA_FLAGS` gives it
(`--xla_force_host_platform_device_count=2` with `-n 2` forms one 4-device mesh: set `trainer.mesh.*` to 4).
It forwards SIGINT / SIGTERM (and kills the processes still running STOP_GRACE_S later: jax's preemption
handler catches SIGTERM in a worker), prefixes each line of output with `[pI]`, and when a process dies it
names the process and its exit code and stops the others (which would otherwise wait forever in a collective).

`--worker` initialises the runtime (`jaxllm.parallel.initialize`: the JAXLLM_* / JAX_* coordinator variables
the launcher sets, or jax's own SLURM / TPU / Open MPI detection) before any other JAX call, then runs the
experiment module in this process. `--module` runs another module's `__main__` the same way (tests use it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import runpy
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Optional, Sequence

EXPERIMENTS = "experiments"
STOP_GRACE_S = 10.0  # after SIGTERM, seconds before the remaining processes get SIGKILL
FAILURE_DIR_ENV = "JAXLLM_FAILURE_DIR"  # where each worker records when and how it failed, before it exits


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def with_run_dir(module: str, args: Sequence[str]) -> list[str]:
    """The experiment's arguments with an explicit `run_dir=`: every process must write to one run directory,
    and each would otherwise stamp its own from its clock."""
    args = list(args)
    if module != EXPERIMENTS or not args or args[0].startswith("-") or any(a.startswith("run_dir=") for a in args):
        return args
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return [*args, f"run_dir={os.path.join('runs', args[0], stamp)}"]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


class _Output:
    """The launcher's output stream, which may close under it (its reader, e.g. a piping parent, died): a write
    that fails is dropped, never raised, so the launcher still stops the processes it started."""

    def __init__(self, stream):
        self.stream, self.lost = stream, False

    def write(self, text: str) -> None:
        if self.lost:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, or a closed file
            self.lost = True

    def flush(self) -> None:
        self.write("")


def _die_with_launcher() -> None:
    """Linux: this worker gets SIGKILL when the launcher that started it dies (even by SIGKILL), instead of
    living on as an orphan that waits in a collective forever. Elsewhere a no-op."""
    launcher = os.environ.get("JAXLLM_LAUNCHER_PID")
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):  # the launcher died before prctl took effect
        os._exit(128 + signal.SIGKILL)


def record_failure(code: int, env=None) -> None:
    """This worker's failure, written before it exits: `<JAXLLM_FAILURE_DIR>/p<index>` holds its monotonic time
    (CLOCK_MONOTONIC: one clock for every process of the machine) and exit code. The launcher orders failures by
    these times, not by when it reaps the processes: a peer that fails *because* this one died (gloo sees the
    closed socket) may be reaped first."""
    env = os.environ if env is None else env
    folder, index = env.get(FAILURE_DIR_ENV), env.get("JAXLLM_PROCESS_ID")
    if not folder or index is None:
        return
    path = os.path.join(folder, f"p{index}")
    try:
        with open(path + ".tmp", "w") as f:
            f.write(f"{time.monotonic()!r} {int(code)}\n")
        os.replace(path + ".tmp", path)
    except OSError:  # the launcher is gone (its folder removed): nobody to tell
        pass


def read_failures(folder: str) -> dict[int, tuple[float, int]]:
    """process -> (failure time, exit code) of the workers that recorded one (`record_failure`)."""
    out = {}
    for name in os.listdir(folder) if folder and os.path.isdir(folder) else ():
        if not (name.startswith("p") and name[1:].isdigit()):
            continue
        try:
            when, code = open(os.path.join(folder, name)).read().split()
            out[int(name[1:])] = (float(when), int(code))
        except (OSError, ValueError):  # being written: the next poll reads it
            continue
    return out


def first_failure(exits: Sequence[tuple[int, int, float]], recorded: dict[int, tuple[float, int]]):
    """(process, exit code) of the failure that came first, or None. exits: (process, code, time reaped) of the
    processes that ended; recorded: the failures the workers wrote down themselves (`read_failures`), which count
    even before their process is reaped. A failure a worker recorded is timed by its record (earlier than its
    exit); one it could not record (killed by a signal, a C++ abort) by when it was reaped."""
    times = {i: (when, code) for i, code, when in exits if code != 0}
    for i, (when, code) in recorded.items():
        if code != 0:
            times[i] = (min(when, times.get(i, (when, code))[0]), code)
    if not times:
        return None
    i = min(times, key=lambda j: (times[j][0], j))
    return i, times[i][1]


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def launch(n: int, args: Sequence[str], module: str = EXPERIMENTS, timeout: float = 0.0,
           env: Optional[dict] = None, out=None) -> int:
    """Run `python -m jaxllm.launch --worker --module MODULE ARGS` as `n` processes on loopback; return 0 when
    all exit 0, else the exit code of the first that failed (128 + signal for a signal, as a shell does).
    timeout > 0: stop every process after that many seconds (exit 124)."""
    if n < 1:
        raise ValueError(f"-n must be >= 1, got {n}")
    out = _Output(out or sys.stdout)
    address = f"127.0.0.1:{free_port()}"
    args = with_run_dir(module, args)
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    pumps = []
    exits: list[tuple[int, int, float]] = []  # (process, exit code, when reaped)
    failure_dir = tempfile.mkdtemp(prefix="jaxllm-launch-")  # the workers' own failure records: the first is the cause
    for i in range(n):
        child_env = {**base, "JAXLLM_COORDINATOR_ADDRESS": address, "JAXLLM_NUM_PROCESSES": str(n),
                     "JAXLLM_PROCESS_ID": str(i), "JAXLLM_LAUNCHER_PID": str(os.getpid()),
                     FAILURE_DIR_ENV: failure_dir, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen([sys.executable, "-m", "jaxllm.launch", "--worker", "--module", module, *args],
                             env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # its own process group: signals reach its threads' children too
        procs.append(p)
        t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out), daemon=True)
        t.start()
        pumps.append(t)
        threading.Thread(target=lambda i=i, p=p: exits.append((i, p.wait(), time.monotonic())), daemon=True).start()

    def signal_all(sig):
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass

    received: list[tuple[int, float]] = []  # (signal, when)

    def forward(sig, _frame):
        received.append((sig, time.monotonic()))
        signal_all(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    start = time.monotonic()
    code = 0
    try:
        while True:
            ended = list(exits)
            failed = first_failure(ended, read_failures(failure_dir)) if any(c for _, c, _ in ended) else None
            if failed:
                i, c = failed
                still = [j for j, p in enumerate(procs) if p.poll() is None]
                what = f"received {signal.Signals(received[0][0]).name}" if received else "failed"
                out.write(f"launch: process {i} of {n} {what}: exit code {describe_exit(c)}"
                          + (f"; stopping processes {still}\n" if still else "\n"))
                code = 128 - c if c < 0 else c
                break
            if len(ended) == n:
                break
            if received and time.monotonic() - received[0][1] > STOP_GRACE_S:
                # jax.distributed's preemption notifier catches SIGTERM in the workers: they keep running
                out.write(f"launch: received {signal.Signals(received[0][0]).name}; processes still running after "
                          f"{STOP_GRACE_S:g} s: stopping all {n}\n")
                code = 128 + received[0][0]
                break
            if timeout and time.monotonic() - start > timeout:
                out.write(f"launch: timeout after {timeout:g} s; stopping all {n} processes\n")
                code = 124
                break
            time.sleep(0.05)
    finally:
        signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal_all(signal.SIGKILL)
        for p in procs:
            p.wait()
        for t in pumps:
            t.join(timeout=5)
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(failure_dir, ignore_errors=True)
        out.flush()
    return code


def worker(module: str, args: Sequence[str]) -> None:
    """Initialise the distributed runtime, then run `module` as `python -m module ARGS` would.

    A failure leaves at once with its exit code (os._exit): a normal exit would first wait in
    `jax.distributed.shutdown`'s barrier for the processes that are still working, i.e. forever."""
    from jaxllm import parallel

    _die_with_launcher()
    parallel.initialize(detect=True)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code:
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            _leave(code)
    except KeyboardInterrupt:
        _leave(128 + signal.SIGINT)
    except BaseException:  # noqa: BLE001 - report, then leave without the shutdown barrier
        traceback.print_exc()
        _leave(1)


def _leave(code: int) -> None:
    record_failure(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxllm.launch", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("-n", "--processes", type=int, help="start this many local processes on 127.0.0.1")
    mode.add_argument("--worker", action="store_true", help="be one process of a multi-process run")
    parser.add_argument("--module", default=EXPERIMENTS, help="module run in each process (default: experiments)")
    parser.add_argument("--timeout", type=float, default=0.0, help="stop all processes after this many seconds")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="EXP key=value ... (as for python -m experiments)")
    opts = parser.parse_args(argv)
    if opts.worker:
        worker(opts.module, opts.args)
        return 0
    try:
        return launch(opts.processes, opts.args, opts.module, opts.timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
