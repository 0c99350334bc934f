"""Muon (MomentUm Orthogonalized by Newton–Schulz) as optax transforms, matching the Li2 reference.

The reference (`MuonEnhanced` in yuandong-tian/understanding cogo/muon_opt.py, with nesterov=False,
update_rms_compensate=False, use_bf16=False) does, per matrix parameter W and gradient g:

    W ← W·(1 − lr·wd)                 # decoupled weight decay, before the update
    m ← β·m + (1 − β)·g               # EMA momentum (torch lerp), no bias correction
    U = NS5(m);  W ← W − lr·U

NS5 normalises X = m/(‖m‖_F + 1e-7) (on the wide orientation) and runs five quintic iterations
X ← a·X + (b·A + c·A²)·X, A = X Xᵀ, with a different (a, b, c) per iteration (`REFERENCE_NS_COEFFS`).

`optax.contrib.muon` (0.2.8) accepts per-iteration coefficients, but it bias-corrects the momentum, uses
eps = 1e-8 and its own Nesterov form, so it is close to, not exactly, the reference; this module is exact.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxllm.config import ConfigError

# Per-iteration (a, b, c) of the reference's zeropower_via_newtonschulz5 (not Keller Jordan's fixed triple).
REFERENCE_NS_COEFFS = (
    (4.01, -9.22, 5.80),
    (3.49, -6.38, 3.23),
    (3.34, -6.21, 3.20),
    (3.64, -7.48, 4.43),
    (3.46, -5.35, 2.85),
)


def _check_coeffs(ns_coeffs) -> tuple[tuple[float, float, float], ...]:
    coeffs = tuple(tuple(float(c) for c in triple) for triple in ns_coeffs)
    if not coeffs or any(len(t) != 3 for t in coeffs):
        raise ConfigError(f"ns_coeffs must be a non-empty sequence of (a, b, c) triples, got {ns_coeffs!r}")
    return coeffs


def newton_schulz(g: jax.Array, ns_coeffs: Sequence[Sequence[float]] = REFERENCE_NS_COEFFS,
                  eps: float = 1e-7) -> jax.Array:
    """Approximate orthogonalisation U·Vᵀ-like of a matrix g: [m, n] (one iteration per (a, b, c) triple)."""
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {g.shape}")
    coeffs = _check_coeffs(ns_coeffs)
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g  # work on the short side: A = X Xᵀ is min(m, n) square
    x = x / (jnp.linalg.norm(x) + eps)
    for a, b, c in coeffs:
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if tall else x


class MuonState(NamedTuple):
    momentum: Any  # same tree as the parameters


def scale_by_muon(beta: float = 0.99, ns_coeffs: Sequence[Sequence[float]] = REFERENCE_NS_COEFFS,
                  nesterov: bool = False, nesterov_beta: float = 0.9, eps: float = 1e-7
                  ) -> optax.GradientTransformation:
    """Momentum m ← β m + (1−β) g, then NS(m) (or, with nesterov, NS of g + (1−nesterov_beta)(m − g) as the
    reference's `grad.lerp_(momentum, 1 − beta1)`). Every leaf must be a matrix."""
    coeffs = _check_coeffs(ns_coeffs)
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"muon beta must be in [0, 1), got {beta}")

    def init(params):
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            if jnp.ndim(leaf) != 2:
                raise ConfigError(f"Muon handles matrices only; {jax.tree_util.keystr(path)} has shape "
                                  f"{jnp.shape(leaf)} (label it for Adam instead)")
        return MuonState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        momentum = jax.tree.map(lambda m, g: beta * m + (1.0 - beta) * g, state.momentum, updates)
        if nesterov:
            direction = jax.tree.map(lambda g, m: g + (1.0 - nesterov_beta) * (m - g), updates, momentum)
        else:
            direction = momentum
        out = jax.tree.map(lambda d: newton_schulz(d, coeffs, eps).astype(d.dtype), direction)
        return out, MuonState(momentum)

    return optax.GradientTransformation(init, update)


def muon(learning_rate: optax.ScalarOrSchedule, beta: float = 0.99, weight_decay: float = 0.0,
         ns_coeffs: Sequence[Sequence[float]] = REFERENCE_NS_COEFFS, nesterov: bool = False,
         nesterov_beta: float = 0.9, eps: float = 1e-7) -> optax.GradientTransformation:
    """Muon with decoupled weight decay: update = −lr·(NS(m) + wd·W), equal to the reference's
    W·(1 − lr·wd) − lr·NS(m). Apply it to matrices only (see `muon_with_adam`)."""
    if weight_decay < 0:
        raise ConfigError(f"muon weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        scale_by_muon(beta, ns_coeffs, nesterov, nesterov_beta, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def muon_with_adam(label_fn: Callable[[Any], Any], learning_rate: optax.ScalarOrSchedule, *,
                   muon_learning_rate: optax.ScalarOrSchedule | None = None, beta: float = 0.99,
                   weight_decay: float = 0.0, ns_coeffs: Sequence[Sequence[float]] = REFERENCE_NS_COEFFS,
                   nesterov: bool = False, adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps: float = 1e-8,
                   adam_weight_decay: float | None = None, adam_coupled_decay: bool = False
                   ) -> optax.GradientTransformation:
    """Muon on the parameters `label_fn(params)` labels "muon", Adam on those labelled "adam".

    The Adam part decays with `adam_weight_decay` (default: `weight_decay`), coupled (torch Adam's L2,
    g ← g + wd·θ, the Li2 reference) when `adam_coupled_decay`, else decoupled (AdamW).
    """
    adam_wd = weight_decay if adam_weight_decay is None else adam_weight_decay
    if adam_coupled_decay:
        adam_part = optax.chain(optax.add_decayed_weights(adam_wd),
                                optax.adam(learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps))
    else:
        adam_part = optax.adamw(learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps, weight_decay=adam_wd)
    muon_part = muon(learning_rate if muon_learning_rate is None else muon_learning_rate, beta=beta,
                     weight_decay=weight_decay, ns_coeffs=ns_coeffs, nesterov=nesterov)

    def checked_labels(params):
        labels = label_fn(params)
        bad = [lab for lab in jax.tree.leaves(labels) if lab not in ("muon", "adam")]
        if bad:
            raise ConfigError(f"muon_with_adam label_fn must return 'muon' or 'adam' per parameter, got {bad[0]!r}")
        return labels

    return optax.partition({"muon": muon_part, "adam": adam_part}, checked_labels)
