"""`python -m jaxllm.launch -n 2 --module tests.multihost.crash_child CODE`: process 1 exits with CODE once
both processes are up; process 0 then waits in a barrier that can never complete (as a process does in a
collective whose peer died), so only the launcher can end it."""

import sys

import jax

from jaxllm import parallel

if __name__ == "__main__":
    print(f"process {jax.process_index()} of {jax.process_count()} up", flush=True)
    parallel.barrier("both-up")
    if jax.process_index() == 1:
        sys.exit(int(sys.argv[1]))
    parallel.barrier("never")
