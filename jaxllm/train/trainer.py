"""The one trainer: TrainState, a jitted step with donated state, gradient accumulation, μ updates per batch,
a batch source that may read the state (RL rollouts), metrics read one step late, periodic eval, metrics
(JSONL + TensorBoard), orbax checkpoints with the batch source's state, exact resume, NaN stop.

A paper plugs in through a `Task`: how to initialise parameters, the loss, the optimizer, the batches, and
optional eval / diagnostics functions. Everything else (logging, checkpointing, sharding, resume) is here once.

The loop (`train`), with μ = cfg.updates_per_batch and every count (steps, log_every, eval_every,
checkpoint_every) in updates:

    for step s = 1 .. cfg.steps:                     # state.step == s - 1 before update s
        if (s - 1) % μ == 0:                         # a new batch b = (s - 1) // μ
            if the source reads the state: read metrics[s - 1] now (it needs update s - 1 done anyway)
            batch = source(state, batch_key(state.rng, b))           # host side, may sample from state.params
        state, metrics[s] = step(state, batch)       # update key: update_key(state.rng, s - 1)
        read metrics[s - 1] if not read yet (dispatched one update earlier): check them, write its row
        if s syncs (checkpoint, eval with eval_fn, log with log_fn): read metrics[s] now, log_fn / eval_fn on
            state.params, write its row, then save the checkpoint at s

Batch sources (`jaxllm.train.source`). `Task.batches` is None (full batch), an iterable of batches whose
iterator has get_state()/set_state() (grain), or a `BatchSource`:
    source(state: TrainState, key: jax.Array) -> batch | SourceBatch(batch, metrics: dict)
    source.get_state() -> JSON-able dict, source.set_state(dict)   # optional, both or neither
    source.uses_state = False                                        # optional: it never reads `state`
The key is `batch_key(state.rng, b)`: the same on a resumed run. Host state (counters, a numpy Generator's
`bit_generator.state`, a buffer index) is saved with every checkpoint, so kill -9 and rerun reproduce every
batch. SourceBatch metrics (mean reward, seconds sampling) go on each row of that batch's updates.
perf/batch_s, perf/update_s and perf/host_s split the seconds between rows into the source, the updates
and the host diagnostics (see `loop.Reporter`).

Updates per batch. μ ≥ 1 optimizer steps train on each batch; state.step counts updates, and update t draws
fold_in(state.rng, t), so a loss gets fresh, reproducible masks at each inner step. checkpoint_every and
steps must be multiples of μ (a checkpoint is always between batches, so resume is exact).
The state a source sees is the one at its batch's start: quantities of the old policy (π_old log-probs for
a ratio) are computed there and put in the batch, using `update_key(state.rng, b·μ + i)` when they depend
on inner step i's randomness. That state is donated to the next update: a source must not keep references
to its arrays (what it computed from them, e.g. rollouts, is its own).

A frozen tree (reference parameters for a KL penalty, a teacher): the recommended way is `Task.frozen`; the
loss is then called as loss_fn(params, batch, rng, frozen), and the tree is a jit argument, kept where it is
placed (on a mesh, build it sharded, e.g. `init_state(task, seed, mesh).params`); it is not checkpointed (the
task rebuilds it). Closing over it in loss_fn also works, but jit embeds closed-over arrays in the compiled
program as constants (measured: a 16 MB array gives 33 MB of StableHLO text), so that only suits small
trees. Reference log-probs that need no per-step randomness are cheapest computed by the source, in the batch.

Several processes (`python -m jaxllm.launch`, `jaxllm.parallel.initialize`): every process calls `train` with
the same arguments; cfg.mesh must span the devices of all of them. A host batch is assembled into a global
array from process-local rows (`parallel.global_batch`: each process keeps its rows of the whole batch, or,
with Task.batches_per_process, its pipeline yields only those rows). Every process takes part in each
checkpoint save and restore (orbax, one directory; each process's batch-source state is stored); process 0
alone writes metrics.jsonl and TensorBoard and prints; `hooks` run on every process; the returned history is
read from process 0's file after a barrier.

Metrics are read one step late (as nanodo's train.py): the host converts update t−1's metrics while update t
runs. A NaN or inf metric (train or source) raises NonFiniteError naming its step and metric before any
later checkpoint is written; the last good checkpoint stays. The NaN row of a step that did not sync has the
train and source metrics only (log_fn would need parameters the next update has already replaced).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm import parallel
from jaxllm.config import ConfigError, check
from jaxllm.train.checkpoint import Checkpointer, resume
from jaxllm.train.loop import Pending, Reporter, Schedule, non_finite_error
from jaxllm.train.metrics import MetricsWriter, NonFiniteError, ProgressBar, read_metrics  # noqa: F401 (re-export)
from jaxllm.train.source import as_batch_source, get_source_state, update_key

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
    updates_per_batch: int = 1  # μ: optimizer steps on each batch (RL inner updates); counts stay in updates
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
        mu = self.updates_per_batch
        check(mu >= 1, f"trainer.updates_per_batch must be >= 1, got {mu}")
        for name in ("checkpoint_every", "steps"):
            check(getattr(self, name) % mu == 0,
                  f"trainer.{name}={getattr(self, name)} must be a multiple of trainer.updates_per_batch={mu}, "
                  "so that every checkpoint falls between batches (exact resume)")
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
        With `frozen` set: loss_fn(params, batch, rng, frozen).
    batches: None (a fixed full batch closed over by loss_fn), an iterable of batches (a grain IterDataset,
        or anything whose iterator has get_state()/set_state() for exact resume), or a BatchSource
        `source(state, key) -> batch | SourceBatch(batch, metrics)` (see the module docstring).
    eval_fn(params) -> dict of floats (host side; prefix-free names, logged as `eval/<name>`).
    log_fn(params, step) -> dict of extra diagnostics logged at log steps (host side).
    logical_axes: logical axis names per parameter, for sharded training.
    frozen: a constant pytree passed to loss_fn (e.g. reference parameters for a KL penalty).
    batches_per_process: on several processes, whether each host batch is this process's rows of the global
        batch (a pipeline sharded by `parallel.process_shard`, so no row is read twice) rather than the whole
        global batch, identical on every process, of which each process keeps its own rows.
    """

    init_params: Callable[[jax.Array], Params]
    loss_fn: Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict]]
    optimizer: optax.GradientTransformation
    batches: Optional[Any] = None  # None | iterable with get_state/set_state | BatchSource
    eval_fn: Optional[Callable[[Params], dict]] = None
    log_fn: Optional[Callable[[Params, int], dict]] = None
    logical_axes: Optional[Any] = None
    frozen: Optional[Any] = None
    batches_per_process: bool = False


class TrainResult(NamedTuple):
    state: TrainState
    history: list  # every row of metrics.jsonl, resumed runs included
    resumed_from: Optional[int]
    corrupt_checkpoints: list


def make_train_step(task: Task, grad_accum: int = 1) -> Callable[..., tuple[TrainState, dict]]:
    """The pure step: (state, batch) -> (new state, metrics), or (state, batch, frozen) when task.frozen is
    set. Accumulates over `grad_accum` micro-batches.

    The same (loss_fn, optimizer, grad_accum) gives the same function object, so jitting it again (a resumed
    `train` call in the same process) reuses the compiled step.
    """
    with_frozen = task.frozen is not None
    try:
        return _cached_step(task.loss_fn, task.optimizer, grad_accum, with_frozen)
    except TypeError:  # an unhashable optimizer object
        return _make_step(task.loss_fn, task.optimizer, grad_accum, with_frozen)


@functools.lru_cache(maxsize=8)
def _cached_step(loss_fn, optimizer, grad_accum, with_frozen):
    return _make_step(loss_fn, optimizer, grad_accum, with_frozen)


def _make_step(loss_fn, optimizer, grad_accum, with_frozen):
    def grads_of(params, batch, rng, frozen):
        args = (batch, rng, frozen) if with_frozen else (batch, rng)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
        return loss, metrics, grads

    def step(state: TrainState, batch: Batch, frozen: Any = None):
        rng = update_key(state.rng, state.step)
        if grad_accum == 1:
            loss, metrics, grads = grads_of(state.params, batch, rng, frozen)
        else:
            for x in jax.tree.leaves(batch):
                if np.ndim(x) == 0 or x.shape[0] % grad_accum:
                    raise ConfigError(f"trainer.grad_accum={grad_accum} must divide the batch's leading axis; "
                                      f"got a batch leaf of shape {tuple(np.shape(x))}")
            micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

            def body(carry, xs):
                mb, i = xs
                loss, metrics, grads = grads_of(state.params, mb, jax.random.fold_in(rng, i), frozen)
                acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
                return acc, None

            zero = jax.eval_shape(grads_of, state.params, jax.tree.map(lambda x: x[0], micro), rng, frozen)
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


def _put_batch(batch, mesh, per_process: bool = False):
    if mesh is None or batch is None:
        return batch
    if jax.process_count() > 1:  # each process places only the rows its devices hold
        return parallel.global_batch(batch, mesh, process_local=per_process)

    def put(x):  # a device array (e.g. rollouts sampled on device) is resharded without a trip to the host
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        return jax.device_put(x, parallel.batch_sharding(mesh, np.ndim(x)))

    return jax.tree.map(put, batch)


def log_line(total: int) -> Callable[[int, dict], None]:
    """Hook printing one line per log step (used instead of the tqdm bar when stderr is not a terminal)."""

    def hook(step: int, row: dict) -> None:
        shown = {k: v for k, v in row.items() if k == "loss" or k.startswith("eval/") or k.endswith("accuracy")}
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()]
        rate = row.get("perf/steps_per_s")
        print(f"step {step}/{total}  " + "  ".join(parts) + (f"  {rate:.3g} steps/s" if rate else ""), flush=True)

    return hook



def _check_task(cfg: TrainerConfig, task: Task) -> None:
    if cfg.grad_accum > 1 and task.batches is None:
        raise ConfigError(f"trainer.grad_accum={cfg.grad_accum} needs task.batches (mini-batches to split); "
                          "a full-batch task (batches=None) has nothing to accumulate over")
    if cfg.mesh.size > 1 and task.logical_axes is None:
        raise ConfigError("a mesh of more than one device needs task.logical_axes for the parameters")
    if jax.process_count() > 1 and cfg.mesh.size != jax.device_count():
        raise ConfigError(f"trainer.mesh (data={cfg.mesh.data} x fsdp={cfg.mesh.fsdp} x tensor={cfg.mesh.tensor}"
                          f" = {cfg.mesh.size} devices) must span all {jax.device_count()} devices of the "
                          f"{jax.process_count()} processes")


def _jit_step(task: Task, cfg: TrainerConfig, state: TrainState, mesh) -> Callable:
    shardings = jax.tree.map(lambda x: x.sharding, state) if mesh is not None else None
    step_fn = jax.jit(make_train_step(task, cfg.grad_accum), donate_argnums=0,
                      out_shardings=(shardings, None) if mesh is not None else None)
    if task.frozen is None:
        return step_fn
    return lambda state, batch: step_fn(state, batch, task.frozen)


def train(cfg: TrainerConfig, task: Task, run_dir: str, seed: int = 0, hooks: Iterable[Callable] = ()) -> TrainResult:
    """Train `task` for `cfg.steps` updates, writing metrics and checkpoints under `run_dir`.

    Re-running with the same `run_dir` resumes from the newest checkpoint that restores and truncates
    metrics.jsonl to it, so the final file has every logged step exactly once. See the module docstring for
    the loop, the batch-source protocol and μ updates per batch.
    """
    _check_task(cfg, task)
    main = parallel.is_main_process()  # on several processes, the one that writes files and prints
    mesh = parallel.make_mesh(cfg.mesh) if cfg.mesh.size > 1 or jax.process_count() > 1 else None
    state = init_state(task, seed, mesh)
    source = as_batch_source(task.batches)
    ckpt = Checkpointer(f"{run_dir}/checkpoints", keep=cfg.keep_checkpoints, best_metric=cfg.best_metric or None,
                        best_mode=cfg.best_mode, async_save=cfg.async_checkpoint)
    writer = MetricsWriter(run_dir, enabled=main)
    try:
        state, resumed_from = resume(ckpt, writer, state, source, cfg.updates_per_batch, run_dir)
        step_fn = _jit_step(task, cfg, state, mesh)
        start = int(state.step)
        bar = ProgressBar(cfg.steps, initial=start, enabled=None if cfg.progress and main else False)
        printer = [log_line(cfg.steps)] if cfg.progress and main and not bar.active else []
        plan = Schedule(cfg.steps, cfg.updates_per_batch, cfg.log_every, cfg.eval_every, cfg.checkpoint_every,
                        params_at_log=task.log_fn is not None, params_at_eval=task.eval_fn is not None)
        reporter = Reporter(writer, [bar, *printer, *hooks], plan, task.log_fn, task.eval_fn, start)
        try:
            state = _run(cfg, task, plan, reporter, ckpt, source, state, start, mesh, step_fn, run_dir)
        finally:
            bar.close()
    finally:
        ckpt.close()
        writer.close()
    parallel.barrier("train-end")  # process 0 has written every row: the others read them from its file
    return TrainResult(state, read_metrics(writer.path), resumed_from, ckpt.corrupt)


def _run(cfg, task, plan: Schedule, reporter: Reporter, ckpt: Checkpointer, source, state: TrainState, start: int,
         mesh, step_fn, run_dir: str) -> TrainState:
    """Steps start+1 .. cfg.steps (see the module docstring); returns the final state."""

    def finish(pending: Pending, params=None) -> Optional[dict]:
        """Read, check and log `pending`; raises NonFiniteError naming its step and metric."""
        row, bad = reporter.finish(pending, params)
        if bad is not None:
            ckpt.wait()
            raise non_finite_error(pending.step, row, bad, max(ckpt.all_steps(), default=None),
                                   f"{run_dir}/checkpoints")
        return row

    if start == 0 and cfg.steps > 0 and (task.log_fn is not None or task.eval_fn is not None):
        reporter.initial_row(state.params)
    pending, batch, host = None, None, {}
    reads_state = getattr(source, "uses_state", True)
    for s in range(start + 1, cfg.steps + 1):
        if plan.starts_batch(s):
            if pending is not None and reads_state:  # it needs update s-1 done anyway: read those metrics first
                finish(pending)
                pending = None
            batch, host = reporter.fetch(source, state, s)
            batch = _put_batch(batch, mesh, task.batches_per_process)
        state, metrics = step_fn(state, batch)
        if pending is not None:
            finish(pending)  # update s-1's metrics, read while update s runs
        pending = Pending(s, metrics, host)
        if plan.syncs(s):
            row = finish(pending, state.params)
            pending = None
            if plan.checkpoints(s):
                evals = {k: v for k, v in row.items() if k.startswith("eval/")} if row else None
                with reporter.host_time():
                    ckpt.save(s, state, get_source_state(source), metrics=evals or None)
    if pending is not None:
        finish(pending)
    return state
