"""MobileLLM-R1's data-mixture method (arXiv 2509.24945 §5-6; models_theory.md 1.5).

- Eq. 1, leave-one-out group impact on a capability probe set:
      ΔL(D_j) = E_{z~probe}[ℓ(z; θ_{−j}) − ℓ(z; θ)]   (> 0: removing D_j hurts, so D_j helps)
- Eq. 5, joint influence aggregated over capabilities c and checkpoints t with α_{c,t} ∝ t (uniform over c).
- Eq. 6, dataset weight from per-sample influence: ρ_g = (1/N_g) Σ_{x_i∈g} I(x_i) s_i,  w_g = ρ_g / Σ ρ.
  The paper does not say what happens to ρ_g ≤ 0; we clip at 0 (a source that does not help gets no
  weight), optionally keeping a `floor` share so that nothing is dropped entirely.
- Eq. 7, sample-level rejection: keep x_i with I(x_i) > 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def loo_deltas(loss_with_all: float, loss_without: Mapping[str, float]) -> dict[str, float]:
    """Eq. 1: ΔL_j = probe loss of the model trained without source j minus that of the full model."""
    return {j: float(v) - float(loss_with_all) for j, v in loss_without.items()}


def weights_from_scores(scores: Mapping[str, float], floor: float = 0.0) -> dict[str, float]:
    """Sampling weights ∝ max(score, 0), then mixed with a uniform `floor` share: w = (1-f)·w + f/n.

    Raises if no score is positive and floor == 0 (no source helps: there is no mixture to propose)."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must lie in [0, 1), got {floor}")
    names = list(scores)
    s = np.asarray([float(scores[n]) for n in names])
    if not np.isfinite(s).all():
        raise ValueError(f"scores must be finite, got {dict(scores)}")
    pos = np.maximum(s, 0.0)
    if pos.sum() <= 0:
        if floor == 0.0:
            raise ValueError(f"no source has a positive score {dict(scores)}; cannot build weights")
        w = np.full(len(s), 1.0 / len(s))
    else:
        w = (1.0 - floor) * pos / pos.sum() + floor / len(s)
    return dict(zip(names, w.tolist()))


def weights_from_capability_deltas(deltas: Mapping[str, Mapping[str, float]], floor: float = 0.0) -> dict[str, float]:
    """Weights from per-capability LOO impacts {capability: {source: ΔL}}.

    Raw ΔL are not comparable across capabilities (a task whose format only one source teaches has a huge
    ΔL), so each capability's positive impacts are normalised to sum to 1 first and the capabilities are
    then averaged uniformly (Eq. 5's α is uniform over capabilities). A capability no source helps is
    skipped; then the uniform `floor` share is mixed in. Sources with ΔL ≤ 0 everywhere get only the floor.
    """
    sources = sorted({s for d in deltas.values() for s in d})
    per_cap = []
    for d in deltas.values():
        pos = np.asarray([max(float(d.get(s, 0.0)), 0.0) for s in sources])
        if pos.sum() > 0:
            per_cap.append(pos / pos.sum())
    if not per_cap:
        if floor == 0.0:
            raise ValueError(f"no source helps any capability {dict(deltas)}; cannot build weights")
        return {s: 1.0 / len(sources) for s in sources}
    w = np.mean(per_cap, axis=0)
    return weights_from_scores(dict(zip(sources, w.tolist())), floor)


def joint_influence(influence_CTN: np.ndarray) -> np.ndarray:
    """Eq. 5: I_joint(x_i) = Σ_c Σ_t α_{c,t} I(x_i; θ_{c,t}) with α_{c,t} ∝ t, uniform over c, Σ α = 1.

    influence_CTN: [capabilities, checkpoints, samples] -> [samples]."""
    inf = np.asarray(influence_CTN, np.float64)
    if inf.ndim != 3:
        raise ValueError(f"influence must be [capabilities, checkpoints, samples], got shape {inf.shape}")
    C, T, _ = inf.shape
    t = np.arange(1, T + 1, dtype=np.float64)
    alpha = np.broadcast_to((t / t.sum())[None, :] / C, (C, T))
    return np.einsum("ct,ctn->n", alpha, inf)


def group_weights(influence: Mapping[str, Sequence[float]], sample_lengths: Mapping[str, Sequence[float]],
                  group_tokens: Mapping[str, float], floor: float = 0.0) -> dict[str, float]:
    """Eq. 6: ρ_g = (1/N_g) Σ_{i∈g} I_joint(x_i)·s_i, w_g = clip(ρ_g, 0) / Σ (see `weights_from_scores`)."""
    rho = {}
    for g in influence:
        inf = np.asarray(influence[g], np.float64)
        s = np.asarray(sample_lengths[g], np.float64)
        if inf.shape != s.shape:
            raise ValueError(f"group {g!r}: {inf.shape} influences but {s.shape} sample lengths")
        if group_tokens[g] <= 0:
            raise ValueError(f"group {g!r}: token count must be positive, got {group_tokens[g]}")
        rho[g] = float(np.sum(inf * s) / group_tokens[g])
    return weights_from_scores(rho, floor)


def keep_positive(influence: Sequence[float]) -> np.ndarray:
    """Eq. 7: boolean mask of the samples with positive influence."""
    return np.asarray(influence) > 0
