"""TEAL (Liu et al., arXiv 2408.14690): training-free magnitude activation sparsity, as the reference code does it.

Reference: FasterDecoding/TEAL @ 5baaec8 (`utils/utils.py::{ActivationModule.find_histogram, Distribution.icdf,
SparsifyFn}`, `teal/greedyopt.py`). For one projection with kernel W [d_in, d_out] and input x [d_in]:

    y = (x ⊙ 1[|x| > t]) W          (dropped channels are discarded; no channel weights, no low-rank rest)

1. Thresholds from histograms. Per projection input, the dense model's calibration activations (signed values,
   all tokens and channels pooled) go into a histogram of `num_bins` = 10,000 bins: the 1 % most negative and
   1 % most positive values fall into one outer bin each, the rest into `num_bins - 2` equal bins between them.
   For sparsity s the threshold is t = icdf(0.5 + s/2) (linear interpolation of the cumulative counts at the bin
   centres), which presumes a zero-centred symmetric distribution, as the reference notes. `magnitude=True` is
   this module's variant that does not presume symmetry: the histogram holds |x| and t = icdf(s).
   q/k/v read the same input (the reference's 'h1' of self_attn), so they share one histogram, as do gate/up;
   o and down each have their own ('h2').
2. Greedy per-block allocation (`greedy_allocation`, the reference's `greedyopt.process_layer`). Per decoder
   block, starting from sparsity 0 everywhere, repeatedly try raising each projection's sparsity by
   `step / w_p` (w_p = the projection's parameter count relative to q) and keep the raise whose block output is
   closest to the dense block output (the reference's error: the L2 norm over the last 25 % of the tokens of
   every (sequence, channel), averaged), until the parameter-weighted mean sparsity reaches the target. Every
   raise adds the same amount Δ = step · n_q / Σ_p n_p to the weighted mean, so this module picks the largest
   Δ ≤ the reference's (step 0.05) that divides every requested target: each target is met exactly (the
   reference instead takes the path's row whose sparsity is closest to it). One path serves every target
   (the targets are points on it), as in the reference, which records the path and looks targets up on it.
   The block input is the dense model's hidden state entering the block (the reference's `grab_acts`); during
   the block forward the last half of the tokens are sparse (`SparsifyFn` on a prefill), the error is read on
   the last 25 %.

Applying it transforms the parameter tree: every decoder projection gains a `teal` entry `{"tau": []}`, run by
`Model(cfg, linear=TEALLinear(sparse_fraction))` (= `teal_model`), which shares RSparseLinear's dense-prefix /
sparse-suffix token split and decode kernel (TEAL is the R-Sparse layer with channel scores c = 1 and no
low-rank path). The dense `Model(cfg)` ignores the entries.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.sparse import rsparse as rs

Params = dict

NUM_BINS = 10_000  # the reference's find_histogram defaults
OUTLIER_FRACTION = 0.01
BASE_STEP = 0.05  # greedyopt's --base_step_size
LAST_FRACTION = 0.25  # greedyopt's --last_fraction (tokens whose error counts)
GREEDY_SPARSE_FRACTION = 0.5  # SparsifyFn on a prefill sparsifies the last half of the tokens


# ----------------------------------------------------------------------------------------------------------
# Histograms and thresholds.


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Counts of calibration activations per bin and the bin centres (the reference's `h1`, `h1_centers`)."""

    centers: np.ndarray  # [num_bins] float64, increasing
    counts: np.ndarray  # [num_bins] float64
    magnitude: bool  # True: a histogram of |x| (this module's variant); False: of signed x (the reference)

    def icdf(self, q: float) -> float:
        """The reference's `Distribution.icdf`: the value where the cumulative count reaches q · total, linearly
        interpolated between the centres of the two bins around it."""
        cum = np.cumsum(self.counts)
        target = q * cum[-1]
        idx = int(np.searchsorted(cum, target, side="left"))
        if idx == 0:
            return float(self.centers[0])
        if idx == len(cum):
            return float(self.centers[-1])
        lo, hi = cum[idx - 1], cum[idx]
        frac = (target - lo) / (hi - lo) if hi > lo else 0.0
        return float(self.centers[idx - 1] + frac * (self.centers[idx] - self.centers[idx - 1]))

    def threshold(self, sparsity: float) -> float:
        """t with a fraction `sparsity` of the calibration values at |x| ≤ t. The reference's
        `SparsifyFn.set_threshold`: icdf(0.5 + s/2) on the signed histogram, 0 at s = 0."""
        s = float(sparsity)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"TEAL: sparsity={sparsity!r} must lie in [0, 1]")
        if s == 0.0:
            return 0.0
        return self.icdf(s) if self.magnitude else self.icdf(0.5 + s / 2)


def histogram(x: np.ndarray, num_bins: int = NUM_BINS, outlier_fraction: float = OUTLIER_FRACTION,
              magnitude: bool = False) -> Histogram:
    """The reference's `ActivationModule.find_histogram` of all values of `x` (any shape): values sorted, the
    `outlier_fraction` tails each in one outer bin, `num_bins - 2` equal bins between (num_bins bins in all)."""
    if num_bins < 3:
        raise ValueError(f"TEAL histogram: num_bins={num_bins} must be >= 3")
    if not 0.0 <= outlier_fraction < 0.5:
        raise ValueError(f"TEAL histogram: outlier_fraction={outlier_fraction} must lie in [0, 0.5)")
    a = np.asarray(x, np.float64).ravel()
    if a.size < 2 or not np.all(np.isfinite(a)):
        raise ValueError(f"TEAL histogram: needs >= 2 finite calibration values, got {a.size} "
                         f"({int(np.sum(~np.isfinite(a)))} non-finite)")
    a = np.sort(np.abs(a) if magnitude else a)
    k = int(outlier_fraction * a.size)
    lower, upper = a[k], a[a.size - 1 - k]  # the reference's acts[-k] reads acts[0] when k = 0; not here
    if upper <= lower:  # (nearly) constant calibration values: widen the main range by a hair
        upper = lower + max(abs(lower), 1.0) * 1e-6
    main = np.linspace(lower, upper, num_bins - 1)
    edges = np.concatenate([[min(a[0], lower)], main, [max(a[-1], upper)]])
    counts, _ = np.histogram(a, bins=edges)
    return Histogram(centers=0.5 * (edges[:-1] + edges[1:]), counts=counts.astype(np.float64), magnitude=magnitude)


def projection_histograms(inputs: Mapping[str, np.ndarray], magnitude: bool = False,
                          num_bins: int = NUM_BINS) -> dict[str, Histogram]:
    """One histogram per projection from `rsparse.collect_inputs` activations; projections reading the same
    input (q/k/v, gate/up) share one (computed once)."""
    out, by_input = {}, {}
    for name, x in inputs.items():
        key = id(x)
        if key not in by_input:
            by_input[key] = histogram(x, num_bins=num_bins, magnitude=magnitude)
        out[name] = by_input[key]
    return out


def drop_fraction(x: np.ndarray, tau: float) -> float:
    """Fraction of the values of x with |x| ≤ τ (the channels TEAL drops)."""
    return float(np.mean(np.abs(np.asarray(x, np.float32)) <= np.float32(tau)))


# ----------------------------------------------------------------------------------------------------------
# The TEAL linear and the tree transform.


@dataclasses.dataclass(frozen=True)
class TEALLinear(rs.RSparseLinear):
    """The Transformer's linear for a TEAL tree: `Model(cfg, linear=TEALLinear(sparse_fraction))`.

    A projection with a `teal` entry computes y = (x ⊙ 1[|x| > τ]) W on the last tokens of the call (the first
    ⌊T (1 − sparse_fraction)⌋ stay dense; see `RSparseLinear`): the R-Sparse layer with c = 1 and no low-rank
    path, run by RSparseLinear's token split (and its Pallas decode GEMV where that runs). A projection without
    the entry is dense."""

    def __call__(self, name, p, x, eqn):
        if "teal" not in p:
            return tfm.dense_linear(name, p, x, eqn)
        n_in = x.ndim - 2
        d_in = math.prod(p["kernel"].shape[:n_in])
        entry = {"scale": jnp.ones((d_in,), jnp.float32), "tau": jnp.asarray(p["teal"]["tau"], jnp.float32)}
        q = {k: v for k, v in p.items() if k not in ("teal", "rsparse")}
        return super().__call__(name, {**q, "rsparse": entry}, x, eqn)


def teal_model(cfg: tfm.TransformerConfig, sparse_fraction: float = 1.0, **options) -> Model:
    """`Model(cfg, linear=TEALLinear(sparse_fraction, **options))`: run a `tealify` tree with it."""
    return Model(cfg, linear=TEALLinear(sparse_fraction, **options))


def parameter_counts(params: Params) -> dict[str, int]:
    """d_in · d_out of every decoder projection (the weights a token reads when the projection is dense)."""
    return {n: int(np.prod(np.shape(p["kernel"]))) for n, p in rs.projections(params).items()}


def model_sparsity(sparsity: Mapping[str, float], counts: Mapping[str, int]) -> float:
    """Parameter-weighted mean sparsity: the fraction of the decoder projections' weights not read per token."""
    return float(sum(sparsity[n] * counts[n] for n in counts) / sum(counts.values()))


def tealify(params: Params, hists: Mapping[str, Histogram], sparsity) -> Params:
    """A TEAL tree: every decoder projection gains `teal = {"tau": t}` with t = its histogram's threshold for its
    sparsity (one value for all, or a dict projection name -> value, e.g. from `greedy_allocation`)."""
    projs = rs.projections(params)
    if not projs:
        raise ValueError("tealify: the parameter tree has no layer_i/{attn,mlp}/<proj>/kernel entries")
    missing = sorted(set(projs) - set(hists))
    if missing:
        raise ValueError(f"tealify: no histogram for projections {missing}")
    if isinstance(sparsity, Mapping):
        missing = sorted(set(projs) - set(sparsity))
        if missing:
            raise ValueError(f"tealify: no sparsity given for projections {missing}")
        per = {n: sparsity[n] for n in projs}
    else:
        per = {n: sparsity for n in projs}
    new = jax.tree.map(lambda v: v, params)
    for name, p in projs.items():
        lname, group, pname = name.split("/")
        new[lname][group][pname] = {**p, "teal": {"tau": jnp.asarray(hists[name].threshold(per[name]), jnp.float32)}}
    return new


# ----------------------------------------------------------------------------------------------------------
# Greedy per-block allocation.


def block_forward(cfg: tfm.TransformerConfig, lp: Params, x: jax.Array, linear, index: int) -> jax.Array:
    """Decoder block `index` (attention + MLP with their residuals, as in `transformer.forward`) on the
    residual stream x [B, T, D] entering it, every projection through `linear`."""
    B, T = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    mask = tfm.attention_bias(cfg, T, T, 0, None)
    a = tfm.attention(cfg, lp["attn"], tfm.apply_norm(cfg, lp["attn_norm"], x), positions, mask, None, 0, None,
                      False, linear, f"layer_{index}/attn")[0]
    x = x + a
    return x + tfm.mlp(cfg, lp["mlp"], tfm.apply_norm(cfg, lp["mlp_norm"], x), linear, f"layer_{index}/mlp")


def block_error(target: jax.Array, out: jax.Array, last_fraction: float = LAST_FRACTION) -> jax.Array:
    """The reference's `calculate_activation_error`: ‖target − out‖₂ over the last `last_fraction` of the tokens,
    per (sequence, channel), averaged."""
    start = int(target.shape[1] * (1 - last_fraction))
    d = (target[:, start:] - out[:, start:]).astype(jnp.float32)
    return jnp.mean(jnp.sqrt(jnp.sum(d * d, axis=1)))


def greedy_step(targets: Sequence[float], block_counts: Mapping[str, int], base_step: float = BASE_STEP) -> float:
    """Δ: the largest increase of the block's weighted mean sparsity per greedy raise that is ≤ the reference's
    (base_step / Σ_p w_p with w_p = n_p / n_q; n_q = the q projection's count, or the smallest if there is no q)
    and divides every target (targets read to 6 decimals)."""
    if any(not 0.0 < t <= 1.0 for t in targets) or not targets:
        raise ValueError(f"TEAL greedy: targets {list(targets)} must lie in (0, 1]")
    qs = [c for n, c in block_counts.items() if n.rsplit("/", 1)[1] == "q"]
    n_ref = qs[0] if qs else min(block_counts.values())
    delta0 = base_step * n_ref / sum(block_counts.values())
    g = math.gcd(*[int(round(t * 1e6)) for t in targets]) / 1e6
    return g / math.ceil(g / delta0 - 1e-9)


@dataclasses.dataclass(frozen=True)
class GreedyPath:
    """The greedy allocation of one decoder block: steps[i] = per-projection step counts after i + 1 raises."""

    names: tuple[str, ...]  # the block's projections, in the order tried
    step_sizes: dict[str, float]  # sparsity added to projection p per raise: Δ · Σn / n_p
    delta: float  # weighted mean sparsity added per raise
    counts: list[dict[str, int]]  # raises per projection after each step (index 0 = after the first raise)
    errors: list[float]  # block error after each step
    uniform_errors: list[float]  # block error of uniform sparsity at the same weighted mean (the reference's
    #                              "Baseline Error" column)

    def sparsities(self, target: float) -> dict[str, float]:
        n = int(round(target / self.delta))
        if n < 0 or n > len(self.counts) or abs(n * self.delta - target) > 1e-9:
            raise ValueError(f"TEAL greedy: target {target} is not on this path (Δ = {self.delta}, "
                             f"{len(self.counts)} steps)")
        c = self.counts[n - 1] if n > 0 else {p: 0 for p in self.names}
        return {p: c[p] * self.step_sizes[p] for p in self.names}


def greedy_allocation(cfg: tfm.TransformerConfig, params: Params, hists: Mapping[str, Histogram],
                      tokens: jax.Array, targets: Sequence[float], *, base_step: float = BASE_STEP,
                      last_fraction: float = LAST_FRACTION, sparse_fraction: float = GREEDY_SPARSE_FRACTION,
                      log=None) -> tuple[dict[float, dict[str, float]], dict[str, GreedyPath]]:
    """TEAL's block-wise greedy sparsity allocation for every target in `targets` (one path per block).

    tokens [B, T]: the text whose dense hidden states feed each block. Returns ({target: {projection:
    sparsity}}, {block name: GreedyPath}). Every block's parameter-weighted mean sparsity equals the target
    exactly; no projection exceeds sparsity 1."""
    projs = rs.projections(params)
    counts = parameter_counts(params)
    hiddens = tfm.forward(cfg, params, jnp.asarray(tokens), return_layer_hiddens=True,
                          compute_logits=False).layer_hiddens
    linear = TEALLinear(sparse_fraction, use_kernel=False)
    layers = sorted({n.split("/")[0] for n in projs}, key=lambda k: int(k.split("_")[1]))
    local = tuple(n.split("/", 1)[1] for n in projs if n.startswith(layers[0] + "/"))  # ("attn/q", ...)

    def with_taus(lp, taus):
        lp = jax.tree.map(lambda v: v, lp)
        for j, key in enumerate(local):
            group, pname = key.split("/")
            lp[group][pname] = {**lp[group][pname], "teal": {"tau": taus[j]}}
        return lp

    # one compiled function for every block (same shapes; the index only names the projections)
    dense_out = jax.jit(lambda lp, x: block_forward(cfg, lp, x, tfm.dense_linear, 0))

    @jax.jit
    def errors_of(lp, x, taus_CP, target_out):
        outs = jax.vmap(lambda t: block_forward(cfg, with_taus(lp, t), x, linear, 0))(taus_CP)
        return jax.vmap(lambda o: block_error(target_out, o, last_fraction))(outs)

    result = {t: {} for t in targets}
    paths = {}
    for layer in layers:
        names = tuple(f"{layer}/{k}" for k in local)
        if set(names) != {n for n in projs if n.startswith(layer + "/")}:
            raise ValueError(f"TEAL greedy: {layer} has other projections than {local}")
        block_counts = {n: counts[n] for n in names}
        delta = greedy_step(targets, block_counts, base_step)
        n_max = int(round(max(targets) / delta))
        n_block = sum(block_counts.values())
        step = {n: delta * n_block / counts[n] for n in names}
        lp, x = params[layer], hiddens[int(layer.split("_")[1])]
        target_out = dense_out(lp, x)

        def taus(sp, _names=names):
            return np.array([hists[n].threshold(min(sp[n], 1.0)) for n in _names], np.float32)

        c = {n: 0 for n in names}
        path_counts, path_err, path_uni = [], [], []
        for i in range(n_max):
            cands = [n for n in names if (c[n] + 1) * step[n] <= 1.0 + 1e-9]
            if not cands:
                raise ValueError(f"TEAL greedy {layer}: every projection is at sparsity 1 before {max(targets)}")
            tried = np.stack([taus({n: (c[n] + (n == m)) * step[n] for n in names}) for m in cands])
            uniform = taus({n: (i + 1) * delta for n in names})[None]
            errs = np.asarray(errors_of(lp, x, jnp.asarray(np.concatenate([tried, uniform])), target_out))
            best = int(np.argmin(errs[:-1]))  # the first minimum, as the reference's strict `<`
            c[cands[best]] += 1
            path_counts.append(dict(c))
            path_err.append(float(errs[best]))
            path_uni.append(float(errs[-1]))
        paths[layer] = GreedyPath(names, step, delta, path_counts, path_err, path_uni)
        for t in targets:
            result[t].update(paths[layer].sparsities(t))
        if log:
            log(f"  TEAL greedy {layer}: {n_max} raises of {delta:.5f}; at s = {max(targets)} block error "
                f"{path_err[-1]:.4f} (uniform {path_uni[-1]:.4f})")
    return result, paths


def uniform_block_error(cfg: tfm.TransformerConfig, params: Params, hists: Mapping[str, Histogram],
                        tokens: jax.Array, sparsity: Mapping[str, float] | float, *,
                        last_fraction: float = LAST_FRACTION,
                        sparse_fraction: float = GREEDY_SPARSE_FRACTION) -> dict[str, float]:
    """The greedy objective (block error vs the dense block on its dense input) of every block of a TEAL tree
    with `sparsity` (one value or a dict), for comparing allocations."""
    tree = tealify(params, hists, sparsity)
    hiddens = tfm.forward(cfg, params, jnp.asarray(tokens), return_layer_hiddens=True,
                          compute_logits=False).layer_hiddens
    linear = TEALLinear(sparse_fraction, use_kernel=False)
    out = {}
    for i in range(cfg.n_layers):
        layer = f"layer_{i}"
        dense = block_forward(cfg, params[layer], hiddens[i], tfm.dense_linear, i)
        sparse = block_forward(cfg, tree[layer], hiddens[i], linear, i)
        out[layer] = float(block_error(dense, sparse, last_fraction))
    return out


