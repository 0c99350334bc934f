"""grain pipelines for in-memory array datasets, with an explicit seed.

Two modes, as the trainer sees them:
- mini-batch: `minibatches(arrays, batch_size, seed)` is an endless grain IterDataset of batches drawn
  without replacement and reshuffled every epoch; its iterator has get_state()/set_state(), so the trainer
  checkpoints it and a resumed run sees exactly the batches it would have seen.
- full batch: pass `Task(batches=None)` and close over the (device) arrays in `loss_fn`; nothing is copied
  per step. `batches_or_none(arrays, 0, seed)` returns None for this mode so configs can say `batch_size=0`.
"""

from __future__ import annotations

from typing import Any, Optional

import grain
import jax
import numpy as np

from jaxllm.config import ConfigError


def _leading_size(arrays: Any) -> int:
    leaves = jax.tree.leaves(arrays)
    if not leaves:
        raise ConfigError("minibatches needs at least one array")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ConfigError(f"every array must share the leading (example) axis; got leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def minibatches(arrays: Any, batch_size: int, seed: int, shuffle: bool = True,
                shard: tuple[int, int] = (0, 1)) -> grain.IterDataset:
    """Endless batches of `batch_size` rows of `arrays` (a pytree of arrays sharing the leading axis).

    Epoch e visits every row once in a permutation seeded by (seed, e); a batch may span two epochs.
    shard=(i, n): only rows [i·b, (i+1)·b), b = batch_size / n, of each of those batches are read (one process
    of n; `jaxllm.parallel.process_shard` gives its (i, n)); the n shards together are the unsharded batch.
    """
    n = _leading_size(arrays)
    if not 1 <= batch_size <= n:
        raise ConfigError(f"batch_size must be in [1, {n}] (the number of examples), got {batch_size}")
    index, count = shard
    if not (count >= 1 and 0 <= index < count and batch_size % count == 0):
        raise ConfigError(f"shard={shard} must be (index, count) with 0 <= index < count and count dividing "
                          f"batch_size={batch_size}")
    part = slice(index * batch_size // count, (index + 1) * batch_size // count)
    host = jax.tree.map(np.asarray, arrays)
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.seed(seed).shuffle()
    ds = ds.repeat(None).batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda idx: jax.tree.map(lambda x: x[np.asarray(idx)[part]], host))
    # In-memory gathers are cheap: no read-ahead threads (grain's default prefetches 500 elements with 16
    # threads, which only burns CPU here and keeps going past the step a run stops at).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def batches_or_none(arrays: Any, batch_size: int, seed: int) -> Optional[grain.IterDataset]:
    """`minibatches(...)` for batch_size > 0, None (the trainer's full-batch mode) for batch_size == 0."""
    if batch_size < 0:
        raise ConfigError(f"batch_size must be >= 0 (0 = full batch), got {batch_size}")
    return None if batch_size == 0 else minibatches(arrays, batch_size, seed)
