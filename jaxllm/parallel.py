"""Device mesh from config, logical-axis sharding rules, and parameters created already sharded.

Parameters carry logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...; see
`jaxllm.models.transformer.logical_axes`); `RULES` maps them to mesh axes `data` / `fsdp` / `tensor`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (None = replicated). FSDP shards the embedding dimension of every matrix;
# tensor parallelism shards heads and the MLP width (Megatron-style column/row split).
RULES: tuple[tuple[str, Optional[str]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("hidden", "tensor"),
    ("input", "fsdp"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            if getattr(self, name) < 1:
                raise ConfigError(f"mesh.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor


def make_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes (logical rules + sharding constraints work)."""
    devices = list(devices if devices is not None else jax.devices())
    if cfg.size > len(devices):
        raise ConfigError(
            f"mesh data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} needs {cfg.size} devices, "
            f"only {len(devices)} present (on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        )
    arr = np.asarray(devices[: cfg.size]).reshape(cfg.data, cfg.fsdp, cfg.tensor)
    return Mesh(arr, MESH_AXES)


def logical_to_spec(axes: Sequence[Optional[str]], rules=RULES, mesh: Optional[Mesh] = None,
                    shape: Optional[Sequence[int]] = None) -> PartitionSpec:
    """PartitionSpec for one array's logical axes. A mesh axis is used at most once per array, and an
    axis whose size the mesh axis does not divide stays replicated (e.g. 9 heads on 2 tensor shards)."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        mesh_axis = table.get(name) if name is not None else None
        names = (mesh_axis,) if isinstance(mesh_axis, str) else tuple(mesh_axis or ())
        names = tuple(n for n in names if n not in used)
        if mesh is not None:
            names = tuple(n for n in names if mesh.shape[n] > 1)
            if shape is not None and names:
                size = int(np.prod([mesh.shape[n] for n in names]))
                if shape[i] % size:
                    names = ()
        used.update(names)
        out.append(None if not names else (names[0] if len(names) == 1 else names))
    return PartitionSpec(*out)


def param_shardings(abstract_params: Any, logical: Any, mesh: Mesh, rules=RULES) -> Any:
    """NamedSharding per parameter from its logical axes (trees with the same structure)."""
    return _map_with_axes(abstract_params, logical, mesh, rules)


def _map_with_axes(abstract_params, logical, mesh, rules):
    flat_p, treedef = jax.tree.flatten(abstract_params)
    flat_ax = treedef.flatten_up_to(logical)
    return jax.tree.unflatten(
        treedef, [NamedSharding(mesh, logical_to_spec(ax, rules, mesh, p.shape)) for p, ax in zip(flat_p, flat_ax)]
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shard the leading (batch) dimension over data and fsdp, replicate the rest."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def create_sharded(init_fn: Callable[[jax.Array], Any], key: jax.Array, logical: Any, mesh: Mesh, rules=RULES):
    """Run `init_fn(key)` under jit with output shardings from the logical axes: no full copy on one device."""
    abstract = jax.eval_shape(init_fn, key)
    shardings = param_shardings(abstract, logical, mesh, rules)
    return jax.jit(init_fn, out_shardings=shardings)(key), shardings


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def shardings_like(abstract_tree: Any, abstract_params: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree derived from the parameters (an optimizer state): each leaf sharded like its parameter.

    A leaf belongs to the parameter whose key path its own path contains (longest match: Adam's
    `mu['layer_0']['mlp']['up']['kernel']`, GaLore's `leaves['layer_0']['mlp']['up']['kernel'].mu`). Its dimensions
    map to the parameter's axes:
    - a state node with a `param_dims()` method says so itself, per array field and dimension (GaLore: the
      projector spans the projected axes, the moments keep the others, the rank r is no parameter axis);
    - otherwise a leaf of the parameter's shape has its axes, and a reshape merging consecutive axes (Muon's 2-D
      view [D, H h] of a q kernel [D, H, h]) has the merged groups.
    Each dimension takes the mesh axes of the parameter axes it is made of (when they divide it). The parameter's
    mesh axes left over (those of an axis GaLore projected away) then shard the largest dimension they divide, so
    the state of a sharded parameter is split over as many devices as the parameter (ZeRO-style), never
    replicated. Leaves with no parameter dimension (counts, keys) are replicated. Without this,
    `jit(optimizer.init)` puts the whole state on one device.
    """
    flat_p, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    flat_s = jax.tree.leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {tuple(path): (tuple(leaf.shape), _mesh_axes(s.spec, leaf.ndim)) for (path, leaf), s in zip(flat_p, flat_s)}
    longest = max((len(p) for p in by_path), default=0)

    def owner(path):
        for length in range(min(longest, len(path)), 0, -1):
            for i in range(len(path) - length + 1):
                hit = by_path.get(tuple(path[i:i + length]))
                if hit is not None:
                    return hit
        return None

    def leaf_sharding(path, leaf, dims=None):
        hit = owner(path)
        if hit is None:
            return replicated(mesh)
        param_shape, param_axes = hit
        if dims is None:
            dims = _reshape_groups(param_shape, tuple(leaf.shape))
        if dims is None or not any(dims):
            return replicated(mesh)
        return NamedSharding(mesh, _derived_spec(tuple(leaf.shape), dims, param_axes, mesh))

    def node_shardings(path, node):
        if not _describes_dims(node):
            return leaf_sharding(path, node)
        dims = node.param_dims()
        inner, treedef = jax.tree_util.tree_flatten_with_path(node)
        out = []
        for rel, leaf in inner:
            field = rel[0].name
            if len(dims[field]) != leaf.ndim:
                raise ValueError(f"{type(node).__name__}.param_dims() gives {len(dims[field])} dimensions for "
                                 f"{field!r} of shape {leaf.shape}")
            out.append(leaf_sharding(path, leaf, dims[field]))
        return jax.tree_util.tree_unflatten(treedef, out)

    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree, is_leaf=_describes_dims)
    return jax.tree_util.tree_unflatten(treedef, [node_shardings(path, x) for path, x in flat])


def _describes_dims(x) -> bool:
    return hasattr(x, "param_dims") and not isinstance(x, type)


def _mesh_axes(spec: PartitionSpec, ndim: int) -> list[tuple[str, ...]]:
    """The mesh axes sharding each of an array's `ndim` dimensions."""
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    return [() if e is None else ((e,) if isinstance(e, str) else tuple(e)) for e in entries]


def _reshape_groups(param_shape: tuple, shape: tuple) -> Optional[list[tuple[int, ...]]]:
    """For a `shape` that is `param_shape` with runs of consecutive axes merged: the parameter axes of each
    dimension ([D, H, h] -> [D, H h]: [(0,), (1, 2)]); None when it is no such reshape (a scalar count)."""
    groups, i = [], 0
    for size in shape:
        group, prod = [], 1
        while prod < size and i < len(param_shape):
            group.append(i)
            prod *= param_shape[i]
            i += 1
        if prod != size:
            return None
        groups.append(tuple(group))
    if any(param_shape[j] != 1 for j in range(i, len(param_shape))):
        return None
    return groups


def _derived_spec(shape: tuple, dims, param_axes: list[tuple[str, ...]], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of a state array whose dimension k is made of the parameter axes `dims[k]` (or None)."""
    used: set[str] = set()
    out: list[list[str]] = []
    for size, group in zip(shape, dims):
        names = [a for axis in (group or ()) for a in param_axes[axis] if a not in used]
        if names and size % int(np.prod([mesh.shape[a] for a in names])):
            names = []  # e.g. a merged heads dimension the tensor axis does not divide: leave it to the fallback
        used.update(names)
        out.append(names)
    for a in (a for axes in param_axes for a in axes if a not in used):
        per_shard = [size // int(np.prod([mesh.shape[n] for n in names])) for size, names in zip(shape, out)]
        fits = [k for k in range(len(shape)) if per_shard[k] % mesh.shape[a] == 0]
        if fits:
            out[max(fits, key=lambda k: per_shard[k])].append(a)
    return PartitionSpec(*[None if not n else (n[0] if len(n) == 1 else tuple(n)) for n in out])


# --- Several processes (JAX's multi-controller runtime, `jax.distributed`) --------------------------------
# Every process runs the same program on its own devices; `jax.devices()` lists the devices of all of them
# (process 0's first), so `make_mesh` builds one global mesh. Host-side work must then be process-aware: each
# process feeds the rows of a batch its devices hold, and files are written by process 0 only.

# Set by `python -m jaxllm.launch -n N` for each local process; the JAX_* names are jax's own.
ENV_COORDINATOR = ("JAXLLM_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("JAXLLM_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("JAXLLM_PROCESS_ID", "JAX_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the processes meet. Empty / 0 / -1 fields are left to `jax.distributed.initialize`'s own
    detection (TPU pod slices, SLURM, Open MPI)."""

    coordinator_address: str = ""  # host:port of process 0's coordinator service
    num_processes: int = 0
    process_id: int = -1

    def __post_init__(self):
        if self.num_processes < 0:
            raise ConfigError(f"distributed.num_processes must be >= 0, got {self.num_processes}")
        if self.num_processes and not -1 <= self.process_id < self.num_processes:
            raise ConfigError(f"distributed.process_id={self.process_id} must be in [0, {self.num_processes})")
        if self.coordinator_address and ":" not in self.coordinator_address:
            raise ConfigError(f"distributed.coordinator_address={self.coordinator_address!r} must be host:port")


def distributed_config_from_env(env: Optional[dict] = None) -> Optional[DistributedConfig]:
    """The DistributedConfig the environment asks for, or None when it names no coordinator."""
    import os

    env = os.environ if env is None else env

    def first(names):
        return next((env[n] for n in names if env.get(n)), "")

    address = first(ENV_COORDINATOR)
    if not address:
        return None
    try:
        return DistributedConfig(address, int(first(ENV_NUM_PROCESSES) or 0), int(first(ENV_PROCESS_ID) or -1))
    except ValueError as e:
        raise ConfigError(f"bad distributed environment ({', '.join(ENV_NUM_PROCESSES + ENV_PROCESS_ID)}): {e}") from None


def cluster_detected(env: Optional[dict] = None) -> bool:
    """Whether this process runs under a multi-process scheduler that `jax.distributed.initialize()` detects by
    itself: SLURM with more than one task, Open MPI with more than one rank, a TPU slice with several hosts."""
    import os

    env = os.environ if env is None else env
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(cfg: Optional[DistributedConfig] = None, env: Optional[dict] = None, detect: bool = False) -> bool:
    """Start the distributed runtime once, before any other JAX call of the process. Returns whether this is a
    multi-process run.

    `cfg`, else the environment (`ENV_COORDINATOR` / `ENV_NUM_PROCESSES` / `ENV_PROCESS_ID`), else a detected
    cluster (`cluster_detected`: jax reads SLURM / Open MPI / TPU metadata itself); with none of them it does
    nothing (one process). detect=True (a process started as one of many, `jaxllm.launch --worker`) leaves
    a missing configuration to `jax.distributed.initialize()` itself, which also reads the TPU metadata server
    and fails clearly outside a cluster. On CPU the cross-process collectives go through gloo (TCP; loopback on
    one host).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    cfg = cfg if cfg is not None else distributed_config_from_env(env)
    if cfg is None and not detect and not cluster_detected(env):
        return False
    _use_gloo_on_cpu()
    if cfg is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(cfg.coordinator_address or None, cfg.num_processes or None,
                                   cfg.process_id if cfg.process_id >= 0 else None)
    return jax.process_count() > 1


def _use_gloo_on_cpu() -> None:
    import os

    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] in ("cpu", ""):
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except (AttributeError, ValueError):  # a jax without the option: its default applies
            pass


def is_main_process() -> bool:
    """Process 0: the one that writes metrics, TensorBoard, plots, summaries and prints the progress line."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a [global_rows, ...] batch under `batch_sharding(mesh, ·)` that this process's devices hold:
    one contiguous block (the devices of a process are consecutive in `jax.devices()`)."""
    sharding = batch_sharding(mesh, 1)
    spans = sorted({(ix[0].start or 0, global_rows if ix[0].stop is None else ix[0].stop)
                    for ix in sharding.addressable_devices_indices_map((global_rows,)).values()})
    start, stop = spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > stop:
            raise ConfigError(f"this process holds rows {spans} of the batch, not one contiguous block; build the "
                              "mesh from jax.devices() in their default order")
        stop = max(stop, b)
    return slice(start, stop)


def process_shard(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """(shard index, shard count) for a data pipeline that reads only this process's rows of each batch of
    `global_rows` rows: rows [index·n, (index+1)·n) with n = global_rows / count."""
    rows = process_rows(mesh, global_rows)
    n = rows.stop - rows.start
    if global_rows % n or rows.start % n:
        raise ConfigError(f"batch of {global_rows} rows does not split evenly over the {jax.process_count()} "
                          f"processes (this one holds rows {rows.start}..{rows.stop - 1})")
    return rows.start // n, global_rows // n


def global_batch(batch: Any, mesh: Mesh, process_local: bool) -> Any:
    """A batch pytree as global arrays sharded by `batch_sharding`, built with
    `jax.make_array_from_process_local_data` (no device of another process is touched).

    process_local=False: every leaf is the whole batch [B, ...] (identical on all processes) and each process
    keeps its own rows. process_local=True: every leaf is this process's rows [B / processes, ...] (a pipeline
    sharded by `process_shard`). Device arrays already on the mesh are resharded in place."""
    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, batch_sharding(mesh, x.ndim))
        x = np.asarray(x)
        if x.ndim == 0:
            raise ConfigError("a batch leaf is a scalar; every batch leaf needs a leading batch axis")
        sharding = batch_sharding(mesh, x.ndim)
        if process_local:
            rows = x.shape[0] * jax.process_count()
            local = process_rows(mesh, rows)
            if local.stop - local.start != x.shape[0]:
                raise ConfigError(f"process-local batch leaf has {x.shape[0]} rows, but this process holds "
                                  f"{local.stop - local.start} of {rows}")
        else:
            rows = x.shape[0]
            x = x[process_rows(mesh, rows)]
        return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))

    return jax.tree.map(put, batch)
