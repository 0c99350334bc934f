"""The decode-time R-Sparse GEMV of `rsparse_gemv.py`, written in Triton and called through jax-triton.

Same algorithm and packed layout (`pack_weights`): kernel 1 z = ((1 − keep) ⊙ x) A, kernel 2 y = [keep ⊙ x, z] [W; B],
both split-K with the threshold test fused, masked row loads (rows no token keeps are never read; `evict_first`),
fp32 accumulation and `tl.atomic_add` into outputs zeroed by jax-triton (`zeroed_outputs`, TEAL's pre-hook).

GPU only: jax-triton and triton are imported lazily (neither is a CPU dependency; `pip install jaxllm[gpu]`).
Works with jax-triton 0.3.1 (`out_shape=`) and 0.4.x (`out_type=`).
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from pallas_kernels.rsparse_gemv import BlockSizes, PackedWeights, _prepare_call


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def lowrank_down(x_ptr, c_ptr, tau_ptr, a_ptr, z_ptr, K: tl.constexpr, RP: tl.constexpr, T: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_k = tl.program_id(1)
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        rt = tl.arange(0, T)
        x = tl.load(x_ptr + rt[:, None] * K + rk[None, :], eviction_policy="evict_last").to(tl.float32)
        c = tl.load(c_ptr + rk).to(tl.float32)
        tau = tl.load(tau_ptr)
        drop = tl.abs(x * c[None, :]) <= tau
        row = tl.max(drop.to(tl.int32), axis=0) > 0
        a = tl.load(a_ptr + rk[:, None] * RP + rr[None, :], mask=row[:, None], other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        xd = tl.where(drop, x, 0.0)
        acc = tl.sum(xd[:, :, None] * a[None, :, :], axis=1)
        tl.atomic_add(z_ptr + rt[:, None] * RP + rr[None, :], acc)

    @triton.jit
    def sparse_gemv(x_ptr, c_ptr, tau_ptr, w_ptr, y_ptr, D_IN: tl.constexpr, KC: tl.constexpr, N: tl.constexpr,
                    T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rt = tl.arange(0, T)
        x = tl.load(x_ptr + rt[:, None] * KC + rk[None, :], eviction_policy="evict_last").to(tl.float32)
        c = tl.load(c_ptr + rk).to(tl.float32)
        tau = tl.load(tau_ptr)
        keep = (tl.abs(x * c[None, :]) > tau) | (rk >= D_IN)[None, :]
        row = tl.max(keep.to(tl.int32), axis=0) > 0
        w = tl.load(w_ptr + rk[:, None] * N + rn[None, :], mask=row[:, None], other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        xk = tl.where(keep, x, 0.0)
        acc = tl.sum(xk[:, :, None] * w[None, :, :], axis=1)
        tl.atomic_add(y_ptr + rt[:, None] * N + rn[None, :], acc)

    return lowrank_down, sparse_gemv


def _call(*args, out, **kw):
    import jax_triton as jt

    key = "out_shape" if "out_shape" in inspect.signature(jt.triton_call).parameters else "out_type"
    return jt.triton_call(*args, **{key: out}, **kw)


@functools.partial(jax.jit, static_argnames=("blocks",))
def rsparse_gemv_triton(x, packed: PackedWeights, scale, tau, *, blocks: BlockSizes = BlockSizes()):
    """jax-triton R-Sparse GEMV. x [T ≤ 4, K], packed = `pack_weights(W, A, B, blocks)` -> y [T, N] (x's dtype)."""
    lowrank_down, sparse_gemv = _kernels()
    K, N, rp, w_cat, a, xp, T, tau_arr = _prepare_call(x, packed, scale, tau, blocks)
    tp = xp.shape[0]
    c = scale.astype(jnp.float32)
    bk, bn, br = blocks.block_k, blocks.block_n, blocks.block_r
    common = dict(num_warps=blocks.num_warps, num_stages=blocks.num_stages, zeroed_outputs=(0,))
    x_cat = xp.astype(jnp.float32)
    if rp:
        z = _call(xp, c, tau_arr, a, kernel=lowrank_down, out=jax.ShapeDtypeStruct((tp, rp), jnp.float32),
                  grid=(rp // br, K // bk), K=K, RP=rp, T=tp, BLOCK_K=bk, BLOCK_R=br, **common)
        x_cat = jnp.concatenate([x_cat, z], axis=1)
        c = jnp.concatenate([c, jnp.zeros((rp,), jnp.float32)])
    y = _call(x_cat, c, tau_arr, w_cat, kernel=sparse_gemv, out=jax.ShapeDtypeStruct((tp, N), jnp.float32),
              grid=(N // bn, (K + rp) // bk), D_IN=K, KC=K + rp, N=N, T=tp, BLOCK_K=bk, BLOCK_N=bn, **common)
    return y[:T].astype(x.dtype)
