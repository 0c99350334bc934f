"""The Li2 grokking network (arXiv 2509.21519) and its diagnostics, as pure jittable functions.

Model, as the reference code builds it (yuandong-tian/understanding, cogo/modular_addition_simple2.py):

    x = [onehot(a); onehot(b)] ∈ R^{2M},  F = σ(x W) ∈ R^K,  ŷ = F V ∈ R^M
    W: [2M, K], V: [K, M], no biases; σ ∈ {sqr: h², relu, silu, relu2: relu(h)²}

Since x is two one-hot blocks, x W = W[a] + W[M + b] exactly (every other product is 0·w = 0), so the
forward gathers rows instead of multiplying by a one-hot matrix. Init is torch nn.Linear's default
U(−1/√fan_in, 1/√fan_in) with fan_in = 2M for W and K for V; `top_init_scale` multiplies V (0 = the paper's
zero-init top layer).

Paper notation (rows are samples): X [n, 2M], F = σ(XW) [n, K], Y one-hot [n, M], P⊥ = I − 11ᵀ/n,
Ỹ = P⊥ Y, F̃ = P⊥ F. Diagnostics:
- `backprop_gradient`: G_F = P⊥ (Y_c − C(F V)) Vᵀ [n, K], Y_c = Y − 1/M, C centres over classes.
- `node_energy`: E(w_j) = ½ ‖Ỹᵀ σ(X w_j)‖² per hidden node (Thm 1: stage II is gradient ascent on E).
- `fourier_analysis`: power of each node's input weights per frequency of Z_M (conjugate pairs folded).
- `relative_movement`: ‖θ_t − θ_0‖ / ‖θ_0‖ per layer.
- `stage`: lazy / independent / interactive, by the rule documented at `stage_of`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxllm.config import check, check_choice

ACTIVATIONS = ("sqr", "relu", "silu", "relu2")
LOSSES = ("mse", "ce")
STAGES = ("lazy", "independent", "interactive")


@dataclasses.dataclass(frozen=True)
class Li2Config:
    group_order: int  # M: one-hot size of each operand and number of classes
    hidden: int = 512  # K
    activation: str = "sqr"
    loss: str = "mse"
    top_init_scale: float = 1.0

    def __post_init__(self):
        check(isinstance(self.group_order, int) and self.group_order >= 2,
              f"group_order must be an integer >= 2, got {self.group_order!r}")
        check(isinstance(self.hidden, int) and self.hidden >= 1, f"hidden must be an integer >= 1, got {self.hidden!r}")
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("loss", self.loss, LOSSES)
        check(self.top_init_scale >= 0, f"top_init_scale must be >= 0, got {self.top_init_scale}")


def activation_fn(name: str):
    check_choice("activation", name, ACTIVATIONS)
    return {
        "sqr": jnp.square,
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "relu2": lambda h: jnp.square(jax.nn.relu(h)),
    }[name]


def init_params(cfg: Li2Config, key: jax.Array) -> dict:
    """{"W": [2M, K], "V": [K, M]} float32, torch nn.Linear default init, V scaled by top_init_scale."""
    m, k = cfg.group_order, cfg.hidden
    kw, kv = jax.random.split(key)
    bound_w = 1.0 / jnp.sqrt(2.0 * m)
    bound_v = 1.0 / jnp.sqrt(float(k))
    w = jax.random.uniform(kw, (2 * m, k), jnp.float32, -bound_w, bound_w)
    v = jax.random.uniform(kv, (k, m), jnp.float32, -bound_v, bound_v) * cfg.top_init_scale
    return {"W": w, "V": v}


def one_hot_inputs(a: jax.Array, b: jax.Array, order: int) -> jax.Array:
    """X = [onehot(a); onehot(b)]: [n, 2M] float32 for operands a, b: [n] int32."""
    return jnp.concatenate([jax.nn.one_hot(a, order), jax.nn.one_hot(b, order)], axis=-1)


def hidden_preactivation(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    """X W as a gather: [n, K] = W[a] + W[M + b]."""
    m = params["W"].shape[0] // 2
    return params["W"][a] + params["W"][m + b]


def forward(cfg: Li2Config, params: dict, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits [n, M], F [n, K]) for operands a, b: [n] int32."""
    feats = activation_fn(cfg.activation)(hidden_preactivation(params, a, b))
    return feats @ params["V"], feats


def centred_targets(y: jax.Array, order: int) -> jax.Array:
    """Y_c = onehot(y) − 1/M: [n, M] (the reference's MSE target)."""
    return jax.nn.one_hot(y, order) - 1.0 / order


def mse_per_sample(logits: jax.Array, y: jax.Array) -> jax.Array:
    """The reference's MSE per sample: ‖ô − (e_y − 1/M)‖², ô = ŷ − mean_j ŷ_j. logits [n, M] -> [n]."""
    order = logits.shape[-1]
    centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
    return jnp.sum(jnp.square(centred - centred_targets(y, order)), axis=-1)


def mse_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(mse_per_sample(logits, y))


def cross_entropy_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def per_sample_loss(cfg: Li2Config, logits: jax.Array, y: jax.Array) -> jax.Array:
    """[n] losses of the configured kind (mse or ce)."""
    if cfg.loss == "mse":
        return mse_per_sample(logits, y)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def loss_and_accuracy(cfg: Li2Config, params: dict, a: jax.Array, b: jax.Array, y: jax.Array,
                      weights: jax.Array | None = None):
    """(mean loss, accuracy) over samples; `weights` [n] (e.g. a 0/1 padding mask) make both weighted means."""
    logits, _ = forward(cfg, params, a, b)
    losses = per_sample_loss(cfg, logits, y)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    if weights is None:
        return jnp.mean(losses), jnp.mean(correct)
    total = jnp.sum(weights)
    return jnp.sum(losses * weights) / total, jnp.sum(correct * weights) / total


# ---------------------------------------------------------------------------------------------- diagnostics


def backprop_gradient(params: dict, feats: jax.Array, y: jax.Array, reference: bool = False) -> jax.Array:
    """G_F = −½ ∂J/∂F: [n, K], column j belongs to hidden node j.

    Default: J = ‖P⊥ (Y_c − C(F V))‖², the sample-centred (P⊥, Li2's definition) version of the MSE that is
    trained, whose outputs are class-centred (C: ŷ ↦ ŷ − mean_j ŷ_j), so G_F = P⊥ (Y_c − C(F V)) Vᵀ. It
    vanishes when the training loss does.
    `reference=True`: the reference code's logged `dF_norm` matrix (Y_c − F V) Vᵀ, with neither centring; its
    class-mean part of F V is invisible to the loss, so it need not vanish at a zero-loss solution.
    """
    order = params["V"].shape[1]
    out = feats @ params["V"]
    if not reference:
        out = out - jnp.mean(out, axis=-1, keepdims=True)
    residual = centred_targets(y, order) - out
    if not reference:
        residual = residual - jnp.mean(residual, axis=0, keepdims=True)
    return residual @ params["V"].T


def node_energy(params: dict, a: jax.Array, b: jax.Array, y: jax.Array, activation: str) -> jax.Array:
    """E(w_j) = ½ ‖Ỹᵀ σ(X w_j)‖² for every hidden node j: [K]. Ỹ = P⊥ onehot(y) (labels centred over samples)."""
    order = params["V"].shape[1]
    onehot = jax.nn.one_hot(y, order)
    y_tilde = onehot - jnp.mean(onehot, axis=0, keepdims=True)  # [n, M]
    feats = activation_fn(activation)(hidden_preactivation(params, a, b))  # [n, K]
    return 0.5 * jnp.sum(jnp.square(y_tilde.T @ feats), axis=0)


def signal_alignment(params: dict, a: jax.Array, b: jax.Array, y: jax.Array, activation: str) -> jax.Array:
    """cos(G_F, Ỹ Ỹᵀ F̃): ≈ 1 when the backpropagated gradient is the node-local energy-ascent term (stage II)."""
    order = params["V"].shape[1]
    feats = activation_fn(activation)(hidden_preactivation(params, a, b))
    grad_f = backprop_gradient(params, feats, y)
    onehot = jax.nn.one_hot(y, order)
    y_tilde = onehot - jnp.mean(onehot, axis=0, keepdims=True)
    f_tilde = feats - jnp.mean(feats, axis=0, keepdims=True)
    signal = y_tilde @ (y_tilde.T @ f_tilde)
    return jnp.sum(grad_f * signal) / (jnp.linalg.norm(grad_f) * jnp.linalg.norm(signal) + 1e-30)


class FourierStats(NamedTuple):
    """Fourier analysis of the hidden layer for Z_M, frequencies f = 0..M//2 (f and M−f folded together).

    power: [K, M//2 + 1] per-node power |A_f|² + |A_{M−f}|² + (same for B), A = W_aᵀ F_M^*/M, B = W_bᵀ F_M^*/M.
    dominant: [K] int32 frequency of largest power per node.
    concentration: [K] share of the node's power at its dominant frequency (1 = single-frequency node).
    covered: [M//2 + 1] bool, frequencies that are the dominant frequency of some node with concentration
        ≥ threshold (frequency 0 never counts: it carries no class information).
    """

    power: jax.Array
    dominant: jax.Array
    concentration: jax.Array
    covered: jax.Array


def fourier_analysis(w: jax.Array, threshold: float = 0.6) -> FourierStats:
    """Fourier features of W: [2M, K] for the cyclic group Z_M (operand blocks W[:M] and W[M:])."""
    order = w.shape[0] // 2
    n_freq = order // 2 + 1
    # A[j, k] = (1/M) Σ_h W[h, j] e^{-2πi hk/M}: the DFT of each node's weights over the group.
    spec_a = jnp.fft.fft(w[:order].T, axis=-1) / order  # [K, M]
    spec_b = jnp.fft.fft(w[order:].T, axis=-1) / order
    raw = jnp.square(jnp.abs(spec_a)) + jnp.square(jnp.abs(spec_b))  # [K, M]
    fold = jax.nn.one_hot(jnp.minimum(jnp.arange(order), order - jnp.arange(order)), n_freq)  # [M, F]
    power = raw @ fold  # [K, F]
    dominant = jnp.argmax(power, axis=-1).astype(jnp.int32)
    concentration = jnp.max(power, axis=-1) / (jnp.sum(power, axis=-1) + 1e-30)
    strong = (concentration >= threshold) & (dominant > 0)
    covered = jnp.zeros((n_freq,), bool).at[dominant].max(strong)
    return FourierStats(power, dominant, concentration, covered)


def relative_movement(param: jax.Array, initial: jax.Array) -> jax.Array:
    """‖θ − θ_0‖_F / ‖θ_0‖_F, or ‖θ − θ_0‖_F when θ_0 = 0 (zero-init top layer)."""
    initial_norm = jnp.linalg.norm(initial)
    moved = jnp.linalg.norm(param - initial)
    return jnp.where(initial_norm > 0, moved / jnp.where(initial_norm > 0, initial_norm, 1.0), moved)


# Stage rule thresholds (see `stage_of`).
LAZY_MAX_ENERGY_GROWTH = 2.0
INTERACTIVE_MIN_COVERAGE = 0.9


def stage_of(energy_growth: float, coverage: float | None) -> str:
    """The stage of a run from its current state (our rule; the paper gives no numeric one).

    energy_growth: mean node energy E(w_j) now / at initialisation.
    coverage: fraction of the (M−1)/2 non-zero frequencies of Z_M that some single-frequency node covers,
        or None for a group without our Fourier analysis.

    - lazy (stage I): energy_growth < 2: the hidden nodes have not started climbing their energy; only the
      top layer V is fitting the random features.
    - interactive (stage III): coverage ≥ 0.9: the features have emerged and nodes now specialise on the
      missing irreps (Thm 7 top-down modulation). Never reported when coverage is None.
    - independent (stage II): otherwise; each node ascends its own E(w_j) (Thm 1).
    """
    if energy_growth < LAZY_MAX_ENERGY_GROWTH:
        return "lazy"
    if coverage is not None and coverage >= INTERACTIVE_MIN_COVERAGE:
        return "interactive"
    return "independent"
