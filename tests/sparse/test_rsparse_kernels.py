"""R-Sparse GEMV kernels vs the plain-jnp reference: Pallas (interpret mode on CPU, compiled on GPU), the jnp
gather fallback, and jax-triton (GPU only)."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import rsparse_gemv as rk

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TOL = {"float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}  # relative to max |y|
BLOCKS = rk.BlockSizes(block_k=32, block_n=32, block_r=16)


def _case(tokens, d_in, d_out, rank, drop, dtype, seed=0):
    """Random layer and inputs with τ set so that `drop` of the (token, channel) scores fall below it."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    x = rng.normal(size=(tokens, d_in))
    scale = np.linalg.norm(w, axis=1)
    tau = float(np.quantile(np.abs(x * scale[None, :]), drop))
    a = b = None
    if rank:
        p, s, qt = np.linalg.svd(w, full_matrices=False)
        a, b = jnp.asarray(p[:, :rank] * s[None, :rank], dtype), jnp.asarray(qt[:rank], dtype)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(scale, jnp.float32), jnp.float32(tau), a, b


def _close(y, ref, dtype_name):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= TOL[dtype_name], f"relative max error {err:.2e} > {TOL[dtype_name]}"
    return err


CASES = [  # (dtype, tokens, d_in, d_out, rank, drop)
    ("float32", 1, 64, 32, 12, 0.5),
    ("bfloat16", 3, 64, 64, 20, 0.7),
    ("float16", 2, 96, 32, 8, 0.3),
    ("float32", 4, 64, 32, 0, 0.6),  # α = 1: no low-rank path
]


@pytest.mark.parametrize("dtype_name,tokens,d_in,d_out,rank,drop", CASES)
def test_pallas_kernel_interpret_matches_reference(dtype_name, tokens, d_in, d_out, rank, drop):
    x, w, scale, tau, a, b = _case(tokens, d_in, d_out, rank, drop, DTYPES[dtype_name])
    y = rk.rsparse_gemv(x, w, scale, tau, a, b, blocks=BLOCKS, interpret=True)
    assert y.shape == (tokens, d_out) and y.dtype == x.dtype
    _close(y, rk.rsparse_gemv_reference(x, w, scale, tau, a, b), dtype_name)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("drop", [0.4, 0.7])
def test_gather_fallback_matches_reference(dtype_name, drop):
    x, w, scale, tau, a, b = _case(2, 64, 48, 10, drop, DTYPES[dtype_name], seed=3)
    ref = rk.rsparse_gemv_reference(x, w, scale, tau, a, b)
    _close(rk.rsparse_gemv_gather(x, w, scale, tau, a, b, max_kept=64), ref, dtype_name)
    kept = int(np.any(np.abs(np.asarray(x, np.float32) * np.asarray(scale)[None]) > float(tau), axis=0).sum())
    _close(rk.rsparse_gemv_gather(x, w, scale, tau, a, b, max_kept=kept), ref, dtype_name)


def test_reference_equals_dense_at_full_rank_and_teal_form():
    x, w, scale, tau, a, b = _case(2, 32, 16, 16, 0.5, jnp.float32)
    np.testing.assert_allclose(np.asarray(rk.rsparse_gemv_reference(x, w, scale, tau, a, b)),
                               np.asarray(x @ w), atol=1e-5)
    ones = jnp.ones_like(scale)
    np.testing.assert_allclose(np.asarray(rk.rsparse_gemv_reference(x, w, ones, tau)),
                               np.asarray(rk.teal_gemv_reference(x, w, tau)), atol=1e-6)


@pytest.mark.parametrize("blocks,tokens,msg", [
    (rk.BlockSizes(block_k=48), 1, "block_k=48 must be a positive power of two"),
    (rk.BlockSizes(block_k=128, block_n=32, block_r=16), 1, "d_in=64 is not a multiple of block_k=128"),
    (rk.BlockSizes(block_k=32, block_n=64, block_r=16), 1, "d_out=32 is not a multiple of block_n=64"),
    (BLOCKS, 5, "1..4 tokens"),
])
def test_bad_blocks_and_batches_raise_value_error(blocks, tokens, msg):
    x, w, scale, tau, _, _ = _case(tokens, 64, 32, 0, 0.5, jnp.float32)
    with pytest.raises(ValueError, match=msg):
        rk.rsparse_gemv(x, w, scale, tau, blocks=blocks, interpret=True)


def _has_gpu():
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


GPU_CASES = [(dt, t, 2048, n, r, d) for dt in DTYPES for t, n, r, d in [(1, 2048, 205, 0.5), (4, 8192, 0, 0.6)]]


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU (the Pallas Triton lowering is GPU-only)")
@pytest.mark.parametrize("dtype_name,tokens,d_in,d_out,rank,drop", GPU_CASES)
def test_pallas_kernel_on_gpu_matches_reference(dtype_name, tokens, d_in, d_out, rank, drop):
    x, w, scale, tau, a, b = _case(tokens, d_in, d_out, rank, drop, DTYPES[dtype_name])
    blocks = rk.BlockSizes()
    y = rk.rsparse_gemv_packed(x, rk.pack_weights(w, a, b, blocks), scale, tau, blocks=blocks)
    print(f"pallas {dtype_name} T={tokens} {d_in}x{d_out} r={rank}: rel err "
          f"{_close(y, rk.rsparse_gemv_reference(x, w, scale, tau, a, b), dtype_name):.2e}")


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU (Triton kernels)")
@pytest.mark.skipif(importlib.util.find_spec("jax_triton") is None, reason="jax-triton is not installed")
@pytest.mark.parametrize("dtype_name,tokens,d_in,d_out,rank,drop", GPU_CASES)
def test_jax_triton_kernel_matches_reference(dtype_name, tokens, d_in, d_out, rank, drop):
    from pallas_kernels.rsparse_triton import rsparse_gemv_triton

    x, w, scale, tau, a, b = _case(tokens, d_in, d_out, rank, drop, DTYPES[dtype_name])
    blocks = rk.BlockSizes()
    y = rsparse_gemv_triton(x, rk.pack_weights(w, a, b, blocks), scale, tau, blocks=blocks)
    print(f"jax-triton {dtype_name} T={tokens} {d_in}x{d_out} r={rank}: rel err "
          f"{_close(y, rk.rsparse_gemv_reference(x, w, scale, tau, a, b), dtype_name):.2e}")


def test_gather_overflow_channels_take_the_low_rank_path():
    # with full-rank factors the low-rank path is exact, so capping the kept rows must not change y = xW
    x, w, scale, tau, a, b = _case(2, 64, 48, 48, 0.3, jnp.float32, seed=5)
    y = rk.rsparse_gemv_gather(x, w, scale, tau, a, b, max_kept=8)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w), atol=2e-5)
