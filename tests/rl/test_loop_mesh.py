"""The RL loop on a data×fsdp mesh (4 forced CPU devices, data=2 × fsdp=2): a tiny masked-diffusion Transformer
trained with SPG-mix for 2 rollout batches gives the same metrics as on one device, up to float32
reduction-order differences (rtol 1e-4: the sharded step sums gradients and losses in another order)."""

from __future__ import annotations

import json

import pytest

from tests.subprocess_util import run_python

CODE = r"""
import json, tempfile
import jax, numpy as np, optax
from jaxllm.models import Model, get_preset, init_params, logical_axes
from jaxllm.parallel import MeshConfig
from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import PromptSet, RolloutConfig, RolloutSource, diffusion_sampler, make_rl_task
from jaxllm.sampling.diffusion import DiffusionSamplerConfig
from jaxllm.train import TrainerConfig, train

cfg = get_preset("tiny_llada", vocab_size=12, max_seq_len=16, mask_token_id=2, d_model=32, n_layers=2, n_heads=4,
                 d_ff=64)
model = Model(cfg)
lcfg = RLLossConfig(mask_id=2, loss="spg_mix", group_size=4, beta=1.0, block_length=4, inner_steps=2)
sampler = diffusion_sampler(model, DiffusionSamplerConfig(gen_length=8, block_length=8, steps=4, mask_id=2,
                                                          temperature=1.0))
prompts = PromptSet(np.random.default_rng(0).integers(3, 12, (8, 8)).astype(np.int32))
out = {}
for name, mesh in (("single", MeshConfig()), ("mesh", MeshConfig(data=2, fsdp=2))):
    source = RolloutSource(sampler, lambda i, c: float(np.mean(c == 5)), prompts, RolloutConfig(8, 4), lcfg,
                           model=model)
    task = make_rl_task(model, lcfg, optax.adam(1e-2), source, lambda k: init_params(cfg, k),
                        logical_axes=logical_axes(cfg))
    tcfg = TrainerConfig(steps=4, log_every=1, checkpoint_every=4, updates_per_batch=2, progress=False, mesh=mesh)
    hist = train(tcfg, task, tempfile.mkdtemp()).history
    out[name] = [{k: v for k, v in r.items() if not k.startswith("perf/") and not k.endswith("_s")} for r in hist]
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_rl_loop_on_data_fsdp_mesh_matches_one_device():
    stdout = run_python(CODE, devices=4)
    out = json.loads(stdout.split("RESULT", 1)[1])
    single, mesh = out["single"], out["mesh"]
    assert [r["step"] for r in single] == [r["step"] for r in mesh] == [1, 2, 3, 4]
    for a, b in zip(single, mesh):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
