"""R-Sparse (Zhang et al., ICLR 2025, arXiv 2504.19449): training-free activation sparsity with a low-rank rest.

For one linear layer with kernel W [d_in, d_out] (jaxllm's layout, = torch's Wᵀ) and input x [d_in]:

    keep_j = |x_j · c_j| > τ,           c_j = ‖W[j, :]‖₂ (the norm of input channel j's weights)
    y      = (keep ⊙ x) W  +  ((1 − keep) ⊙ x) A B,     A = P_r S_r [d_in, r],  B = Q_rᵀ [r, d_out]

where W = P S Qᵀ is the float64 SVD. Kept channels use the exact weight rows; the dropped ones are not
discarded (as in TEAL) but sent through the rank-r part of the same W. With r = min(d_in, d_out) this is exactly
x W for every τ.

Budget rule (reference code `utils/setup.py::set_threshold_r_sparse`, with the layer's TRUE shapes, so the
narrower k/v projections of GQA models are not over-counted as the reference does): at sparsity s and sparse
ratio α the layer may read (1 − s)·d_in·d_out weights per token; k = ⌊d_in(1 − s)α⌋ channels are kept and the rest
of the budget buys rank r = ⌊((1 − s) d_in d_out − k d_out) / (d_in + d_out)⌋. τ is the quantile of |x ⊙ c| over
calibration activations that keeps exactly the fraction (1 − s)α. Special cases: α = 1 → weighted thresholding
only (no low-rank term); α = 0 → low rank only (k = 0); s = 0 → dense. TEAL (arXiv 2408.14690) is the same
layer with c = 1 and α = 1 (`method="teal"`).

Applying it to a jaxllm decoder transforms the parameter tree: every projection dict `{kernel, bias?}` gets an
`rsparse` entry of arrays `{scale [d_in], tau [], a [d_in, r], b [r, d_out], rank_mask [r]?}`. The Transformer
runs such a tree with its linear replaced: `rsparse_model(cfg, sparse_fraction=f)` = `Model(cfg,
linear=RSparseLinear(f))` routes the last ⌈f·T⌉ tokens of each call through the R-Sparse linear (prefill dense
with f = 0, decode sparse with f = 1; the reference evaluates with the last 10% sparse), through the Pallas GEMV
(pallas_kernels/rsparse_gemv.py) for decode-shaped calls where the backend runs it, the jnp path otherwise.
The dense `Model(cfg)` ignores the entries, so the same tree also gives the dense model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from pallas_kernels import rsparse_gemv as rk

Params = dict[str, Any]

# Input axes of each projection's kernel: the attention output projection o contracts (heads, head_dim).
_N_IN = {"o": 2}


# ----------------------------------------------------------------------------------------------------------
# Budget rule.


@dataclasses.dataclass(frozen=True)
class LayerBudget:
    """What one layer computes at sparsity s and sparse ratio α (see the module docstring)."""

    name: str
    d_in: int
    d_out: int
    sparsity: float
    alpha: float
    kept: int  # k: input channels multiplied by the exact weight rows
    rank: int  # r: rank of the low-rank path (0: none)
    drop_fraction: float  # fraction of input channels sent to the low-rank path (or dropped)
    mode: str  # "dense" | "sparse" (α = 1) | "low_rank" (α = 0) | "r_sparse"

    @property
    def weights_read(self) -> int:
        """Weight elements read per token (the budget actually spent)."""
        return self.kept * self.d_out + self.rank * (self.d_in + self.d_out)


def layer_budget(name: str, d_in: int, d_out: int, sparsity: float, alpha: float) -> LayerBudget:
    """The reference budget rule with the layer's true shapes; s and α must lie in [0, 1]."""
    for what, v in (("sparsity", sparsity), ("alpha", alpha)):
        if not (isinstance(v, (int, float, np.floating)) and 0.0 <= float(v) <= 1.0):
            raise ValueError(f"R-Sparse layer {name}: {what}={v!r} must lie in [0, 1]")
    if d_in <= 0 or d_out <= 0:
        raise ValueError(f"R-Sparse layer {name}: bad shape d_in={d_in}, d_out={d_out}")
    s, a = float(sparsity), float(alpha)
    full = min(d_in, d_out)
    budget = d_in * d_out * (1.0 - s)
    if s == 0.0:
        return LayerBudget(name, d_in, d_out, s, a, d_in, 0, 0.0, "dense")
    if a == 1.0:
        k = max(int(d_in * (1.0 - s)), 1)
        return LayerBudget(name, d_in, d_out, s, a, k, 0, 1.0 - k / d_in, "sparse")
    if a == 0.0:
        r = min(max(int(budget / (d_in + d_out)), 1), full)
        return LayerBudget(name, d_in, d_out, s, a, 0, r, 1.0, "low_rank")
    k = max(int(d_in * (1.0 - s) * a), 1)
    r = min(max(int((budget - k * d_out) / (d_in + d_out)), 1), full)
    return LayerBudget(name, d_in, d_out, s, a, k, r, 1.0 - k / d_in, "r_sparse")


# ----------------------------------------------------------------------------------------------------------
# Offline pieces: SVD factors, channel scores, threshold calibration.


@dataclasses.dataclass(frozen=True)
class LayerFactors:
    """float64 SVD of one kernel W [d_in, d_out] = a_full @ b_full, and the channel scores c."""

    a_full: np.ndarray  # [d_in, m] = P S (columns by decreasing singular value), m = min(d_in, d_out)
    b_full: np.ndarray  # [m, d_out] = Qᵀ
    scale: np.ndarray  # [d_in] c_j = ‖W[j, :]‖₂ = ‖(P S)[j, :]‖₂
    singular_values: np.ndarray  # [m]


def svd_factors(kernel_2d: np.ndarray) -> LayerFactors:
    w = np.asarray(kernel_2d, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"svd_factors needs a 2-D kernel, got shape {w.shape}")
    p, s, qt = np.linalg.svd(w, full_matrices=False)
    a = p * s[None, :]
    return LayerFactors(a_full=a, b_full=qt, scale=np.linalg.norm(a, axis=1), singular_values=s)


def calibrate_threshold(x: np.ndarray, scale: np.ndarray, drop_fraction: float) -> float:
    """τ such that exactly round(drop_fraction · numel) of the scores |x ⊙ scale| are ≤ τ (kept: > τ).

    τ sits halfway between the last dropped and the first kept score, so recomputing the scores in float32 at run
    time gives the same mask. drop 0 → τ = −1 (keep all); drop 1 → τ = +inf (keep none).
    """
    x = np.asarray(x, np.float32).reshape(-1, np.shape(scale)[0])
    v = np.sort(np.abs(x * np.asarray(scale, np.float32)[None, :]).ravel().astype(np.float64))
    n_drop = int(round(float(drop_fraction) * v.size))
    if n_drop <= 0:
        return -1.0
    if n_drop >= v.size:
        return math.inf
    return float(0.5 * (v[n_drop - 1] + v[n_drop]))


def keep_mask(x: jax.Array, scale: jax.Array, tau: jax.Array) -> jax.Array:
    """keep = |x ⊙ c| > τ, computed in float32. x [..., d_in], scale [d_in]."""
    c = scale.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return jnp.abs(x.astype(jnp.float32) * c) > tau


# ----------------------------------------------------------------------------------------------------------
# The R-Sparse linear (plain jnp; masked-dense, exact; the kernels live in pallas_kernels/).


def rsparse_matmul(x2: jax.Array, w2: jax.Array, sp: Mapping[str, jax.Array]) -> jax.Array:
    """y = (keep ⊙ x) W + ((1 − keep) ⊙ x) A B for x2 [M, d_in], w2 [d_in, d_out]; fp32 accumulation, x's dtype."""
    keep = keep_mask(x2, sp["scale"], sp["tau"])
    zero = jnp.zeros((), x2.dtype)
    y = jnp.dot(jnp.where(keep, x2, zero), w2.astype(x2.dtype), preferred_element_type=jnp.float32)
    if "a" in sp:
        z = jnp.dot(jnp.where(keep, zero, x2), sp["a"].astype(x2.dtype), preferred_element_type=jnp.float32)
        if "rank_mask" in sp:  # search-time trees keep the largest rank and switch columns off
            z = z * sp["rank_mask"][None, :]
        y = y + jnp.dot(z, sp["b"].astype(jnp.float32), preferred_element_type=jnp.float32)
    return y.astype(x2.dtype)


@dataclasses.dataclass(frozen=True)
class RSparseLinear:
    """The Transformer's linear for an R-Sparse tree: `Model(cfg, linear=RSparseLinear(...))` (or `rsparse_model`).

    Called as `linear(name, p, x, eqn)` for every projection (`transformer.dense_linear`'s signature). A projection
    without an `rsparse` entry (embedding-side code, a tree that was not transformed) is dense. In one with an
    entry, the first ⌊T (1 − sparse_fraction)⌋ tokens of the call stay dense (the reference's
    `int(T * (1 - prefill_ratio))`), the rest go through y = (keep ⊙ x) W + ((1 − keep) ⊙ x) A B:
    sparse_fraction = 1 makes every token sparse (decode), 0 every token dense (prefill).

    Backend: when the sparse tokens of a call are decode-shaped (B·T_sparse ≤ 4 rows) and the layer's shapes fit
    `blocks`, and the backend runs the Pallas kernel (a GPU, or `interpret=True` on any backend), the rows go
    through `pallas_kernels.rsparse_gemv` (weights packed per call). On a CPU with `cpu_gather=True`, decode-shaped
    rows go through `pallas_kernels.rsparse_gemv_gather` (reads only the kept rows of W, exact: its capacity is
    the whole d_in, its loop runs over the kept channels only), which is what makes the KV-cache decoder read fewer
    weight bytes per token on this backend. Otherwise through the masked-dense jnp `rsparse_matmul` (every row of
    W read). `use_kernel=False` always takes the jnp path.
    """

    sparse_fraction: float = 1.0
    use_kernel: bool = True
    interpret: bool = False
    blocks: rk.BlockSizes = rk.BlockSizes()
    cpu_gather: bool = False

    def __post_init__(self):
        f = self.sparse_fraction
        if not (isinstance(f, (int, float, np.floating)) and 0.0 <= float(f) <= 1.0):
            raise ValueError(f"RSparseLinear: sparse_fraction={f!r} must lie in [0, 1]")
        if not isinstance(self.blocks, rk.BlockSizes):
            raise ValueError(f"RSparseLinear: blocks must be a pallas_kernels.rsparse_gemv.BlockSizes, got {self.blocks!r}")

    def dense_tokens(self, n_tokens: int) -> int:
        return int(n_tokens * (1.0 - float(self.sparse_fraction)))

    def kernel_runs(self, rows: int, d_in: int, d_out: int) -> bool:
        """Whether `rows` sparse rows of a [d_in, d_out] layer take the Pallas kernel (decided at trace time)."""
        backend_ok = self.interpret or jax.default_backend() == "gpu"
        return (self.use_kernel and backend_ok and 1 <= rows <= rk.MAX_TOKENS
                and self.blocks.fits(d_in, d_out))

    def sparse_matmul(self, x2: jax.Array, w2: jax.Array, sp: Mapping[str, jax.Array]) -> jax.Array:
        """R-Sparse of x2 [M, d_in] with w2 [d_in, d_out]: the Pallas GEMV or the jnp path (see the class doc)."""
        gather = (self.cpu_gather and self.use_kernel and jax.default_backend() == "cpu"
                  and 1 <= x2.shape[0] <= rk.MAX_TOKENS)
        if not gather and not self.kernel_runs(x2.shape[0], *w2.shape):
            return rsparse_matmul(x2, w2, sp)
        a, b = sp.get("a"), sp.get("b")
        if a is not None and "rank_mask" in sp:  # z · mask = x (A · mask): switched-off columns contribute 0
            a = a * sp["rank_mask"].astype(a.dtype)[None, :]
        if gather:
            return rk.rsparse_gemv_gather(x2, w2, sp["scale"], sp["tau"], a, b, max_kept=w2.shape[0])
        return rk.rsparse_gemv(x2, w2, sp["scale"], sp["tau"], a, b, blocks=self.blocks, interpret=self.interpret)

    def __call__(self, name: str, p: Params, x: jax.Array, eqn: str) -> jax.Array:
        if "rsparse" not in p:
            return tfm.dense_linear(name, p, x, eqn)
        kernel, sp = p["kernel"], p["rsparse"]
        n_in = x.ndim - 2
        in_dims, out_dims = kernel.shape[:n_in], kernel.shape[n_in:]
        if tuple(x.shape[2:]) != tuple(in_dims):
            raise ValueError(f"R-Sparse layer {name}: input trailing shape {x.shape[2:]} does not match kernel "
                             f"{kernel.shape} (expects {in_dims})")
        d_in, d_out = math.prod(in_dims), math.prod(out_dims)
        if sp["scale"].shape != (d_in,) or ("a" in sp and sp["a"].shape[0] != d_in) or (
                "b" in sp and sp["b"].shape[1] != d_out):
            raise ValueError(f"R-Sparse layer {name}: calibrated for other shapes (scale {sp['scale'].shape}, "
                             f"a {sp['a'].shape if 'a' in sp else None}) than the kernel {kernel.shape}")
        B, T = x.shape[:2]
        n_dense = min(self.dense_tokens(T), T)
        parts = []
        if n_dense > 0:
            parts.append(jnp.einsum(eqn, x[:, :n_dense], kernel.astype(x.dtype)))
        if n_dense < T:
            xs = x[:, n_dense:].reshape(B * (T - n_dense), d_in)
            ys = self.sparse_matmul(xs, kernel.reshape(d_in, d_out), sp)
            parts.append(ys.reshape(B, T - n_dense, *out_dims))
        y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        if "bias" in p:
            b = p["bias"].astype(x.dtype)
            y = y + b[(None,) * (y.ndim - b.ndim)]
        return y


def rsparse_model(cfg: tfm.TransformerConfig, sparse_fraction: float = 1.0, **options) -> Model:
    """`Model(cfg, linear=RSparseLinear(sparse_fraction, **options))`: run an `rsparsify` tree with it."""
    return Model(cfg, linear=RSparseLinear(sparse_fraction, **options))


# ----------------------------------------------------------------------------------------------------------
# The model-level transform.


def projections(params: Params) -> dict[str, dict]:
    """name -> projection dict for every linear layer inside the decoder blocks (`layer_i/attn/q`, ...).
    Embedding and LM head stay dense (as in both reference codes)."""
    out = {}
    for lname in sorted((k for k in params if k.startswith("layer_")), key=lambda k: int(k.split("_")[1])):
        for group in ("attn", "mlp"):
            for pname, p in params[lname][group].items():
                if isinstance(p, dict) and "kernel" in p:
                    out[f"{lname}/{group}/{pname}"] = p
    return out


def kernel_matrix(name: str, kernel) -> np.ndarray:
    """A projection kernel as the 2-D [d_in, d_out] matrix the R-Sparse linear sees."""
    n_in = _N_IN.get(name.rsplit("/", 1)[1], 1)
    shape = np.shape(kernel)
    return np.asarray(kernel, np.float64).reshape(math.prod(shape[:n_in]), math.prod(shape[n_in:]))


def compute_factors(params: Params) -> dict[str, LayerFactors]:
    """Offline float64 SVD of every decoder projection (the expensive step; reuse across sparsities)."""
    return {name: svd_factors(kernel_matrix(name, p["kernel"])) for name, p in projections(params).items()}


def collect_inputs(cfg: tfm.TransformerConfig, params: Params, tokens: jax.Array) -> dict[str, np.ndarray]:
    """Dense-model input activations [B·T, d_in] of every projection on `tokens` [B, T].

    Uses the Transformer's own blocks: the residual stream entering each layer comes from `forward(...,
    return_layer_hiddens=True)`; the inputs of `o` and `down` are read off by running that block with an identity
    output kernel (the input of a projection is what an identity projection returns)."""
    tokens = jnp.asarray(tokens)
    B, T = tokens.shape
    hiddens = tfm.forward(cfg, params, tokens, return_layer_hiddens=True, compute_logits=False).layer_hiddens
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    mask = tfm.attention_bias(cfg, T, T, 0, None)
    H, h, F = cfg.n_heads, cfg.head_size, cfg.d_ff
    eye_o = {"kernel": jnp.eye(H * h, dtype=cfg.compute_dtype).reshape(H, h, H * h)}
    eye_f = {"kernel": jnp.eye(F, dtype=cfg.compute_dtype)}
    down = "proj" if cfg.flavour == "gpt2" else "down"
    out = {}
    flat = lambda a: np.asarray(a, np.float32).reshape(B * T, -1)  # noqa: E731
    for i in range(cfg.n_layers):
        lp = params[f"layer_{i}"]
        x = hiddens[i]
        a_in = tfm.apply_norm(cfg, lp["attn_norm"], x)
        o_in = tfm.attention(cfg, {**lp["attn"], "o": eye_o}, a_in, positions, mask, None, 0, None, False)[0]
        attn_out = tfm.attention(cfg, lp["attn"], a_in, positions, mask, None, 0, None, False)[0]
        m_in = tfm.apply_norm(cfg, lp["mlp_norm"], x + attn_out)
        d_in = tfm.mlp(cfg, {**lp["mlp"], down: eye_f}, m_in)
        for pname in lp["attn"]:
            out[f"layer_{i}/attn/{pname}"] = flat(o_in if pname == "o" else a_in)
        for pname in lp["mlp"]:
            out[f"layer_{i}/mlp/{pname}"] = flat(d_in if pname == down else m_in)
    return out


def _per_layer(value, names, what) -> dict[str, float]:
    if isinstance(value, Mapping):
        missing = sorted(set(names) - set(value))
        if missing:
            raise ValueError(f"R-Sparse: no {what} given for layers {missing}")
        return {n: value[n] for n in names}
    return {n: value for n in names}


def build_entry(name: str, budget: LayerBudget, factors: LayerFactors, x_calib: np.ndarray, *, weighted=True,
                pad_rank: Optional[int] = None, dtype=jnp.float32) -> dict:
    """The `rsparse` entry of one projection. `pad_rank` keeps that many factor columns and switches the ones
    beyond the budget's rank off with `rank_mask` (fixed shapes while a search varies α)."""
    d_in = factors.scale.shape[0]
    if x_calib.ndim != 2 or x_calib.shape[1] != d_in:
        raise ValueError(f"R-Sparse layer {name}: calibration activations have shape {x_calib.shape}, "
                         f"expected [tokens, {d_in}]")
    scale = factors.scale if weighted else np.ones(d_in)
    tau = calibrate_threshold(x_calib, scale, budget.drop_fraction)
    entry = {"scale": jnp.asarray(scale, jnp.float32), "tau": jnp.asarray(tau, jnp.float32)}
    r = budget.rank
    if pad_rank is not None:
        if pad_rank < r:
            raise ValueError(f"R-Sparse layer {name}: pad_rank={pad_rank} below the budget's rank {r}")
        entry["a"] = jnp.asarray(factors.a_full[:, :pad_rank], dtype)
        entry["b"] = jnp.asarray(factors.b_full[:pad_rank], dtype)
        entry["rank_mask"] = jnp.asarray(np.arange(pad_rank) < r, jnp.float32)
    elif r > 0:
        entry["a"] = jnp.asarray(factors.a_full[:, :r], dtype)
        entry["b"] = jnp.asarray(factors.b_full[:r], dtype)
    return entry


def rsparsify(cfg: tfm.TransformerConfig, params: Params, calib_tokens: Optional[jax.Array], sparsity, alpha=1.0,
              *, method: str = "rsparse", factors: Optional[dict] = None, inputs: Optional[dict] = None,
              pad_rank: Optional[Mapping[str, int]] = None) -> tuple[Params, dict[str, LayerBudget]]:
    """Transform a decoder's parameters into an R-Sparse (or TEAL) tree.

    Args:
      calib_tokens: [B, T] calibration text (or pass precomputed `inputs` from `collect_inputs`).
      sparsity, alpha: one value for every layer, or a dict layer-name -> value (names from `projections`).
      method: "rsparse" (c-weighted scores, low-rank rest) or "teal" (plain |x| > τ, rest dropped; α ignored).
      factors: precomputed `compute_factors(params)`.
    Returns (new params: every decoder projection gains an `rsparse` entry, budgets per layer).
    Run the result with `rsparse_model(cfg, sparse_fraction=1.0)(new_params, tokens)`.
    """
    if method not in ("rsparse", "teal"):
        raise ValueError(f"rsparsify: method={method!r} is not one of ['rsparse', 'teal']")
    projs = projections(params)
    if not projs:
        raise ValueError("rsparsify: the parameter tree has no layer_i/{attn,mlp}/<proj>/kernel entries")
    names = list(projs)
    sparsity = _per_layer(sparsity, names, "sparsity")
    alpha = _per_layer(1.0 if method == "teal" else alpha, names, "alpha")
    if inputs is None:
        if calib_tokens is None:
            raise ValueError("rsparsify needs calib_tokens or precomputed inputs")
        inputs = collect_inputs(cfg, params, calib_tokens)
    if factors is None:
        factors = compute_factors(params)
    new = jax.tree.map(lambda v: v, params)  # a fresh tree of the same leaves
    budgets = {}
    for name, p in projs.items():
        w2 = kernel_matrix(name, p["kernel"])
        if factors[name].scale.shape[0] != w2.shape[0] or factors[name].b_full.shape[1] != w2.shape[1]:
            raise ValueError(f"R-Sparse layer {name}: factors were computed for another shape than {w2.shape}")
        b = layer_budget(name, w2.shape[0], w2.shape[1], sparsity[name], alpha[name])
        if method == "teal":  # TEAL: drop the s fraction of channels with the smallest |x|
            b = dataclasses.replace(b, kept=w2.shape[0] - int(round(b.sparsity * w2.shape[0])), rank=0,
                                    drop_fraction=b.sparsity, mode="teal")
        budgets[name] = b
        lname, group, pname = name.split("/")
        new[lname][group][pname] = {**p, "rsparse": build_entry(
            name, b, factors[name], inputs[name], weighted=method == "rsparse",
            pad_rank=None if pad_rank is None else pad_rank[name], dtype=jnp.dtype(cfg.param_dtype))}
    return new, budgets


def kept_fraction(x: np.ndarray, entry: Mapping[str, jax.Array]) -> float:
    """Fraction of (token, channel) pairs that take the exact path."""
    scores = np.abs(np.asarray(x, np.float32) * np.asarray(entry["scale"], np.float32)[None, :])
    return float(np.mean(scores > np.float32(entry["tau"])))


def relative_error(x: np.ndarray, kernel_2d, entry) -> float:
    """‖xW − R-Sparse(x)‖ / ‖xW‖ on activations x [M, d_in]."""
    x = jnp.asarray(x, jnp.float32)
    w = jnp.asarray(kernel_2d, jnp.float32)
    y = x @ w
    return float(jnp.linalg.norm(y - rsparse_matmul(x, w, entry)) / jnp.maximum(jnp.linalg.norm(y), 1e-30))


# ----------------------------------------------------------------------------------------------------------
# Per-layer α search at a fixed model-level sparsity.


ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def greedy_alpha_search(params: Params, factors: dict, calib_inputs: dict, heldout_inputs: dict, sparsity: float,
                        grid=ALPHA_GRID) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer, the α on `grid` with the smallest relative output error on held-out activations (τ calibrated
    on `calib_inputs`). At a fixed per-layer sparsity the budgets of different layers do not interact, so this
    block-wise greedy choice (TEAL's `greedyopt` objective, per layer) is optimal for the summed layer error.
    Returns (alpha per layer, its held-out error)."""
    alphas, errors = {}, {}
    for name, p in projections(params).items():
        w2 = kernel_matrix(name, p["kernel"])
        best = None
        for a in grid:
            b = layer_budget(name, w2.shape[0], w2.shape[1], sparsity, a)
            err = relative_error(heldout_inputs[name], w2, build_entry(name, b, factors[name], calib_inputs[name]))
            if best is None or err < best[1] - 1e-12:
                best = (a, err)
        alphas[name], errors[name] = best
    return alphas, errors


def evolutionary_alpha_search(cfg: tfm.TransformerConfig, params: Params, factors: dict, calib_inputs: dict,
                              search_tokens: jax.Array, sparsity: float, *, init: Optional[dict] = None,
                              generations: int = 6, population: int = 12, mutation: float = 0.15,
                              seed: int = 0, log: Optional[Callable[[str], None]] = None):
    """Evolutionary search of α per layer (the paper's Algorithm 1; its exact operators were not published, so:
    elitist selection of the best quarter, uniform crossover, Gaussian mutation of a random third of the genes,
    α clipped to [0, 1]). Fitness = KL(dense ‖ R-Sparse) of next-token distributions on `search_tokens`
    (held out from the calibration set), every token sparse. All candidates share one compiled forward: the
    factors are kept at the largest rank any α can ask for and switched off by `rank_mask`.
    Returns (best α per layer, its fitness, history of best fitness per generation)."""
    names = list(projections(params))
    shapes = {n: kernel_matrix(n, p["kernel"]).shape for n, p in projections(params).items()}
    pad = {n: layer_budget(n, *shapes[n], sparsity, 0.0).rank for n in names}  # r is largest at α = 0
    search_tokens = jnp.asarray(search_tokens)
    dense_logp = jax.nn.log_softmax(tfm.forward(cfg, params, search_tokens).logits, axis=-1)

    sparse_model = rsparse_model(cfg, 1.0)

    @jax.jit
    def kl_of(tree):
        logp = jax.nn.log_softmax(sparse_model(tree, search_tokens), axis=-1)
        return jnp.mean(jnp.sum(jnp.exp(dense_logp) * (dense_logp - logp), axis=-1))

    def fitness(alpha_vec):
        tree, _ = rsparsify(cfg, params, None, sparsity, dict(zip(names, alpha_vec)), factors=factors,
                            inputs=calib_inputs, pad_rank=pad)
        return float(kl_of(tree))

    rng = np.random.default_rng(seed)
    start = np.array([init[n] for n in names]) if init else np.full(len(names), 0.95)
    pop = [start, np.ones(len(names)), np.full(len(names), 0.95)]
    while len(pop) < population:
        g = start.copy()
        idx = rng.random(len(g)) < 1 / 3
        g[idx] = np.clip(g[idx] + rng.normal(0, mutation, idx.sum()), 0, 1)
        pop.append(g)
    scored = sorted(((fitness(g), i, g) for i, g in enumerate(pop)), key=lambda t: t[:2])
    history = [scored[0][0]]
    counter = len(pop)
    for gen in range(generations):
        elite = [g for _, _, g in scored[: max(2, population // 4)]]
        children = []
        while len(children) < population - len(elite):
            pa, pb = rng.choice(len(elite), 2, replace=False)
            child = np.where(rng.random(len(names)) < 0.5, elite[pa], elite[pb])
            idx = rng.random(len(names)) < 1 / 3
            child = child.copy()
            child[idx] = np.clip(child[idx] + rng.normal(0, mutation, idx.sum()), 0, 1)
            children.append(np.round(child, 3))
        new_scored = []
        for g in children:
            new_scored.append((fitness(g), counter, g))
            counter += 1
        scored = sorted(scored[: len(elite)] + new_scored, key=lambda t: t[:2])
        history.append(scored[0][0])
        if log:
            log(f"  evolutionary s={sparsity} gen {gen + 1}: best KL {scored[0][0]:.5f}")
    best = scored[0]
    return dict(zip(names, (float(v) for v in best[2]))), best[0], history
