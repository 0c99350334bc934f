"""Child process for the SIGKILL resume test: `python -m tests.train.resume_child RUN_DIR`.

Env: SOURCE=1 (train `source_task()` under SOURCE_CFG: a state-dependent batch source, μ = 2), SLEEP (seconds per log step, so the parent can kill it mid-run), KILL_AT (a step at which it SIGKILLs
itself right after logging, while the previous checkpoint's async save may still be in flight).
"""

import os
import signal
import sys
import time

from jaxllm.train import train
from jaxllm.train.checkpoint import fingerprint
from tests.train.helpers import RESUME_CFG, SOURCE_CFG, regression_task, source_task


def main(run_dir: str) -> None:
    sleep = float(os.environ.get("SLEEP", "0"))
    kill_at = int(os.environ.get("KILL_AT", "0"))

    def hook(step, row):
        if sleep:
            time.sleep(sleep)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if os.environ.get("SOURCE") == "1":
        result = train(SOURCE_CFG, source_task(), run_dir, hooks=[hook])
    else:
        result = train(RESUME_CFG, regression_task(), run_dir, hooks=[hook])
    print("FINGERPRINT", fingerprint(result.state), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
