"""Optimizers from frozen configs, with an explicit rule saying which transform owns each leaf.

One config class per optimizer, each validated and with a `build(total_steps, matrices)`; on the command line
`optim=<name>` selects one (`OPTIMIZERS`) and `optim.<field>=...` sets its fields:

    adamw          AdamWConfig        optax.adamw (decoupled weight decay)
    adam           AdamConfig         Adam with coupled L2 (torch `Adam(weight_decay=...)`: g <- g + wd theta first)
    galore_adamw   GaLoreAdamWConfig  GaLore / GaLore 2 on the matrices, AdamW on the rest
    muon           MuonConfig         Muon on the matrices, Adam (decoupled or coupled decay) on the rest

Every one shares `OptimizerConfig`'s fields: peak `learning_rate` and its `schedule` (constant, or warmup then
cosine / linear decay to `min_lr_ratio` x peak at the end of training), weight decay, Adam's betas and eps,
global-norm clipping. The optax transform is optional clipping, then, for GaLore and Muon, `optax.partition`
over `matrices(params)` (default `transformer_matrices`): attention and MLP kernels of the one Transformer
(`layer_i/attn/{q,k,v,o}/kernel`, `layer_i/mlp/*/kernel`, galore-torch's `"attn" in name or "mlp" in name` rule
for nn.Linear weights) go to GaLore or Muon; embeddings, lm_head, norms and biases go to AdamW / Adam.

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

from jaxllm.config import ConfigError, check, check_choice, register_choices
from jaxllm.optim import galore as gl
from jaxllm.optim import muon as muon_lib

SCHEDULES = ("constant", "cosine", "linear")


def transformer_matrices(params: Any) -> Any:
    """True per leaf for the attention/MLP kernels of the one Transformer (GaLore's and Muon's), else False."""

    def is_matrix(path, leaf):
        parts = gl.path_name(path).split("/")
        return parts[-1] == "kernel" and ("attn" in parts or "mlp" in parts) and leaf.ndim >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def transformer_labels(params: Any, matrix_label: str = "galore", rest_label: str = "adamw") -> Any:
    """Label per leaf: `matrix_label` for attention/MLP kernels, `rest_label` for everything else."""
    return jax.tree.map(lambda m: matrix_label if m else rest_label, transformer_matrices(params))


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
    """The fields every optimizer has. Not an optimizer itself: use a subclass (`OPTIMIZERS`)."""

    name: str = dataclasses.field(default="", init=False)  # each subclass's registry name (kept in config.json)
    learning_rate: float = 1e-3  # peak
    schedule: str = "constant"  # constant | cosine | linear: warmup, then decay to min_lr_ratio x peak at the end
    warmup_steps: int = 0  # linear warmup from 0 over this many steps...
    warmup_fraction: float = 0.0  # ...or over this fraction of the training steps (at most one of the two)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0  # global-norm clipping; 0 = off

    def __post_init__(self):
        if type(self) is OptimizerConfig:
            raise ConfigError(f"OptimizerConfig is the base class; choose one of {', '.join(OPTIMIZERS)}")
        p = "optim."
        check(self.learning_rate > 0, f"{p}learning_rate must be > 0, got {self.learning_rate}")
        check_choice(f"{p}schedule", self.schedule, SCHEDULES)
        check(self.warmup_steps >= 0, f"{p}warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0.0 <= self.warmup_fraction < 1.0, f"{p}warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        check(not (self.warmup_steps and self.warmup_fraction),
              f"give {p}warmup_steps or {p}warmup_fraction, not both")
        check(self.schedule != "constant" or not (self.warmup_steps or self.warmup_fraction),
              f"{p}schedule=constant has no warmup; use schedule=cosine or linear")
        check(0.0 <= self.min_lr_ratio <= 1.0, f"{p}min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check(self.weight_decay >= 0, f"{p}weight_decay must be >= 0, got {self.weight_decay}")
        check(0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0, f"{p}b1, b2 must be in [0, 1), got {self.b1}, {self.b2}")
        check(self.eps >= 0, f"{p}eps must be >= 0, got {self.eps}")
        check(self.grad_clip >= 0, f"{p}grad_clip must be >= 0, got {self.grad_clip}")

    def lr(self, peak: float, total_steps: Optional[int]) -> optax.ScalarOrSchedule:
        """The learning rate schedule of this config with peak `peak` over `total_steps` optimizer updates."""
        if self.schedule == "constant":
            return peak
        if total_steps is None or total_steps < 1:
            raise ConfigError(f"optim.schedule={self.schedule} decays until the end of training: build the "
                              f"optimizer with total_steps >= 1 (got {total_steps})")
        warm = min(self.warmup_steps or int(self.warmup_fraction * total_steps), total_steps)
        end = peak * self.min_lr_ratio
        if self.schedule == "cosine":
            return optax.warmup_cosine_decay_schedule(init_value=0.0 if warm else peak, peak_value=peak,
                                                      warmup_steps=warm, decay_steps=warm + max(total_steps - warm, 1),
                                                      end_value=end)
        decay = optax.linear_schedule(peak, end, max(1, total_steps - warm))
        if not warm:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])

    def build(self, total_steps: Optional[int] = None, matrices: Optional[Callable[[Any], Any]] = None
              ) -> optax.GradientTransformation:
        """The optax transform. total_steps: optimizer updates of the run (needed by decaying schedules).
        matrices(params) -> tree of bool: the leaves GaLore / Muon own (default `transformer_matrices`)."""
        opt = self._transform(lambda peak: self.lr(peak, total_steps), matrices or transformer_matrices)
        if self.grad_clip > 0:
            opt = optax.chain(optax.clip_by_global_norm(self.grad_clip), opt)
        return opt

    def _transform(self, lr: Callable[[float], optax.ScalarOrSchedule], matrices) -> optax.GradientTransformation:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class AdamWConfig(OptimizerConfig):
    """optax.adamw: decoupled weight decay."""

    name: str = dataclasses.field(default="adamw", init=False)

    def _transform(self, lr, matrices):
        return optax.adamw(lr(self.learning_rate), b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class AdamConfig(OptimizerConfig):
    """Adam with coupled L2, as torch `Adam(weight_decay=wd)`: the decay joins the gradient before Adam's
    normalisation (the Li2 reference's optimizer)."""

    name: str = dataclasses.field(default="adam", init=False)

    def _transform(self, lr, matrices):
        return optax.chain(optax.add_decayed_weights(self.weight_decay),
                           optax.adam(lr(self.learning_rate), b1=self.b1, b2=self.b2, eps=self.eps))


@dataclasses.dataclass(frozen=True)
class GaLoreAdamWConfig(OptimizerConfig):
    """GaLore (arXiv 2403.03507) / GaLore 2 (arXiv 2504.20437, `projector=randomized`) on the matrices at
    `galore_learning_rate` (0: learning_rate) with scale alpha, AdamW on the rest. The one home of GaLore's
    hyper-parameters; `galore.scale_by_galore` documents each."""

    name: str = dataclasses.field(default="galore_adamw", init=False)
    eps: float = 1e-6  # galore-torch / HF AdamW
    rank: int = 128
    rank_fraction: float = 0.0  # > 0: rank = this fraction of each matrix's smaller side (overrides rank)
    update_proj_gap: int = 200  # T: steps between projector refreshes
    scale: float = 0.25  # alpha
    galore_learning_rate: float = 0.0  # 0: learning_rate
    side: str = "std"
    projector: str = "svd"  # svd (GaLore) | randomized (GaLore 2's range finder)
    oversample: int = 8  # randomized: sketch width rank + oversample
    power_iters: int = 2  # randomized: power iterations
    randomized_variant: str = "fast"
    moments: str = "keep"  # at a refresh: keep (galore-torch) | reset | rotate
    eps_mode: str = "torch"
    stagger: bool = False
    moment_dtype: str = "float32"
    seed: int = 0  # randomized refresh keys

    def __post_init__(self):
        super().__post_init__()
        check(0.0 <= self.rank_fraction <= 1.0, f"optim.rank_fraction must be in [0, 1], got {self.rank_fraction}")
        check(self.rank >= 1, f"optim.rank must be >= 1, got {self.rank}")
        check(self.update_proj_gap >= 1, f"optim.update_proj_gap must be >= 1, got {self.update_proj_gap}")
        check(self.scale > 0, f"optim.scale must be > 0, got {self.scale}")
        check(self.galore_learning_rate >= 0, f"optim.galore_learning_rate must be >= 0, got {self.galore_learning_rate}")
        check_choice("optim.side", self.side, gl.SIDES)
        check_choice("optim.projector", self.projector, gl.PROJECTORS)
        check_choice("optim.randomized_variant", self.randomized_variant, ("fast", "halko"))
        check_choice("optim.moments", self.moments, gl.MOMENT_MODES)
        check_choice("optim.eps_mode", self.eps_mode, gl.EPS_MODES)
        check_choice("optim.moment_dtype", self.moment_dtype, ("float32", "bfloat16"))
        check(self.oversample >= 0 and self.power_iters >= 0,
              f"optim.oversample and optim.power_iters must be >= 0, got {self.oversample}, {self.power_iters}")

    def _transform(self, lr, matrices):
        galore_lr = lr(self.galore_learning_rate) if self.galore_learning_rate > 0 else None
        return galore_adamw(
            lr(self.learning_rate), rank=self.rank_fraction if self.rank_fraction > 0 else self.rank,
            update_proj_gap=self.update_proj_gap, scale=self.scale, b1=self.b1, b2=self.b2, eps=self.eps,
            weight_decay=self.weight_decay, galore_learning_rate=galore_lr,
            label_fn=lambda p: jax.tree.map(lambda m: "galore" if m else "adamw", matrices(p)), side=self.side,
            projector=self.projector, oversample=self.oversample, power_iters=self.power_iters,
            randomized_variant=self.randomized_variant, moments=self.moments, eps_mode=self.eps_mode,
            stagger=self.stagger, moment_dtype=self.moment_dtype, seed=self.seed)


@dataclasses.dataclass(frozen=True)
class MuonConfig(OptimizerConfig):
    """Muon (`muon.muon`, the Li2 reference's Newton-Schulz) on the matrices at `muon_learning_rate`
    (0: learning_rate) with momentum `beta` and decoupled decay; Adam on the rest, with decoupled decay (AdamW)
    or, `adam_coupled_decay`, torch Adam's coupled L2. >2-D kernels are seen as matrices (`as_matrices`)."""

    name: str = dataclasses.field(default="muon", init=False)
    muon_learning_rate: float = 0.02  # 0: learning_rate
    # > 0: the matrices' peak is this multiple of learning_rate (overrides muon_learning_rate), so one Muon
    # config serves runs at different learning rates (e.g. an SFT and an RL phase), as rank_fraction does for
    # GaLore's rank
    muon_lr_ratio: float = 0.0
    beta: float = 0.95
    nesterov: bool = False
    adam_coupled_decay: bool = False

    def __post_init__(self):
        super().__post_init__()
        check(self.muon_learning_rate >= 0, f"optim.muon_learning_rate must be >= 0, got {self.muon_learning_rate}")
        check(self.muon_lr_ratio >= 0, f"optim.muon_lr_ratio must be >= 0, got {self.muon_lr_ratio}")
        check(0.0 <= self.beta < 1.0, f"optim.beta must be in [0, 1), got {self.beta}")

    @property
    def matrix_learning_rate(self) -> float:
        """The peak learning rate of the Muon matrices."""
        if self.muon_lr_ratio > 0:
            return self.muon_lr_ratio * self.learning_rate
        return self.muon_learning_rate or self.learning_rate

    def _transform(self, lr, matrices):
        muon_lr = lr(self.matrix_learning_rate)
        inner = muon_lib.muon_with_adam(
            lambda p: jax.tree.map(lambda m: "muon" if m else "adam", matrices(p)), lr(self.learning_rate),
            muon_learning_rate=muon_lr, beta=self.beta, weight_decay=self.weight_decay, nesterov=self.nesterov,
            adam_b1=self.b1, adam_b2=self.b2, adam_eps=self.eps, adam_coupled_decay=self.adam_coupled_decay)
        return as_matrices(inner, select=lambda name, shape: name.split("/")[-1] == "kernel")


# `optim=<name>`: each class at its defaults.
OPTIMIZERS: dict[str, OptimizerConfig] = {
    "adamw": AdamWConfig(), "adam": AdamConfig(), "galore_adamw": GaLoreAdamWConfig(), "muon": MuonConfig(),
}
register_choices(OptimizerConfig, OPTIMIZERS)

# The Li2 grokking reference's three optimizers (yuandong-tian/understanding, cogo/modular_addition_simple2.py)
# at the settings experiments/li2_*.py run: torch Adam (coupled L2), AdamW, and Muon (beta 0.99, decoupled decay)
# on the first layer W with coupled-L2 Adam on V, one learning rate for both.
LI2_OPTIMIZERS: dict[str, OptimizerConfig] = {
    "adam": AdamConfig(learning_rate=1e-3, weight_decay=2e-4),
    "adamw": AdamWConfig(learning_rate=1e-3, weight_decay=2e-4),
    "muon": MuonConfig(learning_rate=1e-3, muon_learning_rate=0.0, beta=0.99, weight_decay=2e-4,
                       adam_coupled_decay=True),
}


def li2_matrices(params: Any) -> Any:
    """The Li2 network's Muon leaves: the first layer W [2M, K], not the readout V (the reference's choice)."""
    return {k: k == "W" for k in params}


def build_optimizer(cfg: OptimizerConfig, total_steps: Optional[int] = None,
                    matrices: Optional[Callable[[Any], Any]] = None) -> optax.GradientTransformation:
    """`cfg.build(total_steps, matrices)`: the optax transform of any optimizer config."""
    if not isinstance(cfg, OptimizerConfig):
        raise ConfigError(f"expected an optimizer config ({', '.join(OPTIMIZERS)}), got {type(cfg).__name__}")
    return cfg.build(total_steps, matrices)
