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
    """Shardings for a tree derived from the parameters (an optimizer state), matched by key path.

    A leaf whose key path ends with a parameter's path and has that parameter's shape (Adam's `mu['layer_0']
    ['mlp']['up']['kernel']`) gets the parameter's sharding; everything else (counts, scalars) is replicated.
    Without this, `jit(optimizer.init)` puts the moments on one device.
    """
    flat_p, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    flat_s = jax.tree.leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    by_path = {tuple(path): (leaf.shape, s) for (path, leaf), s in zip(flat_p, flat_s)}

    def pick(path, leaf):
        for i in range(len(path)):
            hit = by_path.get(tuple(path[i:]))
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)
