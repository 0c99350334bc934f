"""LoRA (Hu et al. 2021) for RL fine-tuning of the one Transformer: W' = W + (α/r) · A B on chosen projections.

The references (SPG, d1, wd1, IGPO) train LoRA adapters r = 128, α = 64 on an 8B model; PEFT's module names
make them act on q, k, v and up only (dllm_rl.md §2), our default targets.

How it plugs in, without another model or loop:
- `add_lora(params, cfg, key)` puts `lora_a` [*in, r] and `lora_b` [r, *out] next to the `kernel` of every
  targeted projection (B = 0, so the adapted model starts equal to the base one);
- `LoraLinear(scale)` is a `linear` for `jaxllm.models.Model(cfg, linear=...)`: it applies kernel + scale·A·B
  where the factors exist and the dense projection elsewhere, so the sampler, the RL losses and the trainer
  see an ordinary hashable model;
- `lora_optimizer(inner, params)` updates only the factors (optax.multi_transform; the base weights get
  zero updates; the trainer's `grad_norm` still covers every leaf);
- `merge_lora(params, cfg)` gives plain parameters (for a dense `Model(cfg)`, evaluation, export).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxllm.config import check
from jaxllm.models import transformer as tfm

LORA_KEYS = ("lora_a", "lora_b")
# input dimensions of each projection's kernel (the rest are outputs): o is [heads, head_dim, embed]
_N_IN = {"o": 2}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r (0: no LoRA, full fine-tuning), alpha α (scale α/r), targets: projection names among
    q k v o gate up down (attention and SwiGLU MLP; gpt2's fc / proj too)."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "up")

    def __post_init__(self):
        check(self.rank >= 0, f"lora.rank must be ≥ 0, got {self.rank}")
        check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        known = {"q", "k", "v", "o", "gate", "up", "down", "fc", "proj"}
        bad = sorted(set(self.targets) - known)
        check(not bad, f"lora.targets {bad} are not projections; choose among {sorted(known)}")
        check(len(self.targets) > 0 or self.rank == 0, "lora.targets is empty")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


def _is_target(path, node, cfg: LoraConfig) -> bool:
    return isinstance(node, dict) and "kernel" in node and path and path[-1] in cfg.targets


def _map_projections(tree, fn, cfg: LoraConfig, path=()):
    """Apply fn(path, projection dict) to every targeted projection of a nested-dict tree."""
    if _is_target(path, tree, cfg):
        return fn(path, tree)
    if isinstance(tree, dict):
        return {k: _map_projections(v, fn, cfg, (*path, k)) for k, v in tree.items()}
    return tree


def add_lora(params: Any, cfg: LoraConfig, key: jax.Array) -> Any:
    """params with lora_a ~ N(0, 1/fan_in) and lora_b = 0 on every targeted projection."""
    check(cfg.rank > 0, "add_lora needs lora.rank > 0")
    found = []

    def add(path, p):
        n_in = _N_IN.get(path[-1], 1)
        w = p["kernel"]
        fan_in = int(jnp.prod(jnp.array(w.shape[:n_in])))
        k = jax.random.fold_in(key, len(found))
        found.append(path)
        a = jax.random.normal(k, (*w.shape[:n_in], cfg.rank), jnp.float32) / jnp.sqrt(float(fan_in))
        b = jnp.zeros((cfg.rank, *w.shape[n_in:]), jnp.float32)
        return {**p, "lora_a": a.astype(w.dtype), "lora_b": b.astype(w.dtype)}

    out = _map_projections(params, add, cfg)
    check(bool(found), f"lora.targets {list(cfg.targets)} match no projection of the parameter tree")
    return out


def lora_logical_axes(axes: Any, cfg: LoraConfig) -> Any:
    """The model's logical axes with the factors' axes added (A: the kernel's input axes + None, B: None + its
    output axes), for sharded training."""

    def add(path, p):
        n_in = _N_IN.get(path[-1], 1)
        ka = tuple(p["kernel"])
        return {**p, "lora_a": (*ka[:n_in], None), "lora_b": (None, *ka[n_in:])}

    return _map_projections(axes, add, cfg)


def _delta(p: dict) -> jax.Array:
    return jnp.tensordot(p["lora_a"], p["lora_b"], axes=1)  # [*in, r] · [r, *out] -> kernel shape


@dataclasses.dataclass(frozen=True)
class LoraLinear:
    """`linear(name, p, x, eqn)` applying kernel + scale · A B when p holds LoRA factors (hashable)."""

    scale: float
    base: tfm.Linear = tfm.dense_linear

    def __call__(self, name: str, p: dict, x: jax.Array, eqn: str) -> jax.Array:
        if "lora_a" in p:
            kernel = p["kernel"] + (self.scale * _delta(p)).astype(p["kernel"].dtype)
            p = {k: v for k, v in p.items() if k not in LORA_KEYS} | {"kernel": kernel}
        return self.base(name, p, x, eqn)


def merge_lora(params: Any, cfg: LoraConfig) -> Any:
    """Plain parameters: kernel + scale · A B, factors removed."""

    def merge(path, p):
        if "lora_a" not in p:
            return p
        kernel = p["kernel"] + (cfg.scale * _delta(p)).astype(p["kernel"].dtype)
        return {k: v for k, v in p.items() if k not in LORA_KEYS} | {"kernel": kernel}

    return _map_projections(params, merge, cfg)


def lora_labels(params: Any) -> Any:
    """"lora" on the factors, "frozen" on every other leaf."""
    def label(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return "lora" if name in LORA_KEYS else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def lora_optimizer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` on the LoRA factors, zero updates (and no optimizer state) for the base weights."""
    return optax.multi_transform({"lora": inner, "frozen": optax.set_to_zero()}, lora_labels)
