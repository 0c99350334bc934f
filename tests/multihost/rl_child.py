"""An SPG run (the RL loop of jaxllm/rl/loop.py: RolloutSource through jaxllm.train.train) on a data=2 x fsdp=2
mesh, as one process of `python -m jaxllm.launch -n 2 --module tests.multihost.rl_child RUN_DIR key=value ...`
or as one process with 4 CPU devices (`python -m tests.multihost.rl_child RUN_DIR ...`).

A tiny masked-diffusion Transformer (tiny_llada) samples 8 completions (2 groups of 4) per rollout batch with
the LLaDA sampler from the sharded parameters; reward = share of completion tokens equal to 5; SPG-mix with
μ = 2 updates per batch, AdamW; checkpoints every 2 batches. Options: steps (updates, default 8),
checkpoint_every (updates, default 4). Prints the state's FINGERPRINT; process 0 writes summary.json.
"""

import sys

import jax
import numpy as np
import optax

from jaxllm import parallel
from jaxllm.models import Model, get_preset, init_params, logical_axes
from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import (
    PromptSet,
    RolloutConfig,
    RolloutSource,
    check_trainer,
    diffusion_sampler,
    make_rl_task,
)
from jaxllm.sampling.diffusion import DiffusionSamplerConfig
from jaxllm.train import TrainerConfig, train, write_summary
from jaxllm.train.checkpoint import fingerprint

CFG = get_preset("tiny_llada", vocab_size=12, max_seq_len=16, mask_token_id=2, d_model=32, n_layers=2, n_heads=4,
                 d_ff=64)
MESH = parallel.MeshConfig(data=2, fsdp=2)


def main(argv: list[str]) -> None:
    run_dir, opts = argv[0], dict(a.split("=", 1) for a in argv[1:])
    steps, every = int(opts.get("steps", 8)), int(opts.get("checkpoint_every", 4))
    model = Model(CFG)
    loss_cfg = RLLossConfig(mask_id=2, loss="spg_mix", group_size=4, beta=1.0, block_length=4, inner_steps=2)
    sampler = diffusion_sampler(model, DiffusionSamplerConfig(gen_length=8, block_length=8, steps=4, mask_id=2,
                                                              temperature=1.0))
    prompts = PromptSet(np.random.default_rng(0).integers(3, 12, (8, 8)).astype(np.int32))
    source = RolloutSource(sampler, lambda i, c: float(np.mean(c == 5)), prompts, RolloutConfig(8, 4), loss_cfg,
                           model=model)
    task = make_rl_task(model, loss_cfg, optax.adamw(1e-2), source, lambda k: init_params(CFG, k),
                        logical_axes=logical_axes(CFG))
    cfg = TrainerConfig(steps=steps, log_every=1, checkpoint_every=every, keep_checkpoints=3, updates_per_batch=2,
                        progress=True, mesh=MESH)
    check_trainer(cfg, loss_cfg)
    result = train(cfg, task, run_dir, seed=0)
    write_summary(run_dir, {"process": jax.process_index(), "batches": source.batches})
    print("FINGERPRINT", fingerprint(result.state), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
