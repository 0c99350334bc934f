"""Optimizers from a frozen config, with an explicit label function saying which transform owns each leaf.

`OptimizerConfig(name="adamw" | "galore_adamw" | "muon", ...)` -> `build_optimizer(cfg)`: an optax
transform = optional global-norm clipping, then `optax.partition` over labels from `transformer_labels`:
attention and MLP kernels of the one Transformer (`layer_i/attn/{q,k,v,o}/kernel`, `layer_i/mlp/*/kernel`,
galore-torch's `"attn" in name or "mlp" in name` rule for nn.Linear weights) go to GaLore or Muon;
embeddings, lm_head, norms and biases go to AdamW.

3-D attention kernels as matrices (`transformer_matrix_view`): q/k/v kernels [D, H, h] are the matrix
D x (H h) and the o kernel [H, h, D] is (H h) x D (a reshape that merges the head axes, exactly HF's
q_proj / o_proj weights up to the transpose); GaLore sees the transpose, torch's (out, in) orientation, so
its `std` side picks the same projector as galore-torch on the HF module. Muon gets the same 2-D reshape
(Newton-Schulz orthogonalisation is transpose-invariant).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import optax

from jaxllm.config import ConfigError, check, check_choice
from jaxllm.optim import galore as gl
from jaxllm.optim import muon as muon_lib

OPTIMIZERS = ("adamw", "galore_adamw", "muon")


def transformer_labels(params: Any, matrix_label: str = "galore", rest_label: str = "adamw") -> Any:
    """Label per leaf: `matrix_label` for attention/MLP kernels, `rest_label` for everything else."""

    def label(path, leaf):
        name = gl.path_name(path)
        parts = name.split("/")
        is_matrix = parts[-1] == "kernel" and ("attn" in parts or "mlp" in parts) and leaf.ndim >= 2
        return matrix_label if is_matrix else rest_label

    return jax.tree_util.tree_map_with_path(label, params)


def transformer_matrix_view(name: str, shape: tuple) -> gl.MatrixView:
    """o kernels [H, h, D] -> (H h) x D; every other kernel [D, ...] -> D x rest; transposed (torch layout)."""
    is_out = name.endswith("attn/o/kernel")
    return gl.MatrixView(row_axes=len(shape) - 1 if is_out else 1, transpose=True)


def as_matrices(inner: optax.GradientTransformation, select: Callable[[str, tuple], bool],
                view_fn: Callable[[str, tuple], gl.MatrixView] = transformer_matrix_view
                ) -> optax.GradientTransformation:
    """Run `inner` on a tree whose selected >2-D leaves are reshaped to their 2-D view (rows, cols)."""

    def to_2d(tree):
        def f(path, x):
            name = gl.path_name(path)
            if x is None or x.ndim <= 2 or not select(name, x.shape):
                return x
            rows = math.prod(x.shape[: view_fn(name, x.shape).row_axes])
            return x.reshape(rows, -1)

        return jax.tree_util.tree_map_with_path(f, tree)

    def init(params):
        return inner.init(to_2d(params))

    def update(updates, state, params=None):
        new, state = inner.update(to_2d(updates), state, None if params is None else to_2d(params))
        return jax.tree.map(lambda n, u: n.reshape(u.shape), new, updates), state

    return optax.GradientTransformation(init, update)


def galore_adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: int | float = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    galore_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    label_fn: Callable[[Any], Any] = transformer_labels,
    view_fn: Callable[[str, tuple], gl.MatrixView] = transformer_matrix_view,
    **galore_kwargs,
) -> optax.GradientTransformation:
    """GaLore (galore-torch `GaLoreAdamW` update, decay of the updated weight) on leaves labelled "galore",
    `optax.adamw` on leaves labelled "adamw". `galore_kwargs` go to `scale_by_galore` (side, projector,
    oversample, power_iters, moments, stagger, moment_dtype, seed, eps_mode)."""
    galore_lr = learning_rate if galore_learning_rate is None else galore_learning_rate
    galore_part = gl.galore_only(galore_lr, weight_decay, rank=rank, update_proj_gap=update_proj_gap, scale=scale,
                                 b1=b1, b2=b2, eps=eps, view_fn=view_fn, **galore_kwargs)
    adam_part = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.partition({"galore": galore_part, "adamw": adam_part}, _checked(label_fn, ("galore", "adamw")))


def _checked(label_fn, allowed):
    def labels(params):
        out = label_fn(params)
        bad = [lab for lab in jax.tree.leaves(out) if lab not in allowed]
        if bad:
            raise ConfigError(f"label function returned {bad[0]!r}; expected one of {list(allowed)}")
        return out

    return labels


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    decay_steps: int = 0  # > 0: cosine decay to min_lr_ratio * peak over this many steps (after warmup)
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm clipping; 0 = off
    # GaLore (arXiv 2403.03507 / 2504.20437)
    rank: int = 128
    rank_fraction: float = 0.0  # > 0: rank = this fraction of each matrix's smaller side (overrides rank)
    update_proj_gap: int = 200
    galore_scale: float = 0.25
    galore_learning_rate: float = 0.0  # 0: learning_rate
    side: str = "std"
    projector: str = "svd"
    oversample: int = 8
    power_iters: int = 2
    moments: str = "keep"
    stagger: bool = False
    moment_dtype: str = "float32"
    seed: int = 0
    # Muon
    muon_learning_rate: float = 0.02
    muon_beta: float = 0.95

    def __post_init__(self):
        check_choice("optim.name", self.name, OPTIMIZERS)
        check(self.learning_rate > 0, f"optim.learning_rate must be > 0, got {self.learning_rate}")
        check(self.warmup_steps >= 0 and self.decay_steps >= 0, "optim.warmup_steps/decay_steps must be >= 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        check(0.0 <= self.rank_fraction <= 1.0, f"optim.rank_fraction must be in [0, 1], got {self.rank_fraction}")
        check(self.rank >= 1, f"optim.rank must be >= 1, got {self.rank}")
        check_choice("optim.side", self.side, gl.SIDES)
        check_choice("optim.projector", self.projector, gl.PROJECTORS)
        check_choice("optim.moments", self.moments, gl.MOMENT_MODES)
        check_choice("optim.moment_dtype", self.moment_dtype, ("float32", "bfloat16"))


def schedule(cfg: OptimizerConfig, peak: float) -> optax.ScalarOrSchedule:
    if cfg.warmup_steps == 0 and cfg.decay_steps == 0:
        return peak
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else peak, peak_value=peak, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.warmup_steps + max(cfg.decay_steps, 1), end_value=peak * cfg.min_lr_ratio)


def build_optimizer(cfg: OptimizerConfig, label_fn: Optional[Callable[[Any], Any]] = None
                    ) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name`; `label_fn(params)` overrides `transformer_labels` (it must return
    "galore"/"adamw" for galore_adamw, "muon"/"adam" for muon)."""
    lr = schedule(cfg, cfg.learning_rate)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "galore_adamw":
        galore_lr = schedule(cfg, cfg.galore_learning_rate) if cfg.galore_learning_rate > 0 else None
        opt = galore_adamw(
            lr, rank=cfg.rank_fraction if cfg.rank_fraction > 0 else cfg.rank, update_proj_gap=cfg.update_proj_gap,
            scale=cfg.galore_scale, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
            galore_learning_rate=galore_lr, label_fn=label_fn or transformer_labels, side=cfg.side,
            projector=cfg.projector, oversample=cfg.oversample, power_iters=cfg.power_iters, moments=cfg.moments,
            stagger=cfg.stagger, moment_dtype=cfg.moment_dtype, seed=cfg.seed)
    else:
        labels = label_fn or (lambda p: transformer_labels(p, "muon", "adam"))
        inner = muon_lib.muon_with_adam(labels, lr, muon_learning_rate=schedule(cfg, cfg.muon_learning_rate),
                                        beta=cfg.muon_beta, weight_decay=cfg.weight_decay, adam_b1=cfg.b1,
                                        adam_b2=cfg.b2, adam_eps=cfg.eps)
        opt = as_matrices(inner, select=lambda name, shape: name.split("/")[-1] == "kernel")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt
