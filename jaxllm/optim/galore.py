"""GaLore / GaLore 2 as optax transforms: Adam on a low-rank projection of each matrix gradient.

GaLore (arXiv 2403.03507) keeps the Adam moments of a matrix W (m x n) in a rank-r projection of its gradient
G: every T steps an orthonormal basis P of G's top-r singular subspace is computed, Adam runs on R = P^T G
(left, R: r x n) or R = G P (right, R: m x r), and the normalized step is mapped back and scaled by alpha.
GaLore 2 (arXiv 2504.20437) keeps the rule and replaces the exact SVD by a randomized range finder (Halko,
Martinsson & Tropp 2011), which is fast and, under FSDP sharding, never gathers the whole gradient.

The update of `scale_by_galore` is, exactly as galore-torch 1.0 `GaLoreAdamW` computes it (adamw.py):

    t = count + 1;  M = b1 M + (1-b1) R;  V = b2 V + (1-b2) R^2
    N = M / (sqrt(V) + eps)                       # eps before bias correction (HF AdamW), eps_mode="torch"
    D = alpha * sqrt(1 - b2^t) / (1 - b1^t) * back(N)       # back(N) = P N (left) or N P^T (right)

and `D` is returned (optax sign convention: follow with `scale_by_learning_rate`). `eps_mode="optax"` uses
N = M_hat / (sqrt(V_hat) + eps) as `optax.scale_by_adam` does.

Projection side on the m x n matrix view: `std` (galore-torch default) projects the smaller side (right if
m >= n, so the moments are max(m, n) x r or r x max(m, n)); `reverse_std` projects the larger side (what
`optax.contrib.galore` does); `left` / `right` force a side. The side is decided from static shapes once.

The matrix view of a leaf (`MatrixView`): its first `row_axes` axes form the rows, the rest the columns
(a q kernel [D, H, h] is D x (H h), an o kernel [H, h, D] is (H h) x D); `transpose=True` makes GaLore see the
transpose, e.g. torch's (out, in) orientation of a Flax (in, out) kernel, which only matters for square matrices
and for the `left`/`right`/`reverse_std` sides.

Refresh: one `lax.cond` per leaf on a *scalar* predicate (never a batched one, which `vmap` would turn into a
`select` running the SVD every step), so the SVD runs only at refresh steps. With `stagger=True` leaf i
refreshes at count = 0 and whenever (count - o_i) % T == 0 with offsets o_i spread over [0, T).
At a refresh the moments are kept as galore-torch does (`moments="keep"`), zeroed with the bias correction
restarted (`"reset"`), or rotated into the new basis (`"rotate"`: M <- C M, V <- (C*C) V, C = P_new^T P_old,
for the left side; transposed for the right).

Sharding: each leaf's state records which parameter axes its projector spans and which its moments keep
(`GaLoreLeafState.param_dims`), so `jaxllm.parallel.shardings_like` shards the low-rank state like the
parameter (under FSDP the projector of a q kernel is split along embed like the kernel) instead of replicating it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jaxllm.config import ConfigError

SIDES = ("std", "reverse_std", "left", "right")
PROJECTORS = ("svd", "randomized")
MOMENT_MODES = ("keep", "reset", "rotate")
EPS_MODES = ("torch", "optax")


class MatrixView(NamedTuple):
    """How a leaf is seen as a matrix: first `row_axes` axes are rows; optionally transposed."""

    row_axes: int = 1
    transpose: bool = False


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["projector", "mu", "nu", "last_refresh", "key"],
                   meta_fields=["projected_axes", "kept_axes", "left"])
@dataclasses.dataclass(frozen=True)
class GaLoreLeafState:
    """The state of one projected leaf. The static fields say which axes of the parameter the projector spans
    (the projected side: m on the left, n on the right) and which the moments keep, so that the state can be
    sharded like the parameter (`param_dims`, used by `jaxllm.parallel.shardings_like`)."""

    projector: jax.Array  # [m, r] (left side) or [n, r] (right side), orthonormal columns, float32
    mu: jax.Array  # first moment, [r, n] (left) or [m, r] (right)
    nu: jax.Array  # second moment, same shape as mu
    last_refresh: jax.Array  # int32 scalar: count at the last projector refresh, -1 before the first
    key: jax.Array  # uint32[2] raw PRNG key, split at each randomized refresh
    projected_axes: tuple[int, ...] = ()  # static: parameter axes merged into the projected side
    kept_axes: tuple[int, ...] = ()  # static: parameter axes merged into the side the moments keep
    left: bool = True  # static

    def param_dims(self) -> dict[str, tuple]:
        """Per array field, per dimension: the parameter axes that dimension is made of (None: the rank r)."""
        moments = (None, self.kept_axes) if self.left else (self.kept_axes, None)
        return {"projector": (self.projected_axes, None), "mu": moments, "nu": moments, "last_refresh": (),
                "key": (None,)}


class GaLoreState(NamedTuple):
    count: jax.Array  # int32 scalar: updates taken
    leaves: Any  # the update tree with a GaLoreLeafState per projected leaf


class _Plan(NamedTuple):
    """Static facts about one projected leaf, derived from its shape."""

    name: str
    shape: tuple
    view: MatrixView
    m: int
    n: int
    rank: int
    left: bool
    offset: int


def path_name(path) -> str:
    """'layer_0/attn/q/kernel' for a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def resolve_rank(rank: Union[int, float], m: int, n: int, name: str) -> int:
    """An int rank as is, a float in (0, 1] as that fraction of min(m, n); error naming the leaf if too big."""
    small = min(m, n)
    if isinstance(rank, float):
        if not 0.0 < rank <= 1.0:
            raise ConfigError(f"GaLore rank fraction {rank} must lie in (0, 1]")
        r = max(1, int(rank * small))
    else:
        r = int(rank)
    if r < 1:
        raise ConfigError(f"GaLore rank must be >= 1, got {r} for leaf {name!r}")
    if r > small:
        raise ConfigError(f"GaLore rank {r} exceeds the smaller dimension {small} of leaf {name!r} "
                          f"(matrix view {m}x{n}); lower the rank or send this leaf to AdamW")
    return r


def _is_left(side: str, m: int, n: int) -> bool:
    if side == "std":
        return m < n  # galore-torch: m >= n -> right projector Vh[:r]
    if side == "reverse_std":
        return m >= n
    return side == "left"


def to_matrix(x: jax.Array, view: MatrixView) -> jax.Array:
    rows = math.prod(x.shape[: view.row_axes])
    x2 = x.reshape(rows, -1)
    return x2.T if view.transpose else x2


def from_matrix(x2: jax.Array, view: MatrixView, shape: tuple) -> jax.Array:
    return (x2.T if view.transpose else x2).reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# Projector refresh: an orthonormal basis of the top-r singular subspace of G's projected side.


def canonical_signs(u: jax.Array) -> jax.Array:
    """[k] signs making the largest-|.| entry of each column of `u` positive. An SVD is defined only up to
    the sign of each singular pair and LAPACK builds disagree on it (jax's and torch's do on some tall
    matrices); since moments outlive a refresh, the sign changes the trajectory, so fix it."""
    idx = jnp.argmax(jnp.abs(u), axis=0)
    s = jnp.sign(jnp.take_along_axis(u, idx[None, :], axis=0)[0])
    return jnp.where(s == 0, 1.0, s).astype(u.dtype)


def exact_basis(g: jax.Array, rank: int, left: bool, canonical: bool = True) -> jax.Array:
    """Top-r basis of g's [m, n] column space (left: [m, r] = U_r) or row space (right: [n, r] = Vh_r^T),
    from a full fp32 SVD of g itself, as galore-torch computes it, with `canonical_signs` of U (or LAPACK's
    signs as `optax.contrib.galore` takes them when canonical=False)."""
    u, _, vh = jnp.linalg.svd(g.astype(jnp.float32), full_matrices=False)
    s = canonical_signs(u) if canonical else jnp.ones((u.shape[1],), u.dtype)
    if left:
        return u[:, :rank] * s[None, :rank]
    return vh[:rank].T * s[None, :rank]


def randomized_basis(a: jax.Array, rank: int, key: jax.Array, oversample: int = 8, power_iters: int = 2,
                     variant: str = "fast") -> jax.Array:
    """[rows, r]: top-r left singular subspace of `a` [rows, cols] by a randomized range finder (Halko,
    Martinsson & Tropp 2011) with sketch width l = r + oversample and `power_iters` power iterations.

    variant="halko": Alg. 4.4, a QR after every product with A or A^T, then the SVD of B = Q^T A.
    variant="fast": one QR per power iteration (Q <- qr(A A^T Q), Alg. 4.3 with re-orthonormalisation) and
    the eigenvectors of the l x l matrix B B^T instead of an SVD of B: 3 instead of 5 QRs at q = 2 and no
    SVD. In fp32 it loses only directions with sigma_i / sigma_1 below ~3e-4, which carry no energy to speak
    of (the captured-energy tests hold for both). Either way nothing larger than rows x l, l x cols or l x l
    is formed, so under FSDP only sketches move between devices.
    """
    a = a.astype(jnp.float32)
    rows, cols = a.shape
    width = min(rank + oversample, rows, cols)
    omega = jax.random.normal(key, (cols, width), jnp.float32)
    q, _ = jnp.linalg.qr(a @ omega)
    for _ in range(power_iters):
        if variant == "halko":
            z, _ = jnp.linalg.qr(a.T @ q)
            q, _ = jnp.linalg.qr(a @ z)
        else:
            q, _ = jnp.linalg.qr(a @ (a.T @ q))
    b = q.T @ a  # [width, cols]
    if variant == "halko":
        ub, _, _ = jnp.linalg.svd(b, full_matrices=False)
    else:
        _, vecs = jnp.linalg.eigh(b @ b.T)  # ascending eigenvalues sigma^2
        ub = vecs[:, ::-1]
    return q @ ub[:, :rank]


def captured_energy(a: jax.Array, basis: jax.Array) -> jax.Array:
    """||basis^T a||_F^2: the gradient energy a left basis keeps (compare with the exact top-r basis)."""
    return jnp.sum(jnp.square(basis.T @ a))


# ---------------------------------------------------------------------------------------------------------


def _plans(tree: Any, rank, side: str, update_proj_gap: int, stagger: bool,
           view_fn: Optional[Callable[[str, tuple], MatrixView]]) -> tuple[list[_Plan], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    plans = []
    count = len(flat)
    for i, (path, leaf) in enumerate(flat):
        name = path_name(path)
        shape = tuple(leaf.shape)
        view = view_fn(name, shape) if view_fn is not None else MatrixView()
        if len(shape) < 2 or not 1 <= view.row_axes < len(shape):
            raise ConfigError(
                f"GaLore cannot project leaf {name!r} of shape {shape} with matrix view {view}: it needs >= 2 "
                "axes split into rows and columns (send 1-D leaves to AdamW with a label function)")
        if len(shape) > 2 and view_fn is None:
            raise ConfigError(f"leaf {name!r} has shape {shape}: pass view_fn to say which axes form the rows")
        rows = math.prod(shape[: view.row_axes])
        cols = math.prod(shape[view.row_axes:])
        m, n = (cols, rows) if view.transpose else (rows, cols)
        r = resolve_rank(rank, m, n, name)
        offset = (i * update_proj_gap) // count if stagger else 0
        plans.append(_Plan(name, shape, view, m, n, r, _is_left(side, m, n), offset))
    return plans, treedef


def _matrix_axes(p: _Plan) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The parameter axes that form the m rows and the n columns of the matrix GaLore sees."""
    rows = tuple(range(p.view.row_axes))
    cols = tuple(range(p.view.row_axes, len(p.shape)))
    return (cols, rows) if p.view.transpose else (rows, cols)


def _low_rank_shape(p: _Plan) -> tuple[int, int]:
    return (p.rank, p.n) if p.left else (p.m, p.rank)


def scale_by_galore(
    rank: Union[int, float] = 128,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    side: Literal["std", "reverse_std", "left", "right"] = "std",
    projector: Literal["svd", "randomized"] = "svd",
    oversample: int = 8,
    power_iters: int = 2,
    randomized_variant: Literal["fast", "halko"] = "fast",
    moments: Literal["keep", "reset", "rotate"] = "keep",
    eps_mode: Literal["torch", "optax"] = "torch",
    stagger: bool = False,
    moment_dtype: str = "float32",
    seed: int = 0,
    view_fn: Optional[Callable[[str, tuple], MatrixView]] = None,
    canonical: bool = True,
) -> optax.GradientTransformation:
    """GaLore-projected Adam scaling for every leaf it receives (use `optax.partition` to route the rest).

    Returns D (see module docstring); chain with `optax.scale_by_learning_rate(lr)` and a weight decay.
    rank: int, or float fraction of each matrix's smaller side. view_fn(name, shape) -> MatrixView for
    leaves with more than 2 axes. seed: the PRNG seed of the randomized refresh (one key per leaf).
    canonical: fix the signs of exact singular vectors (`canonical_signs`); False keeps LAPACK's.
    """
    _validate(rank, update_proj_gap, scale, b1, b2, eps, side, projector, oversample, power_iters, moments,
              eps_mode, moment_dtype)
    if randomized_variant not in ("fast", "halko"):
        raise ConfigError(f"GaLore randomized_variant={randomized_variant!r} is not one of ['fast', 'halko']")
    mdtype = jnp.dtype(moment_dtype)

    def init_fn(params):
        plans, treedef = _plans(params, rank, side, update_proj_gap, stagger, view_fn)
        base = jax.random.PRNGKey(seed)
        leaves = []
        for i, p in enumerate(plans):
            lr_shape = _low_rank_shape(p)
            m_axes, n_axes = _matrix_axes(p)
            leaves.append(GaLoreLeafState(
                projector=jnp.zeros(((p.m if p.left else p.n), p.rank), jnp.float32),
                mu=jnp.zeros(lr_shape, mdtype),
                nu=jnp.zeros(lr_shape, mdtype),
                last_refresh=jnp.full((), -1, jnp.int32),
                key=jax.random.fold_in(base, i),
                projected_axes=m_axes if p.left else n_axes,
                kept_axes=n_axes if p.left else m_axes,
                left=p.left,
            ))
        return GaLoreState(count=jnp.zeros((), jnp.int32), leaves=jax.tree.unflatten(treedef, leaves))

    def update_leaf(g, st: GaLoreLeafState, p: _Plan, count):
        g2 = to_matrix(g, p.view).astype(jnp.float32)  # [m, n]
        a = g2 if p.left else g2.T  # the side whose left singular subspace we track

        def refresh(st):
            key, sub = jax.random.split(st.key)
            if projector == "svd":
                new = exact_basis(g2, p.rank, p.left, canonical)
            else:
                new = randomized_basis(a, p.rank, sub, oversample, power_iters, randomized_variant)
            # An SVD that fails to converge (galore-torch issue #58) must not poison the weights: keep the old basis.
            new = jnp.where(jnp.all(jnp.isfinite(new)), new, st.projector)
            mu, nu = st.mu.astype(jnp.float32), st.nu.astype(jnp.float32)
            if moments == "reset":
                mu, nu = jnp.zeros_like(mu), jnp.zeros_like(nu)
            elif moments == "rotate":
                c = new.T @ st.projector  # [r, r]: new coordinates of the old basis vectors
                if p.left:
                    mu, nu = c @ mu, jnp.square(c) @ nu
                else:
                    mu, nu = mu @ c.T, nu @ jnp.square(c).T
            return dataclasses.replace(st, projector=new, mu=mu.astype(mdtype), nu=nu.astype(mdtype),
                                       last_refresh=count, key=key)

        due = (st.last_refresh < 0) | ((count - p.offset) % update_proj_gap == 0)
        st = jax.lax.cond(due, refresh, lambda s: s, st)
        basis = st.projector
        low = basis.T @ g2 if p.left else g2 @ basis  # [r, n] or [m, r]
        mu = b1 * st.mu.astype(jnp.float32) + (1.0 - b1) * low
        nu = b2 * st.nu.astype(jnp.float32) + (1.0 - b2) * jnp.square(low)
        t = (count - st.last_refresh + 1 if moments == "reset" else count + 1).astype(jnp.float32)
        bc1 = 1.0 - jnp.power(jnp.float32(b1), t)
        bc2 = 1.0 - jnp.power(jnp.float32(b2), t)
        if eps_mode == "torch":
            normed = mu / (jnp.sqrt(nu) + eps) * (jnp.sqrt(bc2) / bc1)
        else:
            normed = (mu / bc1) / (jnp.sqrt(nu / bc2) + eps)
        back = basis @ normed if p.left else normed @ basis.T  # [m, n]
        out = from_matrix(scale * back, p.view, p.shape).astype(g.dtype)
        return out, dataclasses.replace(st, mu=mu.astype(mdtype), nu=nu.astype(mdtype))

    def update_fn(updates, state, params=None):
        del params
        plans, treedef = _plans(updates, rank, side, update_proj_gap, stagger, view_fn)
        grads = treedef.flatten_up_to(updates)
        states = treedef.flatten_up_to(state.leaves)
        outs, new_states = [], []
        for g, st, p in zip(grads, states, plans):
            o, s = update_leaf(g, st, p, state.count)
            outs.append(o)
            new_states.append(s)
        return (jax.tree.unflatten(treedef, outs),
                GaLoreState(state.count + 1, jax.tree.unflatten(treedef, new_states)))

    return optax.GradientTransformation(init_fn, update_fn)


def _validate(rank, gap, scale, b1, b2, eps, side, projector, oversample, power_iters, moments, eps_mode,
              moment_dtype):
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ConfigError(f"GaLore rank must be an int or a float fraction, got {rank!r}")
    if gap < 1:
        raise ConfigError(f"GaLore update_proj_gap must be >= 1, got {gap}")
    if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
        raise ConfigError(f"GaLore betas must lie in [0, 1), got b1={b1}, b2={b2}")
    if eps < 0 or scale <= 0:
        raise ConfigError(f"GaLore needs eps >= 0 and scale > 0, got eps={eps}, scale={scale}")
    for name, value, choices in (("side", side, SIDES), ("projector", projector, PROJECTORS),
                                 ("moments", moments, MOMENT_MODES), ("eps_mode", eps_mode, EPS_MODES),
                                 ("moment_dtype", moment_dtype, ("float32", "bfloat16"))):
        if value not in choices:
            raise ConfigError(f"GaLore {name}={value!r} is not one of {list(choices)}")
    if oversample < 0 or power_iters < 0:
        raise ConfigError(f"oversample and power_iters must be >= 0, got {oversample}, {power_iters}")


class DecayState(NamedTuple):
    count: jax.Array


def decay_updated_weights(weight_decay: float, learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """galore-torch / HF AdamW decoupled decay of the *updated* weight: p <- p + u, then p <- p - lr*wd*p,
    i.e. u' = u - lr*wd*(p + u). Put it after `scale_by_learning_rate` (u already carries -lr)."""

    def init_fn(params):
        del params
        return DecayState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("decay_updated_weights needs params (optimizer.update(grads, state, params))")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        new = jax.tree.map(lambda u, p: u - (lr * weight_decay) * (p + u).astype(u.dtype), updates, params)
        return new, DecayState(state.count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def galore_only(
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 0.0,
    **galore_kwargs,
) -> optax.GradientTransformation:
    """The full GaLore update of galore-torch's `GaLoreAdamW` for the leaves it receives:
    scale_by_galore -> -lr -> decay of the updated weight."""
    parts = [scale_by_galore(**galore_kwargs), optax.scale_by_learning_rate(learning_rate)]
    if weight_decay:
        parts.append(decay_updated_weights(weight_decay, learning_rate))
    return optax.chain(*parts)
