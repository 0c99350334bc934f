"""`python -m jaxllm.launch -n 2 --module tests.multihost.stubborn_child`: both processes print their pid once
up, then ignore SIGTERM and sleep (a process that a forwarded SIGTERM does not stop, as jax's preemption
handler makes of a worker), so only the launcher's SIGKILL ends them."""

import os
import signal
import time

import jax

from jaxllm import parallel

if __name__ == "__main__":
    parallel.barrier("both-up")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"process {jax.process_index()} pid {os.getpid()} up", flush=True)
    time.sleep(600)
