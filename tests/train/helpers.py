"""Tiny tasks for trainer tests (importable from subprocesses as `tests.train.helpers`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.train import SourceBatch, Task, TrainerConfig, host_rng, minibatches


def regression_data(n: int = 64, d: int = 8, seed: int = 0, nan_row: int | None = None):
    w = np.random.RandomState(123).randn(d).astype(np.float32)  # one target function for every split
    rs = np.random.RandomState(seed)
    x = rs.randn(n, d).astype(np.float32)
    y = (x @ w + 0.1 * rs.randn(n).astype(np.float32)).astype(np.float32)
    if nan_row is not None:
        x[nan_row] = np.nan
    return {"x": x, "y": y}


def predict(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def regression_task(batch_size: int = 8, seed: int = 0, lr: float = 1e-2, nan_row: int | None = None,
                    shuffle: bool = True, eval_values=None) -> Task:
    """A 2-layer MLP regression with noise drawn from the step RNG (so a wrong RNG restore shows up),
    grain mini-batches (so a wrong iterator restore shows up), Adam, and an eval on a fixed set."""
    data = regression_data(nan_row=nan_row)
    d = data["x"].shape[1]
    held_out = regression_data(n=32, seed=1)

    def init_params(key):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (d, 16)) / np.sqrt(d), "w2": jax.random.normal(k2, (16,)) / 4.0}

    def loss_fn(params, batch, rng):
        batch = data if batch is None else batch  # full-batch mode: the data is closed over
        noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
        err = predict(params, batch["x"]) - batch["y"] + noise
        loss = jnp.mean(err * err)
        return loss, {"abs_err": jnp.mean(jnp.abs(err))}

    calls = {"n": 0}

    def eval_fn(params):
        if eval_values is not None:  # scripted eval values (best-checkpoint test)
            calls["n"] += 1
            return {"score": float(eval_values[calls["n"] - 1])}
        err = predict(params, held_out["x"]) - held_out["y"]
        return {"loss": float(jnp.mean(err * err))}

    if batch_size:
        batches = minibatches(data, batch_size, seed, shuffle=shuffle)
    else:
        batches = None
    return Task(init_params=init_params, loss_fn=loss_fn, optimizer=optax.adam(lr), batches=batches,
                eval_fn=eval_fn)


def strip_perf(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


# The run the SIGKILL test interrupts (async checkpoints every 5 steps, one metrics row per step).
RESUME_CFG = TrainerConfig(steps=40, log_every=1, eval_every=10, checkpoint_every=5, keep_checkpoints=2,
                           progress=False)


class SelfLabelSource:
    """A batch source shaped like an RL rollout: it reads the current parameters (targets mix a fixed teacher
    with the model's own squashed predictions, as pseudo-labels or rewards would), draws inputs from host state
    (a numpy Generator and a call counter, checkpointed via get_state / set_state) plus noise from the batch
    key, and returns host metrics. A resume that restored any of these wrongly would change the batches."""

    def __init__(self, batch_size: int = 8, seed: int = 0):
        self.batch_size, self.generator, self.calls = batch_size, np.random.default_rng(seed), 0
        self.seen = []  # (state.step, batch key) of each call, for tests

    def __call__(self, state, key):
        d = 8
        x = self.generator.standard_normal((self.batch_size, d)).astype(np.float32)
        x += 0.1 * host_rng(key).standard_normal(x.shape).astype(np.float32)
        pred = np.asarray(_predict(state.params, x))
        teacher = np.random.RandomState(123).randn(d).astype(np.float32)
        y = (x @ teacher + 0.5 * np.tanh(pred) + 0.01 * self.calls).astype(np.float32)
        self.calls += 1
        self.seen.append((int(state.step), np.asarray(key).tolist()))
        return SourceBatch({"x": x, "y": y}, {"source/calls": self.calls, "source/mean_pred": float(pred.mean())})

    def get_state(self) -> dict:
        return {"calls": self.calls, "generator": self.generator.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.calls = state["calls"]
        self.generator.bit_generator.state = state["generator"]


_predict = jax.jit(predict)


def source_task(source=None) -> Task:
    """The regression model trained on `SelfLabelSource` batches (state-dependent, with host state)."""
    return dataclasses.replace(regression_task(batch_size=0), batches=source or SelfLabelSource())


# The state-dependent-source run the second SIGKILL test interrupts: μ = 2 updates per batch.
SOURCE_CFG = TrainerConfig(steps=40, log_every=1, eval_every=10, checkpoint_every=4, keep_checkpoints=2,
                           updates_per_batch=2, progress=False)
