"""Decode-time R-Sparse GEMV as Pallas kernels (Triton lowering on GPU, `interpret=True` on CPU).

    y[t] = Σ_j keep[t,j] x[t,j] W[j,:]  +  (Σ_j (1 − keep[t,j]) x[t,j] A[j,:]) B,    keep = |x ⊙ c| > τ

for 1–4 tokens t, W [K, N] (jaxllm's kernel layout = torch's Wᵀ, so an input channel is one contiguous row),
A [K, R], B [R, N] the rank-R factors of W (see jaxllm/sparse/rsparse.py).

Design (after TEAL's `splitk_sparse_gemv_kernel`, research note §0.11, §6.4):
- kernel 1 `_lowrank_down_kernel`: z = ((1 − keep) ⊙ x) A, grid (R/BR, K/BK) split over K, fp32 partial sums
  atomically added into z (rows of A that no token drops are never read);
- kernel 2 `_sparse_gemv_kernel`: y = [keep ⊙ x, z] [W; B], grid (N/BN, (K+R)/BK) split over K: the threshold test is
  fused, each program loads the BK×BN tile of [W; B] with the rows masked by "some token keeps this channel"
  (rows of W no token keeps are never read; the B rows are always read), accumulates in fp32 and atomically adds
  into y. Stacking B under W (done once, offline, by `pack_weights`) fuses the low-rank up-projection into the
  sparse GEMV: z is just R more always-kept input channels.
- Outputs start from zeros passed as aliased inputs (interpret mode leaves untouched outputs as NaN; on the GPU it
  is the zero-init TEAL does with an autotune pre-hook).

GPU lowering: Triton, selected by `compiler_params=pltriton.CompilerParams(...)` (JAX 0.9+ defaults to Mosaic GPU;
the masked loads and atomics used here are `jax.experimental.pallas.triton` primitives). TPU: not supported — Mosaic
TPU has no masked row loads or atomics, so a TPU version would need a different (gather-by-DMA) design.
CPU fallback without Pallas: `rsparse_gemv_gather` (jnp gather of the kept rows).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

MAX_TOKENS = 4


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    block_k: int = 64  # input channels per program (split-K)
    block_n: int = 128  # output columns per program
    block_r: int = 64  # low-rank columns per program (kernel 1)
    num_warps: int = 4
    num_stages: int = 2

    def fits(self, d_in: int, d_out: int) -> bool:
        """Whether a [d_in, d_out] layer can use these blocks (`pack_weights` pads the rank to fit)."""
        try:
            self.validate(d_in, d_out, 0)
        except ValueError:
            return False
        return True

    def validate(self, d_in: int, d_out: int, rank_padded: int) -> None:
        for name in ("block_k", "block_n", "block_r"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"BlockSizes.{name}={v} must be a positive power of two (Triton block shapes)")
        if d_in % self.block_k:
            raise ValueError(f"d_in={d_in} is not a multiple of block_k={self.block_k}")
        if d_out % self.block_n:
            raise ValueError(f"d_out={d_out} is not a multiple of block_n={self.block_n}")
        if rank_padded and (rank_padded % self.block_r or rank_padded % self.block_k):
            raise ValueError(f"padded rank {rank_padded} must be a multiple of block_r={self.block_r} and "
                             f"block_k={self.block_k} (use pack_weights with the same BlockSizes)")
        if self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"num_warps={self.num_warps} and num_stages={self.num_stages} must be >= 1")


class PackedWeights(NamedTuple):
    """[W; B] stacked [K + Rp, N] and A zero-padded to [K, Rp] (Rp = R rounded up to the block sizes); a = None
    when there is no low-rank path (α = 1 / TEAL)."""

    w_cat: jax.Array
    a: Optional[jax.Array]


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def pack_weights(w: jax.Array, a: Optional[jax.Array] = None, b: Optional[jax.Array] = None,
                 blocks: BlockSizes = BlockSizes()) -> PackedWeights:
    """Offline layout for the kernels (one copy of W; do it once per layer, not per token)."""
    if (a is None) != (b is None):
        raise ValueError("pass both low-rank factors a [K, R] and b [R, N], or neither")
    if a is None or a.shape[1] == 0:
        return PackedWeights(w, None)
    K, N = w.shape
    if a.shape[0] != K or b.shape != (a.shape[1], N):
        raise ValueError(f"factor shapes a {a.shape}, b {b.shape} do not fit W {w.shape}")
    rp = _round_up(a.shape[1], max(blocks.block_r, blocks.block_k))
    a_pad = jnp.zeros((K, rp), a.dtype).at[:, : a.shape[1]].set(a)
    b_pad = jnp.zeros((rp, N), w.dtype).at[: b.shape[0]].set(b.astype(w.dtype))
    return PackedWeights(jnp.concatenate([w, b_pad], axis=0), a_pad)


# ----------------------------------------------------------------------------------------------------------
# References.


def rsparse_gemv_reference(x, w, scale, tau, a=None, b=None):
    """Plain jnp, fp32 math: x [T, K] -> y [T, N] in x's dtype."""
    xf = x.astype(jnp.float32)
    keep = jnp.abs(xf * scale.astype(jnp.float32)[None, :]) > tau
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs
    y = dot(jnp.where(keep, xf, 0.0), w.astype(jnp.float32))
    if a is not None:
        y = y + dot(dot(jnp.where(keep, 0.0, xf), a.astype(jnp.float32)), b.astype(jnp.float32))
    return y.astype(x.dtype)


def teal_gemv_reference(x, w, tau):
    """TEAL: y = (x ⊙ 1[|x| > τ]) W."""
    xf = x.astype(jnp.float32)
    y = jnp.dot(jnp.where(jnp.abs(xf) > tau, xf, 0.0), w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("max_kept", "unroll"))
def rsparse_gemv_gather(x, w, scale, tau, a=None, b=None, *, max_kept: int, unroll: int = 8):
    """CPU fallback: read only the kept rows of W, `unroll` rows per step of a loop whose trip count is the number
    of kept channels (XLA:CPU's generic gather copies rows ~30× slower than this). At most `max_kept` channels
    (static bound) take the exact path: a channel kept by some token beyond the first `max_kept` goes to the
    low-rank path (or is dropped without one); with max_kept ≥ the number of kept channels this equals
    `rsparse_gemv_reference`."""
    K, N = w.shape
    cap = _round_up(max(1, min(max_kept, K)), unroll)
    xf = x.astype(jnp.float32)
    keep = jnp.abs(xf * scale.astype(jnp.float32)[None, :]) > tau
    row = jnp.any(keep, axis=0)
    (idx,) = jnp.nonzero(row, size=cap, fill_value=0)
    count = jnp.minimum(jnp.sum(row), min(max_kept, K))
    valid = jnp.arange(cap) < count
    selected = jnp.zeros((K,), bool).at[idx].max(valid)
    keep = keep & selected[None, :]
    xs = jnp.where(keep, xf, 0.0)[:, idx] * valid[None, :]  # [T, cap]

    def body(i, acc):
        for u in range(unroll):
            j = i * unroll + u
            w_row = jax.lax.dynamic_slice_in_dim(w, idx[j], 1, axis=0).astype(jnp.float32)  # [1, N]
            acc = acc + jax.lax.dynamic_slice_in_dim(xs, j, 1, axis=1) * w_row
        return acc

    y = jax.lax.fori_loop(0, (count + unroll - 1) // unroll, body, jnp.zeros((x.shape[0], N), jnp.float32))
    if a is not None:
        y = y + (jnp.where(keep, 0.0, xf) @ a.astype(jnp.float32)) @ b.astype(jnp.float32)
    return y.astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Kernels.


def _lowrank_down_kernel(x_ref, c_ref, tau_ref, a_ref, z0_ref, z_ref, *, block_k):
    del z0_ref  # aliased to z_ref: the zero initial value
    x = x_ref[...].astype(jnp.float32)  # [T, BK]
    c = c_ref[...].astype(jnp.float32)  # [BK]
    drop = jnp.abs(x * c[None, :]) <= tau_ref[0]  # threshold test fused: the complement of keep
    row = jnp.max(drop.astype(jnp.int32), axis=0) > 0  # rows of A some token needs
    a = pltriton.load(a_ref, mask=jnp.broadcast_to(row[:, None], a_ref.shape), other=0.0).astype(jnp.float32)
    xd = jnp.where(drop, x, 0.0)
    acc = jnp.sum(xd[:, :, None] * a[None, :, :], axis=1)  # [T, BR] fp32
    pltriton.atomic_add(z_ref, (slice(None), slice(None)), acc)


def _sparse_gemv_kernel(x_ref, c_ref, tau_ref, w_ref, y0_ref, y_ref, *, block_k, d_in):
    del y0_ref
    kb = pl.program_id(1)
    rows = kb * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_k,), 0)
    x = x_ref[...].astype(jnp.float32)  # [T, BK] (channels >= d_in are the low-rank z)
    c = c_ref[...].astype(jnp.float32)
    keep = (jnp.abs(x * c[None, :]) > tau_ref[0]) | (rows >= d_in)[None, :]
    row = jnp.max(keep.astype(jnp.int32), axis=0) > 0
    w = pltriton.load(w_ref, mask=jnp.broadcast_to(row[:, None], w_ref.shape), other=0.0,
                      eviction_policy="evict_first").astype(jnp.float32)  # only kept rows are read
    xk = jnp.where(keep, x, 0.0)
    acc = jnp.sum(xk[:, :, None] * w[None, :, :], axis=1)  # [T, BN] fp32
    pltriton.atomic_add(y_ref, (slice(None), slice(None)), acc)


def _pad_tokens(x):
    T = x.shape[0]
    if not 1 <= T <= MAX_TOKENS:
        raise ValueError(f"rsparse_gemv serves decode batches of 1..{MAX_TOKENS} tokens, got {T}")
    tp = 1 if T == 1 else 2 if T == 2 else 4
    return jnp.pad(x, ((0, tp - T), (0, 0))), T


def _prepare_call(x, packed: "PackedWeights", scale, tau, blocks: "BlockSizes"):
    """Shared argument checks of the Pallas and jax-triton GEMVs: (K, N, rank, w_cat, a, padded x, T, tau[1])."""
    K = scale.shape[0]
    w_cat, a = packed
    N = w_cat.shape[1]
    rp = 0 if a is None else a.shape[1]
    if x.ndim != 2 or x.shape[1] != K or w_cat.shape[0] != K + rp:
        raise ValueError(f"shapes do not fit: x {x.shape}, scale {scale.shape}, w_cat {w_cat.shape}, rank {rp}")
    blocks.validate(K, N, rp)
    xp, T = _pad_tokens(x)
    return K, N, rp, w_cat, a, xp, T, jnp.reshape(tau, (1,)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("blocks", "interpret"))
def rsparse_gemv_packed(x, packed: PackedWeights, scale, tau, *, blocks: BlockSizes = BlockSizes(),
                        interpret: bool = False):
    """R-Sparse GEMV on `pack_weights` output. x [T, K] (T ≤ 4), scale [K], tau scalar -> y [T, N] (x's dtype)."""
    K, N, rp, w_cat, a, xp, T, tau_arr = _prepare_call(x, packed, scale, tau, blocks)
    tp = xp.shape[0]
    cp = pltriton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    bk, bn, br = blocks.block_k, blocks.block_n, blocks.block_r
    tau_spec = pl.BlockSpec((1,), lambda i, j: (0,))
    x_cat = xp.astype(jnp.float32)
    c_cat = scale.astype(jnp.float32)
    if rp:
        z = pl.pallas_call(
            functools.partial(_lowrank_down_kernel, block_k=bk),
            out_shape=jax.ShapeDtypeStruct((tp, rp), jnp.float32),
            grid=(rp // br, K // bk),
            in_specs=[pl.BlockSpec((tp, bk), lambda r, k: (0, k)), pl.BlockSpec((bk,), lambda r, k: (k,)),
                      tau_spec, pl.BlockSpec((bk, br), lambda r, k: (k, r)),
                      pl.BlockSpec((tp, br), lambda r, k: (0, r))],
            out_specs=pl.BlockSpec((tp, br), lambda r, k: (0, r)),
            input_output_aliases={4: 0},
            compiler_params=cp, interpret=interpret, name="rsparse_lowrank_down",
        )(xp, scale, tau_arr, a, jnp.zeros((tp, rp), jnp.float32))
        x_cat = jnp.concatenate([x_cat, z], axis=1)
        c_cat = jnp.concatenate([c_cat, jnp.zeros((rp,), jnp.float32)])
    y = pl.pallas_call(
        functools.partial(_sparse_gemv_kernel, block_k=bk, d_in=K),
        out_shape=jax.ShapeDtypeStruct((tp, N), jnp.float32),
        grid=(N // bn, (K + rp) // bk),
        in_specs=[pl.BlockSpec((tp, bk), lambda n, k: (0, k)), pl.BlockSpec((bk,), lambda n, k: (k,)),
                  tau_spec, pl.BlockSpec((bk, bn), lambda n, k: (k, n)),
                  pl.BlockSpec((tp, bn), lambda n, k: (0, n))],
        out_specs=pl.BlockSpec((tp, bn), lambda n, k: (0, n)),
        input_output_aliases={4: 0},
        compiler_params=cp, interpret=interpret, name="rsparse_sparse_gemv",
    )(x_cat, c_cat, tau_arr, w_cat, jnp.zeros((tp, N), jnp.float32))
    return y[:T].astype(x.dtype)


def rsparse_gemv(x, w, scale, tau, a=None, b=None, *, blocks: BlockSizes = BlockSizes(), interpret: bool = False):
    """Convenience form (packs the weights on every call; use `pack_weights` + `rsparse_gemv_packed` to serve)."""
    return rsparse_gemv_packed(x, pack_weights(w, a, b, blocks), scale, tau, blocks=blocks, interpret=interpret)


def dense_gemv_pallas(x, w, *, blocks: BlockSizes = BlockSizes(), interpret: bool = False):
    """The same kernel with every channel kept (τ = −1, no low rank): the like-for-like dense baseline."""
    return rsparse_gemv_packed(x, PackedWeights(w, None), jnp.ones((w.shape[0],), jnp.float32),
                               jnp.float32(-1.0), blocks=blocks, interpret=interpret)
