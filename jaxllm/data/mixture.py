"""MobileLLM-R1's data-mixture method (arXiv 2509.24945 §5-6 and App. B; models_theory.md 1.5).

- Eq. 1, leave-one-out group impact on a capability probe set:
      ΔL(D_j) = E_{z~probe}[ℓ(z; θ_{−j}) − ℓ(z; θ)]   (> 0: removing D_j hurts, so D_j helps)
- Eq. 2, influence of a training sample on a probe set, Hessian-free as AutoMixer (first order, H⁻¹ → η·I,
  TracIn at checkpoint θ_t): I(x_i; θ_t) = η_t ∇L(D^P; θ_t)·∇ℓ(x_i; θ_t), the first-order decrease of the probe
  loss after one SGD step of size η_t on x_i. `influence_scores`, from per-sample gradients
  (`jax.vmap(jax.grad(...))`, `sample_gradients`) and optionally a random projection (`gradient_sketch`).
  Sign: the paper prints Eq. 2 as −∇L(x_test)ᵀH⁻¹∇L(x_i), Koh & Liang's derivative of the test loss under
  up-weighting, for which > 0 would mean harmful; Eq. 7 keeps I > 0 as beneficial, so we take the sign under
  which positive means helpful (TracIn's proponents).
- Eqs. 3-5, self- and cross-capability influence at T checkpoints of domain-specialised models θ_{c,t},
  joint over capabilities c and checkpoints t with α_{c,t} ∝ t (uniform over c): `joint_influence`.
- Eq. 6, dataset weight from per-sample influence: ρ_g = (1/N_g) Σ_{x_i∈g} I(x_i) s_i,  w_g = ρ_g / Σ ρ.
  The paper does not say what happens to ρ_g ≤ 0; we clip at 0 (a source that does not help gets no
  weight), optionally keeping a `floor` share so that nothing is dropped entirely. `group_weights`.
- Eqs. 7-8, mid-training co-evolution: keep x_i with I(x_i; θ_t) > 0, re-weight with Eq. 6, train θ_{t+1} on
  the kept data, repeat (two stages in the paper): `coevolution_stage` (one stage's selection and weights).
- App. B, Eq. 9, RankMe, the effective rank of an embedding matrix: `rankme`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SKETCHES = ("gaussian", "rademacher")


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


# ----------------------------------------------------------------------------------------------------------
# Eq. 2: first-order influence from per-sample gradients, optionally through a random projection.


def gradient_sketch(params: Any, dim: int, key: jax.Array, kind: str = "gaussian") -> list[jax.Array]:
    """A fixed random projection R [d, dim] of the flattened parameters, as one block [leaf.size, dim] per leaf
    of `params` (jax.tree.leaves order), entries i.i.d. with mean 0 and variance 1/dim: N(0, 1/dim) ("gaussian")
    or ±1/√dim ("rademacher"). Then E[R Rᵀ] = I, so (Rᵀa)·(Rᵀb) is an unbiased estimate of a·b, with variance
        gaussian:   ((a·b)² + |a|²|b|²) / dim
        rademacher: ((a·b)² + |a|²|b|² − 2 Σ_j a_j² b_j²) / dim
    (Johnson-Lindenstrauss). Memory: d·dim float32 (a 105k-parameter model at dim=256: 108 MB)."""
    if dim < 1:
        raise ValueError(f"sketch dim must be >= 1, got {dim}")
    if kind not in SKETCHES:
        raise ValueError(f"sketch kind {kind!r} is not one of {list(SKETCHES)}")
    leaves = jax.tree.leaves(params)
    blocks = []
    for k, leaf in zip(jax.random.split(key, len(leaves)), leaves):
        shape = (int(np.size(leaf)), dim)
        if kind == "gaussian":
            r = jax.random.normal(k, shape, jnp.float32)
        else:
            r = jax.random.rademacher(k, shape, jnp.float32)
        blocks.append(r / np.sqrt(dim).astype(np.float32))
    return blocks


def flatten_gradients(grads: Any, sketch: Optional[Sequence[jax.Array]] = None, batched: bool = False) -> jax.Array:
    """A gradient pytree as one vector [d] (leaves concatenated in jax.tree.leaves order), or Rᵀg [k] through a
    `gradient_sketch`; with `batched`, every leaf has a leading sample axis n and the result is [n, d] / [n, k]."""
    leaves = jax.tree.leaves(grads)
    flat = [x.reshape(x.shape[0], -1) if batched else x.reshape(-1) for x in leaves]
    if sketch is None:
        return jnp.concatenate(flat, axis=-1)
    if len(sketch) != len(flat) or any(f.shape[-1] != r.shape[0] for f, r in zip(flat, sketch)):
        raise ValueError(f"the sketch has blocks {[tuple(r.shape) for r in sketch]} for gradient leaves "
                         f"{[tuple(f.shape) for f in flat]}: build it with gradient_sketch(params, ...)")
    return functools.reduce(jnp.add, [f @ r for f, r in zip(flat, sketch)])


@functools.lru_cache(maxsize=32)
def _per_sample_fn(loss_fn: Callable) -> Callable:
    grad_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))

    def fn(params, samples, sketch, probe_CD):
        g_ND = flatten_gradients(grad_fn(params, samples), sketch, batched=True)
        return g_ND if probe_CD is None else jnp.einsum("nd,cd->cn", g_ND, probe_CD)

    return jax.jit(fn)


def _chunked(loss_fn, params, samples: Mapping[str, np.ndarray], sketch, probe_CD, chunk: int) -> np.ndarray:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    sizes = {k: np.shape(v)[0] for k, v in samples.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"sample fields must share their leading (sample) axis, got {sizes}")
    n = next(iter(sizes.values()))
    fn = _per_sample_fn(loss_fn)
    out = []
    for lo in range(0, n, chunk):  # the last chunk padded with its first sample: one compiled shape for any n
        idx = np.minimum(np.arange(lo, lo + chunk), n - 1)
        part = {k: jnp.asarray(np.asarray(v)[idx]) for k, v in samples.items()}
        res = np.asarray(fn(params, part, sketch, probe_CD))  # [chunk, d] or [C, chunk]
        m = min(chunk, n - lo)
        out.append(res[:m] if probe_CD is None else res[:, :m])
    return np.concatenate(out, axis=0 if probe_CD is None else 1)


def sample_gradients(loss_fn: Callable, params: Any, samples: Mapping[str, np.ndarray],
                     sketch: Optional[Sequence[jax.Array]] = None, chunk: int = 32) -> np.ndarray:
    """Per-sample gradients ∇_θ ℓ(x_i; θ), flattened: [N, d], or [N, k] through `sketch`.

    loss_fn(params, sample) -> scalar, where `sample` is one row of `samples` ({field: [N, ...]}, so a field of
    shape [N, L] arrives as [L]). jax.vmap(jax.grad(loss_fn)) runs over `chunk` samples at a time, jitted,
    the last chunk padded: one compilation for any N, and at most chunk·d gradient floats alive. loss_fn must
    be hashable (a module-level function or a frozen dataclass) for the compilation to be reused."""
    return _chunked(loss_fn, params, samples, sketch, None, chunk)


def mean_gradient(loss_sum_fn: Callable, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
                  sketch: Optional[Sequence[jax.Array]] = None) -> np.ndarray:
    """∇_θ of a probe set's mean loss, flattened [d] (or Rᵀ∇ [k]): Σ_b ∇ sum_b / Σ_b count_b over the batches,
    with loss_sum_fn(params, batch) -> (summed loss, number of terms) (hashable, as for `sample_gradients`)."""
    fn = _sum_grad_fn(loss_sum_fn)
    total, count = None, 0.0
    for b in batches:
        g, n = fn(params, {k: jnp.asarray(v) for k, v in b.items()}, sketch)
        total = g if total is None else total + g
        count += float(n)
    if total is None or count <= 0:
        raise ValueError("mean_gradient: the probe batches hold no loss terms")
    return np.asarray(total) / count


@functools.lru_cache(maxsize=32)
def _sum_grad_fn(loss_sum_fn: Callable) -> Callable:
    def fn(params, batch, sketch):
        grads, n = jax.grad(loss_sum_fn, has_aux=True)(params, batch)
        return flatten_gradients(grads, sketch), n

    return jax.jit(fn)


def influence_scores(loss_fn: Callable, params: Any, samples: Mapping[str, np.ndarray], probe_grads: np.ndarray,
                     lr: float = 1.0, sketch: Optional[Sequence[jax.Array]] = None, chunk: int = 32) -> np.ndarray:
    """Eq. 2 at one checkpoint, first order and Hessian-free: I_c(x_i; θ) = η ∇L(D^P_c; θ)·∇ℓ(x_i; θ) [C, N].

    probe_grads: [C, d] from `mean_gradient` (one row per probe set), or [C, k] from it with the same `sketch`,
    in which case the inner products are the sketch's unbiased estimates. The per-sample gradients (see
    `sample_gradients`) live one chunk at a time. Summing η_t-weighted scores over checkpoints θ_t is TracIn;
    Eq. 5 weighs the checkpoints by α ∝ t instead (`joint_influence`)."""
    probe_CD = jnp.asarray(np.atleast_2d(probe_grads), jnp.float32)
    return float(lr) * _chunked(loss_fn, params, samples, sketch, probe_CD, chunk)


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
    """Eq. 6: ρ_g = (1/N_g) Σ_{i∈g} I_joint(x_i)·s_i, w_g = clip(ρ_g, 0) / Σ (see `weights_from_scores`).

    With N_g the tokens of the scored samples of g (Σ s_i), ρ_g is g's token-weighted mean influence."""
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


def coevolution_stage(influence: Mapping[str, Sequence[float]], sample_lengths: Mapping[str, Sequence[float]],
                      floor: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One stage of the mid-training co-evolution (Eqs. 7-8) from influences I(x_i; θ_t) of the current model
    on each group's pool: D_t = {x_i : I(x_i; θ_t) > 0} (Eq. 7) and the groups re-weighted by Eq. 6 over D_t,
        ρ_g = (1/N_g) Σ_{x_i ∈ g ∩ D_t} I(x_i) s_i,
    N_g = the tokens of g's whole pool (our reading; with N_g = the kept tokens, a group of which almost nothing
    survives would get the weight of its few survivors, repeated). θ_{t+1} = MidTrain(θ_t, D_t) (Eq. 8) is the
    caller's. Returns ({group: keep mask [N_g]}, {group: weight}); raises when no sample is kept (the paper
    iterates until almost none has positive influence)."""
    keep = {g: keep_positive(v) for g, v in influence.items()}
    if not any(m.any() for m in keep.values()) and floor == 0.0:
        raise ValueError("coevolution_stage: no sample has positive influence; nothing left to train on")
    kept_inf = {g: np.where(keep[g], np.asarray(influence[g], np.float64), 0.0) for g in influence}
    tokens = {g: float(np.sum(sample_lengths[g])) for g in influence}
    return keep, group_weights(kept_inf, sample_lengths, tokens, floor)


# ----------------------------------------------------------------------------------------------------------
# App. B: RankMe.


def rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """App. B, Eq. 9 (RankMe, Garrido et al. 2023): exp(−Σ_k p_k log p_k), p_k = σ_k(Z)/Σ_i σ_i(Z) + ε, over the
    singular values σ of an embedding matrix Z [n, d]: r for r equal non-zero singular values, 1 for rank one,
    at most min(n, d)."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or min(z.shape) == 0:
        raise ValueError(f"rankme needs a non-empty matrix [n, d], got shape {z.shape}")
    s = np.linalg.svd(z, compute_uv=False)
    if s.sum() <= 0:
        raise ValueError("rankme of an all-zero matrix is undefined")
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))
