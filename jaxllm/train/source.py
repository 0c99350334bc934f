"""Batch sources: where `train` gets each batch, as a function of the training state and a key.

`Task.batches` is one of
- None: full-batch mode, the loss closes over its data (the step gets `batch=None`);
- an iterable (a grain IterDataset, `CheckedBatches`, ...) whose iterator has get_state()/set_state(); its
  batches do not depend on the state, so the trainer fetches the next one while the device still runs;
- a `BatchSource`: any callable `source(state, key) -> batch | SourceBatch(batch, metrics)`, optionally with
  get_state() -> JSON-able dict and set_state(dict) for host state (counters, a numpy Generator's state, a
  replay-buffer index). This is how RL plugs in: the source samples rollouts from `state.params`, scores them
  on the host and returns the batch the μ updates train on.

The key of batch b is `batch_key(state.rng, b)`, a pure function of the run's seed and the batch index, and
the source's get_state() is checkpointed with the parameters, so a resumed run calls the source with the same
(state, key, host state) and gets the same batch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Protocol, runtime_checkable

import jax
import numpy as np

from jaxllm.config import ConfigError

if TYPE_CHECKING:
    from jaxllm.train.trainer import TrainState

# Update t draws its key as fold_in(rng, t) with t < 2**31 - 1 (state.step is int32), so folding in this
# value instead starts a stream of batch keys that no update key equals.
BATCH_STREAM = 2**31 - 1


class SourceBatch(NamedTuple):
    """What a source returns when it also has host-side metrics for the batch (e.g. mean reward, seconds spent
    sampling); they are logged, unprefixed, on every metrics row of the updates that train on this batch."""

    batch: Any
    metrics: dict


@runtime_checkable
class BatchSource(Protocol):
    """`source(state, key) -> batch | SourceBatch`; see the module docstring.

    Optional members: get_state() -> JSON-able dict and set_state(dict) (both or neither), and
    `uses_state = False` for a source that never reads `state` (the trainer then fetches its batch without
    waiting for the previous updates to finish).
    """

    def __call__(self, state: "TrainState", key: jax.Array) -> Any: ...


def update_key(rng: jax.Array, step) -> jax.Array:
    """The key of the update that starts from `state.step == step`: fold_in(rng, step). A source that
    precomputes per-update quantities (e.g. old-policy log-probs under each inner step's masks) uses this."""
    return jax.random.fold_in(rng, step)


@jax.jit
def batch_key(rng: jax.Array, batch_index) -> jax.Array:
    """The key passed to the source for batch `batch_index` (= state.step // updates_per_batch)."""
    return jax.random.fold_in(jax.random.fold_in(rng, BATCH_STREAM), batch_index)


def host_rng(key: jax.Array) -> np.random.Generator:
    """A numpy Generator seeded by a JAX key: host-side randomness reproducible from the batch key alone."""
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return np.random.default_rng(np.asarray(jax.device_get(data), np.uint32).tolist())


class IteratorSource:
    """A plain iterable as a batch source: ignores (state, key); its iterator's state is the host state."""

    uses_state = False

    def __init__(self, iterable: Any):
        self.iterator = iter(iterable)
        if not (hasattr(self.iterator, "get_state") and hasattr(self.iterator, "set_state")):
            raise ConfigError("task.batches must iterate with get_state()/set_state() (e.g. a grain IterDataset) "
                              "so that resume is exact")

    def __call__(self, state, key):
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)


class FullBatch:
    """Full-batch mode (`Task.batches=None`): every step gets `batch=None`."""

    uses_state = False

    def __call__(self, state, key):
        return None


def as_batch_source(batches: Any) -> Callable:
    """`Task.batches` (None, an iterable or a BatchSource) as a callable source; validates the protocol."""
    if batches is None:
        return FullBatch()
    iterable, call = hasattr(batches, "__iter__"), callable(batches)
    if iterable and call:
        raise ConfigError(f"task.batches ({type(batches).__name__}) is both iterable and callable; give either "
                          "an iterable of batches or a BatchSource source(state, key), not one object that is both")
    if iterable:
        return IteratorSource(batches)
    if not call:
        raise ConfigError(f"task.batches must be None, an iterable of batches or a callable source(state, key); "
                          f"got {type(batches).__name__}")
    if hasattr(batches, "get_state") != hasattr(batches, "set_state"):
        raise ConfigError(f"task.batches ({type(batches).__name__}) must define both get_state() and set_state() "
                          "or neither (its host state is checkpointed for exact resume)")
    return batches


def split_output(out: Any) -> tuple[Any, dict]:
    """(batch, host metrics) of what a source returned."""
    if isinstance(out, SourceBatch):
        if not isinstance(out.metrics, dict):
            raise ConfigError(f"SourceBatch.metrics must be a dict of scalars, got {type(out.metrics).__name__}")
        return out.batch, out.metrics
    return out, {}


def get_source_state(source: Any) -> dict:
    """A copy of the source's host state (JSON round trip: checked JSON-able now, and unaffected by later
    mutation while an async checkpoint save is still writing it)."""
    if not hasattr(source, "get_state"):
        return {}
    state = source.get_state()
    try:
        return json.loads(json.dumps(state))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{type(source).__name__}.get_state() must return a JSON-able dict; {e}") from None


def set_source_state(source: Any, state: Optional[dict]) -> None:
    if hasattr(source, "set_state"):
        source.set_state(state)
    elif state:
        raise ConfigError(f"the checkpoint holds batch-source state {str(state)[:200]} but "
                          f"{type(source).__name__} has no set_state(); resume would not be exact")
