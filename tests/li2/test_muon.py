"""Muon: Newton–Schulz with the reference's per-iteration coefficients, and the full update, vs numpy; the Li2
experiments' three optimizers as the reference builds them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.optim.muon import REFERENCE_NS_COEFFS, muon, muon_with_adam, newton_schulz
from tests.conftest import require_extra


def numpy_ns5(g):
    """Re-derivation of the reference's zeropower_via_newtonschulz5 (use_bf16=False) in float64."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for a, b, c in ((4.01, -9.22, 5.80), (3.49, -6.38, 3.23), (3.34, -6.21, 3.20), (3.64, -7.48, 4.43),
                    (3.46, -5.35, 2.85)):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (12, 12)])
def test_newton_schulz_matches_numpy(shape):
    g = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    out = jax.jit(newton_schulz)(jnp.asarray(g))
    np.testing.assert_allclose(out, numpy_ns5(g), rtol=2e-4, atol=2e-5)
    assert len(REFERENCE_NS_COEFFS) == 5 and REFERENCE_NS_COEFFS[0] == (4.01, -9.22, 5.80)
    # it approximately orthogonalises: singular values of the output near 1, unlike Keller Jordan's triple
    s = np.linalg.svd(np.asarray(out), compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.5


def test_muon_update_matches_reference_loop():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 10)).astype(np.float32)
    grads = [rng.normal(size=(6, 10)).astype(np.float32) for _ in range(4)]
    lr, wd, beta = 0.02, 0.1, 0.99
    tx = muon(lr, beta=beta, weight_decay=wd)
    p = jnp.asarray(w)
    st = tx.init(p)
    ref, mom = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g in grads:
        upd, st = tx.update(jnp.asarray(g), st, p)
        p = optax.apply_updates(p, upd)
        ref = ref * (1 - lr * wd)  # reference muon_update: decay first, lerp momentum, NS, step
        mom = mom + (1 - beta) * (g - mom)
        ref = ref - lr * numpy_ns5(mom)
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-5)


def test_muon_with_adam_routes_by_label():
    rng = np.random.default_rng(2)
    params = {"W": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32), "V": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    tx = muon_with_adam(lambda p: {"W": "muon", "V": "adam"}, 1e-2, weight_decay=0.1, adam_coupled_decay=True)
    upd, _ = tx.update(grads, tx.init(params), params)
    w_expected, _ = muon(1e-2, weight_decay=0.1).update(grads["W"], muon(1e-2, weight_decay=0.1).init(params["W"]), params["W"])
    adam = optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-2))
    v_expected, _ = adam.update(grads["V"], adam.init(params["V"]), params["V"])
    np.testing.assert_allclose(upd["W"], w_expected, rtol=1e-6)
    np.testing.assert_allclose(upd["V"], v_expected, rtol=1e-6)


def test_muon_rejects_non_matrices_and_bad_labels():
    with pytest.raises(ConfigError, match="matrices"):
        muon(1e-2).init({"bias": jnp.zeros(3)})
    tx = muon_with_adam(lambda p: {"W": "sgd"}, 1e-2)
    with pytest.raises(ConfigError, match="'sgd'"):
        tx.init({"W": jnp.zeros((2, 2))})


def test_li2_reference_optimizers_are_the_references_updates():
    """The three optimizers of the Li2 experiments (`build.LI2_OPTIMIZERS`): torch Adam's coupled L2 (checked
    against torch), AdamW, and Muon on W (beta 0.99, decoupled decay) with coupled-L2 Adam on V, one lr."""
    import dataclasses

    from jaxllm.optim import build

    rng = np.random.default_rng(3)
    params = {"W": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32),
              "V": jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)}
    grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]
    lr, wd = 1e-2, 0.1
    expected = {
        "adam": optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)),
        "adamw": optax.adamw(lr, weight_decay=wd),
        "muon": muon_with_adam(lambda p: {"W": "muon", "V": "adam"}, lr, beta=0.99, weight_decay=wd,
                               adam_coupled_decay=True),
    }
    assert set(build.LI2_OPTIMIZERS) == set(expected)
    for name, ref in expected.items():
        cfg = dataclasses.replace(build.LI2_OPTIMIZERS[name], learning_rate=lr, weight_decay=wd)
        tx = cfg.build(matrices=build.li2_matrices)
        p, q, s, t = params, params, tx.init(params), ref.init(params)
        for g in grads:
            u, s = tx.update(g, s, p)
            v, t = ref.update(g, t, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        for k in params:
            np.testing.assert_array_equal(np.asarray(p[k]), np.asarray(q[k]), err_msg=f"{name} {k}")


def test_adam_is_coupled_l2_like_torch():
    """AdamConfig (optax.chain(add_decayed_weights, adam)) equals torch Adam(weight_decay) for a few steps."""
    torch = require_extra("torch")
    from jaxllm.optim import build

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(5)]
    tx = build.AdamConfig(learning_rate=1e-2, weight_decay=0.1).build()
    p = {"W": jnp.asarray(w)}
    st = tx.init(p)
    tp = torch.nn.Parameter(torch.tensor(w))
    opt = torch.optim.Adam([tp], lr=1e-2, weight_decay=0.1)
    for g in grads:
        upd, st = tx.update({"W": jnp.asarray(g)}, st, p)
        p = jax.tree.map(jnp.add, p, upd)
        tp.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p["W"], tp.detach().numpy(), rtol=1e-5, atol=1e-6)
