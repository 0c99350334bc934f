"""Child process for the RL SIGKILL resume test: `python -m tests.rl.resume_child RUN_DIR LOSS`.

Env: SLEEP (seconds per logged step, so the parent can kill it mid-run)."""

import os
import sys
import time

from jaxllm.train import train
from jaxllm.train.checkpoint import fingerprint
from tests.rl.loop_toy import toy_run


def main(run_dir: str, loss: str) -> None:
    sleep = float(os.environ.get("SLEEP", "0"))
    cfg, task = toy_run(loss, kl_beta=0.04 if loss == "d1" else 0.0)
    result = train(cfg, task, run_dir, hooks=[lambda step, row: time.sleep(sleep)] if sleep else [])
    print("FINGERPRINT", fingerprint(result.state), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
