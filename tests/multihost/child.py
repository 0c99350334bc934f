"""One process of the multi-host tests: `python -m tests.multihost.child RUN_DIR [key=value ...]`, started by
`python -m jaxllm.launch -n 2 --module tests.multihost.child ...` (2 processes x 2 CPU devices) or directly
with 4 CPU devices (the 1-process reference).

Trains a tiny decoder (next-token loss, `lm_task`) on random tokens for `steps` updates on a 4-device data
mesh, the data pipeline sharded by process (`minibatches(..., shard=parallel.process_shard(...))`, so each
process reads only its rows). Keys: steps, checkpoint_every, optim (adamw | galore), kill_process and kill_at
(that process SIGKILLs itself right after logging that step, once the last checkpoint before it is committed),
sleep (seconds per log step), rows (write the row ids each process read to rows_p<I>.json), files (a
directory of jsonl / parquet files of documents written as token ids, "7 12 3": each process reads only its
rows of them with `pipeline.file_batches`, the trainer assembles the global batch from the processes' rows,
Task.batches_per_process; with rows=1 the token rows each process trained on are written). Prints `FINGERPRINT [...]` of the final state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import jax
import numpy as np

from jaxllm import parallel
from jaxllm.data import pipeline
from jaxllm.models import get_preset
from jaxllm.optim import build
from jaxllm.train import TrainerConfig, minibatches, train, write_summary
from jaxllm.train.checkpoint import fingerprint
from jaxllm.train.lm import lm_task

BATCH, SEQ, ROWS = 8, 16, 64
MODEL = get_preset("tiny_mobilellm", vocab_size=32, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64,
                   max_seq_len=32)
MESH = parallel.MeshConfig(data=2, fsdp=2)


def data() -> dict:
    rs = np.random.RandomState(0)
    return {"tokens": rs.randint(0, MODEL.vocab_size, (ROWS, SEQ + 1)).astype(np.int32),
            "row": np.arange(ROWS, dtype=np.int32)}


class SpacedTokens:
    """Documents of the `files=` mode are token ids written as text, "7 12 3"; bos 1, eos 2, pad 0."""

    pad_id = 0

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return [1] * add_bos + [int(t) for t in text.split()] + [2] * add_eos


def _wait_for_checkpoint(run_dir: str, step: int, timeout_s: float = 120.0) -> None:
    """Block until checkpoint `step` is committed (orbax renames its temporary directory to `checkpoints/<step>`
    when the save is complete), so that a kill right after it tests resuming from that checkpoint and not the
    race with the asynchronous save (on a loaded machine the save of step 4 can still be running at step 6)."""
    path, deadline = os.path.join(run_dir, "checkpoints", str(step)), time.monotonic() + timeout_s
    while step > 0 and not os.path.isdir(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"checkpoint {step} was not committed within {timeout_s:.0f} s")
        time.sleep(0.1)


def main(argv: list[str]) -> None:
    run_dir, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    steps, every = int(opts.get("steps", 12)), int(opts.get("checkpoint_every", 4))
    kill_process, kill_at = int(opts.get("kill_process", -1)), int(opts.get("kill_at", -1))
    sleep = float(opts.get("sleep", 0))
    optim = (build.GaLoreAdamWConfig(learning_rate=1e-2, rank=4, update_proj_gap=3)
             if opts.get("optim") == "galore" else build.AdamWConfig(learning_rate=1e-2))
    mesh = parallel.make_mesh(MESH)
    shard = parallel.process_shard(mesh, BATCH)
    seen: list[list[int]] = []

    def record(batch):
        seen.append(batch["row"].tolist())
        return batch

    if opts.get("files"):  # this process's rows of the jsonl / parquet files in that directory
        paths = sorted(p for p in os.listdir(opts["files"]) if p.endswith((".jsonl", ".parquet")))
        batches, info = pipeline.file_batches([os.path.join(opts["files"], p) for p in paths], SpacedTokens(),
                                              SEQ + 1, BATCH, seed=0, shard=shard)
        batches = batches.map(lambda b: record({**b, "row": b["tokens"]}))
        print(f"process {jax.process_index()} read {info['documents']} documents", flush=True)
    else:
        batches = minibatches(data(), BATCH, seed=0, shard=shard).map(record)
    task = lm_task(MODEL, optim.build(steps), batches)
    task.batches_per_process = True

    def hook(step, row):
        if sleep:
            time.sleep(sleep)
        if step == kill_at and jax.process_index() == kill_process:
            _wait_for_checkpoint(run_dir, kill_at // every * every)
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainerConfig(steps=steps, log_every=1, checkpoint_every=every, keep_checkpoints=2, progress=True,
                        mesh=MESH)
    result = train(cfg, task, run_dir, seed=0, hooks=[hook])
    if opts.get("rows"):
        with open(os.path.join(run_dir, f"rows_p{jax.process_index()}.json"), "w") as f:
            json.dump({"shard": list(shard), "rows": seen}, f)
    write_summary(run_dir, {"final_loss": result.history[-1]["loss"], "process": jax.process_index()})
    print("FINGERPRINT", fingerprint(result.state), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
