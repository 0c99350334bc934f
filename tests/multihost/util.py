"""Start the multi-host test children with a bounded time (killed on timeout): 2 processes x 2 CPU devices
through the launcher, or 1 process x 4 CPU devices directly (the reference)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.subprocess_util import ROOT

LIMIT_S = 400  # per run; the launcher's own --timeout is a little shorter so it stops its processes itself


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def launch(module: str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`python -m jaxllm.launch -n PROCESSES --module MODULE ARGS` with 2 devices per process."""
    cmd = [sys.executable, "-m", "jaxllm.launch", "-n", str(processes), "--timeout", str(LIMIT_S - 30),
           "--module", module, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:  # SIGTERM: the launcher forwards it and stops its processes
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"launcher still running after {LIMIT_S} s:\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def single(module: str, *args: str, devices: int = 4) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as one process with `devices` CPU devices."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(devices), capture_output=True,
                          text=True, timeout=LIMIT_S)


def fingerprints(out: str) -> list[str]:
    return [line.split("FINGERPRINT ", 1)[1] for line in out.splitlines() if "FINGERPRINT " in line]
