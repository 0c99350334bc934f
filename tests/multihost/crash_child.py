"""`python -m jaxllm.launch -n 2 --module tests.multihost.crash_child CODE [late]`: process 1 exits with CODE
once both processes are up; process 0 then waits in a barrier that can never complete (as a process does in a
collective whose peer died), so only the launcher can end it.

`late`: process 1 records its failure (as every worker does on its way out) and takes 3 s to exit, while process
0, seeing that record, fails at once with exit code 1 (as gloo fails a process whose peer died): process 0 is
reaped first, but process 1 failed first."""

import os
import sys
import time

import jax

from jaxllm import launch, parallel

if __name__ == "__main__":
    print(f"process {jax.process_index()} of {jax.process_count()} up", flush=True)
    parallel.barrier("both-up")
    code, late = int(sys.argv[1]), sys.argv[2:] == ["late"]
    if jax.process_index() == 1:
        if late:
            launch.record_failure(code)
            time.sleep(3.0)
            os._exit(code)
        sys.exit(code)
    if late:
        peer_record = os.path.join(os.environ[launch.FAILURE_DIR_ENV], "p1")
        while not os.path.exists(peer_record):
            time.sleep(0.01)
        os._exit(1)
    parallel.barrier("never")
