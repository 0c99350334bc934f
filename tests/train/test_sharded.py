"""The sharded step on 8 CPU devices (mesh data=2, fsdp=2, tensor=2) equals the single-device step.

A state-dependent batch source with μ = 2 gives the same losses on the mesh as on one device.

Tolerance: losses agree to rtol 1e-6 and parameters to 1e-6 absolute after 4 SGD-momentum steps (measured: 1.1e-7
relative on the loss, 2e-8 on parameters) (float32; sharded matmuls
sum in a different order). Parameters and optimizer state are created sharded, and a checkpoint restores
onto the same shardings bit-for-bit.
"""

from __future__ import annotations

import pytest

from tests.subprocess_util import run_python

CODE = r"""
import json, sys, tempfile
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import PartitionSpec as P
from jaxllm import models, parallel
from jaxllm.train import Task, TrainerConfig, init_state, make_train_step, minibatches, train
from jaxllm.train.checkpoint import Checkpointer

assert len(jax.devices()) == 8
cfg = models.get_preset("tiny_llama", vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                        max_seq_len=16)
tokens = np.random.RandomState(0).randint(0, 64, size=(32, 9)).astype(np.int32)

def loss_fn(params, batch, rng):
    logits = models.forward(cfg, params, batch[:, :-1]).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean(), {}

def task():
    return Task(lambda k: models.init_params(cfg, k), loss_fn, optax.sgd(0.5, momentum=0.9), batches=minibatches(tokens, 8, 0),
                logical_axes=models.logical_axes(cfg))

# Single device: four plain jitted steps.
t = task()
state = init_state(t, 0)
step = jax.jit(make_train_step(t))
it = iter(t.batches)
single_losses = []
for _ in range(4):
    state, m = step(state, jnp.asarray(next(it)))
    single_losses.append(float(m["loss"]))

# Sharded, through the trainer, checkpointing at step 4; then the checkpoint restored onto the mesh.
mesh_cfg = parallel.MeshConfig(data=2, fsdp=2, tensor=2)
run_dir = tempfile.mkdtemp()
res = train(TrainerConfig(steps=4, log_every=1, checkpoint_every=4, progress=False, mesh=mesh_cfg), task(), run_dir)
p = res.state.params
mesh_losses = [r["loss"] for r in res.history]
ckpt = Checkpointer(run_dir + "/checkpoints")
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), res.state)
step_no, restored, _, _ = ckpt.restore_latest(abstract)
ckpt.close()
assert step_no == 4
restored_up = restored[0]["layer_0"]["mlp"]["up"]["kernel"]
assert restored_up.sharding == p["layer_0"]["mlp"]["up"]["kernel"].sharding
assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(res.state)))
def spec(x):
    return tuple(x.sharding.spec)

# A state-dependent batch source (reads the sharded params, numpy Generator host state), μ = 2, on the mesh
# and on one device: the same losses.
last_logits = jax.jit(lambda params, x: models.forward(cfg, params, x).logits[:, -1])

class Source:
    def __init__(self):
        self.gen = np.random.default_rng(0)
    def __call__(self, state, key):
        rows = tokens[self.gen.choice(len(tokens), 8, replace=False)]
        logits = last_logits(state.params, jnp.asarray(rows[:, :-1]))
        rows = rows.copy()
        rows[:, -1] = np.asarray(jnp.argmax(logits, -1))  # the model's own next token as the target
        return rows
    def get_state(self):
        return {"gen": self.gen.bit_generator.state}
    def set_state(self, s):
        self.gen.bit_generator.state = s["gen"]

def source_losses(mesh):
    t = Task(lambda k: models.init_params(cfg, k), loss_fn, optax.sgd(0.5, momentum=0.9), batches=Source(),
             logical_axes=models.logical_axes(cfg))
    tc = TrainerConfig(steps=4, log_every=1, checkpoint_every=4, updates_per_batch=2, progress=False, mesh=mesh)
    return [r["loss"] for r in train(tc, t, tempfile.mkdtemp()).history]

up = p["layer_0"]["mlp"]["up"]["kernel"]
report = {
    "source_single": source_losses(parallel.MeshConfig()), "source_mesh": source_losses(mesh_cfg),
    "single": single_losses, "mesh": mesh_losses,
    "max_param_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p))),
    "max_param_rel": max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))
                         for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p))),
    "up_spec": spec(up),
    "up_shard_shape": list(up.addressable_shards[0].data.shape), "up_shape": list(up.shape),
    "up_devices": len(up.sharding.device_set),
    "q_spec": spec(p["layer_0"]["attn"]["q"]["kernel"]), "embed_spec": spec(p["embed"]),
    "n_sharded": sum(1 for x in jax.tree.leaves(p) if any(s is not None for s in x.sharding.spec)),
    "n_params": len(jax.tree.leaves(p)),
    "momentum_up_spec": spec(res.state.opt_state[0].trace["layer_0"]["mlp"]["up"]["kernel"]),
    "step_spec": spec(res.state.step), "step_devices": len(res.state.step.sharding.device_set),
}
print("REPORT" + json.dumps(report))
"""


@pytest.mark.multidevice
def test_sharded_step_equals_single_device():
    import json

    import numpy as np

    out = run_python(CODE, devices=8)
    r = json.loads(out.split("REPORT", 1)[1])
    np.testing.assert_allclose(r["mesh"], r["single"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["source_mesh"], r["source_single"], rtol=1e-6, atol=1e-7)
    assert len(r["source_mesh"]) == 4 and r["source_mesh"][0] != r["source_mesh"][2]  # two batches of 2 updates
    assert r["max_param_diff"] < 1e-6, r
    # Parameters are really sharded: FSDP on the embedding axis, tensor parallel on the MLP width.
    assert r["up_spec"] == ["fsdp", "tensor"], r
    assert r["up_shard_shape"] == [r["up_shape"][0] // 2, r["up_shape"][1] // 2] and r["up_devices"] == 8
    assert r["q_spec"][:2] == ["fsdp", "tensor"], r
    assert r["embed_spec"] == ["tensor", "fsdp"], r
    assert r["n_sharded"] == r["n_params"], r  # every parameter (norm scales over fsdp)
    assert r["momentum_up_spec"] == r["up_spec"], r  # optimizer state sharded like its parameter
    assert r["step_devices"] == 8  # step and RNG replicated on the mesh
