"""Run a Python snippet in a fresh process with N forced CPU devices (multi-device tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, devices: int = 8, timeout: int = 600, env: dict | None = None) -> str:
    """Run `code` with `XLA_FLAGS=--xla_force_host_platform_device_count=devices`; return stdout.

    Raises AssertionError with the child's stderr when it exits non-zero.
    """
    full_env = dict(os.environ)
    full_env.update({
        # The concurrency-optimised CPU scheduler has deadlocked sharded steps in XLA:CPU's collective rendezvous
        # on 2 loaded cores (4 forced devices, GaLore); the plain scheduler has not.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                     "--xla_cpu_enable_concurrency_optimized_scheduler=false",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
    })
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout
