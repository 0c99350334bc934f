"""The one trainer: TrainState, a jitted step with donated state, gradient accumulation, periodic eval,
metrics (JSONL + TensorBoard), orbax checkpoints with the data-iterator state, exact resume, NaN stop.

A paper plugs in through a `Task`: how to initialise parameters, the loss, the optimizer, the batches, and
optional eval / diagnostics functions. Everything else (logging, checkpointing, sharding, resume) is here once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm import parallel
from jaxllm.config import ConfigError, check
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.metrics import MetricsWriter, ProgressBar, non_finite, non_finite_keys, read_metrics

Params = Any
Batch = Any


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    steps: int = 1000
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    best_metric: str = ""  # e.g. "eval/loss": also keep the best checkpoint by this metric
    best_mode: str = "min"
    grad_accum: int = 1  # micro-batches per step: the batch's leading axis is split into this many
    progress: bool = True  # tqdm bar when stderr is a terminal
    async_checkpoint: bool = True
    mesh: parallel.MeshConfig = parallel.MeshConfig()

    def __post_init__(self):
        check(self.steps >= 0, f"trainer.steps must be >= 0, got {self.steps}")
        check(self.log_every >= 1, f"trainer.log_every must be >= 1, got {self.log_every}")
        check(self.eval_every >= 0, f"trainer.eval_every must be >= 0, got {self.eval_every}")
        check(self.checkpoint_every >= 1, f"trainer.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"trainer.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.grad_accum >= 1, f"trainer.grad_accum must be >= 1, got {self.grad_accum}")
        check(self.best_mode in ("min", "max"), f"trainer.best_mode={self.best_mode!r} not in ['min', 'max']")


class TrainState(NamedTuple):
    params: Params
    opt_state: Any
    step: jax.Array  # int32 scalar: number of completed updates
    rng: jax.Array  # uint32[2] raw key; the step's key is fold_in(rng, step)


@dataclasses.dataclass
class Task:
    """What a paper supplies to the trainer.

    init_params(key) -> params
    loss_fn(params, batch, rng) -> (scalar loss, dict of scalar metrics); jit-traceable.
    batches: an iterable of batches (a grain IterDataset, or anything whose iterator has
        get_state()/set_state() for exact resume), or None for a fixed (full) batch closed over by loss_fn.
    eval_fn(params) -> dict of floats (host side; prefix-free names, logged as `eval/<name>`).
    log_fn(params, step) -> dict of extra diagnostics logged at log steps (host side).
    logical_axes: logical axis names per parameter, for sharded training.
    """

    init_params: Callable[[jax.Array], Params]
    loss_fn: Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict]]
    optimizer: optax.GradientTransformation
    batches: Optional[Iterable] = None
    eval_fn: Optional[Callable[[Params], dict]] = None
    log_fn: Optional[Callable[[Params, int], dict]] = None
    logical_axes: Optional[Any] = None


class NonFiniteError(RuntimeError):
    """Raised when a logged metric becomes NaN or infinite; names the step and the metric."""


class TrainResult(NamedTuple):
    state: TrainState
    history: list  # every row of metrics.jsonl, resumed runs included
    resumed_from: Optional[int]
    corrupt_checkpoints: list


def make_train_step(task: Task, grad_accum: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The pure step: (state, batch) -> (new state, metrics). Accumulates over `grad_accum` micro-batches.

    The same (loss_fn, optimizer, grad_accum) gives the same function object, so jitting it again (a resumed
    `train` call in the same process) reuses the compiled step.
    """
    try:
        return _cached_step(task.loss_fn, task.optimizer, grad_accum)
    except TypeError:  # an unhashable optimizer object
        return _make_step(task.loss_fn, task.optimizer, grad_accum)


@functools.lru_cache(maxsize=8)
def _cached_step(loss_fn, optimizer, grad_accum):
    return _make_step(loss_fn, optimizer, grad_accum)


def _make_step(loss_fn, optimizer, grad_accum):
    def grads_of(params, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        return loss, metrics, grads

    def step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum == 1:
            loss, metrics, grads = grads_of(state.params, batch, rng)
        else:
            for x in jax.tree.leaves(batch):
                if np.ndim(x) == 0 or x.shape[0] % grad_accum:
                    raise ConfigError(f"trainer.grad_accum={grad_accum} must divide the batch's leading axis; "
                                      f"got a batch leaf of shape {tuple(np.shape(x))}")
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

            def body(carry, xs):
                mb, i = xs
                loss, metrics, grads = grads_of(state.params, mb, jax.random.fold_in(rng, i))
                acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return acc, None

            zero = jax.eval_shape(grads_of, state.params, jax.tree.map(lambda x: x[0], micro), rng)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            total, _ = jax.lax.scan(body, zero, (micro, jnp.arange(grad_accum)))
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, total)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
        return TrainState(params, opt_state, state.step + 1, state.rng), metrics

    return step


def init_state(task: Task, seed: int, mesh=None) -> TrainState:
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    step = jnp.zeros((), jnp.int32)
    if mesh is not None:
        if task.logical_axes is None:
            raise ConfigError("a mesh of more than one device needs task.logical_axes for the parameters")
        params, p_shardings = parallel.create_sharded(task.init_params, init_key, task.logical_axes, mesh)
        abstract_params = jax.eval_shape(lambda: params)
        o_shardings = parallel.shardings_like(jax.eval_shape(task.optimizer.init, abstract_params),
                                              abstract_params, p_shardings, mesh)
        opt_state = jax.jit(task.optimizer.init, out_shardings=o_shardings)(params)
        rep = parallel.replicated(mesh)
        return TrainState(params, opt_state, jax.device_put(step, rep), jax.device_put(rng, rep))
    try:  # jitted: eager init compiles every random op separately (seconds for a small Transformer on CPU)
        params = jax.jit(task.init_params)(init_key)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerIntegerConversionError):
        params = task.init_params(init_key)  # an init that needs concrete values (host-side code)
    opt_state = jax.jit(task.optimizer.init)(params)
    return TrainState(params, opt_state, step, rng)


def _put_batch(batch, mesh):
    if mesh is None or batch is None:
        return batch
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), parallel.batch_sharding(mesh, np.ndim(x))), batch)


def log_line(total: int) -> Callable[[int, dict], None]:
    """Hook printing one line per log step (used instead of the tqdm bar when stderr is not a terminal)."""

    def hook(step: int, row: dict) -> None:
        shown = {k: v for k, v in row.items() if k == "loss" or k.startswith("eval/") or k.endswith("accuracy")}
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
        rate = row.get("perf/steps_per_s")
        print(f"step {step}/{total}  " + "  ".join(parts) + (f"  {rate:.3g} steps/s" if rate else ""), flush=True)

    return hook


def train(cfg: TrainerConfig, task: Task, run_dir: str, seed: int = 0, hooks: Iterable[Callable] = ()) -> TrainResult:
    """Train `task` for `cfg.steps` updates, writing metrics and checkpoints under `run_dir`.

    Re-running with the same `run_dir` resumes from the newest checkpoint that restores and truncates
    metrics.jsonl to it, so the final file has every logged step exactly once.
    """
    if cfg.grad_accum > 1 and task.batches is None:
        raise ConfigError(f"trainer.grad_accum={cfg.grad_accum} needs task.batches (mini-batches to split); "
                          "a full-batch task (batches=None) has nothing to accumulate over")
    mesh = parallel.make_mesh(cfg.mesh) if cfg.mesh.size > 1 else None
    if mesh is not None and task.logical_axes is None:
        raise ConfigError("a mesh of more than one device needs task.logical_axes for the parameters")
    state = init_state(task, seed, mesh)
    iterator = iter(task.batches) if task.batches is not None else None
    if iterator is not None and not (hasattr(iterator, "get_state") and hasattr(iterator, "set_state")):
        raise ConfigError("task.batches must iterate with get_state()/set_state() (e.g. a grain IterDataset) "
                          "so that resume is exact")

    ckpt = Checkpointer(f"{run_dir}/checkpoints", keep=cfg.keep_checkpoints, best_metric=cfg.best_metric or None,
                        best_mode=cfg.best_mode, async_save=cfg.async_checkpoint)
    writer = MetricsWriter(run_dir)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = ckpt.restore_latest(abstract)
    resumed_from = None
    if restored is not None:
        step0, state, data_state, _ = restored
        state = TrainState(*state)
        resumed_from = step0
        if iterator is not None:
            iterator.set_state(data_state)
        dropped = writer.truncate_after(step0)
        print(f"resumed from checkpoint step {step0} in {run_dir} ({dropped} later metric rows dropped)", flush=True)
    else:
        dropped = writer.truncate_after(-1)
        if dropped:
            print(f"no checkpoint in {run_dir}: starting from step 0 ({dropped} old metric rows dropped)", flush=True)

    state_shardings = jax.tree.map(lambda x: x.sharding, state) if mesh is not None else None
    step_fn = jax.jit(make_train_step(task, cfg.grad_accum), donate_argnums=0,
                      out_shardings=(state_shardings, None) if mesh is not None else None)
    start = int(state.step)
    bar = ProgressBar(cfg.steps, initial=start, enabled=None if cfg.progress else False)
    printer = [log_line(cfg.steps)] if cfg.progress and not bar.active else []
    hooks = [bar, *printer, *hooks]

    def log_row(step: int, params, metrics: dict, is_eval: bool) -> dict:
        row = dict(metrics)
        if task.log_fn is not None:
            row.update(task.log_fn(params, step))
        if is_eval and task.eval_fn is not None:
            row.update({f"eval/{k}": v for k, v in task.eval_fn(params).items()})
        return row

    try:
        if start == 0 and cfg.steps > 0 and (task.log_fn is not None or task.eval_fn is not None):
            writer.write(0, log_row(0, state.params, {}, True))
        t_last, s_last = time.perf_counter(), start
        for s in range(start + 1, cfg.steps + 1):
            batch = next(iterator) if iterator is not None else None
            state, metrics = step_fn(state, _put_batch(batch, mesh))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bad = non_finite(metrics)
            is_eval = s == cfg.steps or (cfg.eval_every and s % cfg.eval_every == 0)
            if bad is not None or s % cfg.log_every == 0 or is_eval:
                now = time.perf_counter()
                row = log_row(s, state.params, metrics, bool(is_eval) and bad is None)
                row["perf/steps_per_s"] = (s - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, s
                writer.write(s, row)
                for h in hooks:
                    h(s, row)
                bad = bad or non_finite(row)
            if bad is not None:
                ckpt.wait()
                others = [k for k in non_finite_keys(row) if k != bad]
                also = f" (also non-finite: {', '.join(others)})" if others else ""
                raise NonFiniteError(
                    f"non-finite metric {bad!r} = {row[bad]} at step {s}{also}; stopped, last good checkpoint: "
                    f"{max(ckpt.all_steps(), default=None)} in {run_dir}/checkpoints"
                )
            if s % cfg.checkpoint_every == 0 or s == cfg.steps:
                evals = {k: v for k, v in row.items() if k.startswith("eval/")} if is_eval else None
                ckpt.save(s, state, iterator.get_state() if iterator is not None else None, metrics=evals)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return TrainResult(state, read_metrics(writer.path), resumed_from, ckpt.corrupt)
