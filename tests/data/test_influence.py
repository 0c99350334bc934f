"""MobileLLM-R1's influence machinery (Eq. 2 first order, TracIn over checkpoints, random projection, Eq. 7
co-evolution selection, App. B RankMe) against closed forms.

The model for the closed forms is multi-output least squares, ℓ(x, y; W, b) = ½|Wᵀx + b − y|², where every
gradient is analytic: ∇_W ℓ = x rᵀ, ∇_b ℓ = r with r = Wᵀx + b − y, so for a probe set P of m samples
    ∇L(P)·∇ℓ(x_i) = (1/m) Σ_j (x_j·x_i + 1)(r_j·r_i).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.data import mixture
from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.train.lm import next_token_loss

D, O = 5, 3  # input and output widths of the least-squares model


def ls_loss(params, sample):
    r = sample["x"] @ params["W"] + params["b"] - sample["y"]
    return 0.5 * jnp.sum(r * r)


def ls_loss_sum(params, batch):
    r = batch["x"] @ params["W"] + params["b"][None, :] - batch["y"]
    return 0.5 * jnp.sum(r * r), batch["x"].shape[0]


def _params(seed):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(D, O)).astype(np.float32), "b": rng.normal(size=O).astype(np.float32)}


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, D)).astype(np.float32), "y": rng.normal(size=(n, O)).astype(np.float32)}


def _residuals(params, data):
    return data["x"].astype(np.float64) @ params["W"] + params["b"] - data["y"]


def _closed_form_grads(params, data):
    """[n, d] in jax.tree.leaves order ("W" before "b"): (x rᵀ).ravel() then r."""
    r = _residuals(params, data)
    return np.concatenate([np.einsum("nd,no->ndo", data["x"], r).reshape(len(r), -1), r], axis=1)


def _closed_form_influence(params, train, probe):
    """(1/m) Σ_j (x_j·x_i + 1)(r_j·r_i): [n_train]."""
    r_i, r_j = _residuals(params, train), _residuals(params, probe)
    return np.mean((probe["x"] @ train["x"].T + 1.0) * (r_j @ r_i.T), axis=0)


def _batches(data, sizes):
    out, lo = [], 0
    for s in sizes:
        out.append({k: v[lo:lo + s] for k, v in data.items()})
        lo += s
    return out


def test_per_sample_gradients_equal_least_squares_closed_form():
    params, train = _params(0), _data(7, 1)
    got = mixture.sample_gradients(ls_loss, params, train, chunk=3)  # 7 = 3 + 3 + 1 (padded chunk)
    np.testing.assert_allclose(got, _closed_form_grads(params, train), rtol=1e-5, atol=1e-5)


def test_tracin_influence_over_checkpoints_equals_closed_form():
    """Σ_t η_t ∇L(P_c; θ_t)·∇ℓ(x_i; θ_t) for two probe sets and three checkpoints; the probe gradient is the
    mean over uneven probe batches (2 + 3 samples)."""
    train = _data(7, 1)
    probes = [_data(5, 2), _data(4, 3)]
    checkpoints, lrs = [_params(10 + t) for t in range(3)], [0.3, 0.2, 0.1]
    got = np.zeros((2, 7))
    want = np.zeros((2, 7))
    for params, lr in zip(checkpoints, lrs):
        g_CD = np.stack([mixture.mean_gradient(ls_loss_sum, params, _batches(p, [2, len(p["x"]) - 2]))
                         for p in probes])
        got += mixture.influence_scores(ls_loss, params, train, g_CD, lr=lr, chunk=4)
        want += lr * np.stack([_closed_form_influence(params, train, p) for p in probes])
    # float32 sums of O(10) terms of size O(1): ~1e-6 relative rounding; 1e-4 leaves room, a wrong term does not
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_influence_is_first_order_decrease_of_probe_loss_after_sgd_step_on_sample():
    """Independent of the closed form above: for the quadratic probe loss, one SGD step θ' = θ − η∇ℓ(x_i)
    changes it by exactly −η g_P·g_i + ½η² (1/m) Σ_j (x_j·x_i + 1)² |r_i|², so the influence (positive =
    helpful) must equal L_P(θ) − L_P(θ') plus that curvature term."""
    params, train, probe, eta = _params(0), _data(6, 1), _data(5, 2), 0.05
    g_P = mixture.mean_gradient(ls_loss_sum, params, [probe])
    got = mixture.influence_scores(ls_loss, params, train, g_P, lr=eta)[0]
    grads = _closed_form_grads(params, train)
    r_i = _residuals(params, train)

    def probe_loss(W, b):
        r = probe["x"].astype(np.float64) @ W + b - probe["y"]
        return 0.5 * np.mean(np.sum(r * r, axis=1))

    for i in range(len(got)):
        W = params["W"] - eta * grads[i, : D * O].reshape(D, O)
        b = params["b"] - eta * grads[i, D * O:]
        decrease = probe_loss(params["W"], params["b"]) - probe_loss(W, b)
        curvature = 0.5 * eta**2 * np.mean((probe["x"] @ train["x"][i] + 1.0) ** 2) * np.sum(r_i[i] ** 2)
        assert got[i] == pytest.approx(decrease + curvature, rel=1e-4, abs=1e-6)


def test_projected_influence_is_the_inner_product_of_sketched_gradients():
    params, train, probe = _params(0), _data(7, 1), _data(5, 2)
    k = 16
    sketch = mixture.gradient_sketch(params, k, jax.random.PRNGKey(3), "rademacher")
    R = np.concatenate([np.asarray(b, np.float64) for b in sketch])  # [d, k], leaf blocks in order
    g_P = mixture.mean_gradient(ls_loss_sum, params, [probe], sketch)
    got = mixture.influence_scores(ls_loss, params, train, g_P, sketch=sketch, chunk=4)[0]
    g_i = _closed_form_grads(params, train)
    g_p = np.mean(_closed_form_grads(params, probe), axis=0)
    np.testing.assert_allclose(got, (g_i @ R) @ (R.T @ g_p), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mixture.sample_gradients(ls_loss, params, train, sketch), g_i @ R, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("kind", mixture.SKETCHES)
def test_sketched_inner_product_is_unbiased_with_the_closed_form_variance(kind):
    """Over S independent sketches R (k = 4 columns), X = (Rᵀa)·(Rᵀb) has mean a·b and the variance of
    `gradient_sketch`'s docstring. Tolerances: 4 standard errors (two-sided p ≈ 6e-5 for a correct
    implementation), the mean's SE from the closed-form variance, the variance's SE estimated from the
    samples' (X − mean)². The vectors put most of their mass on one coordinate, so the Gaussian and Rademacher
    variances differ by far more than that tolerance: a sketch of the wrong kind, a wrong 1/√k scale or blocks
    misaligned with the leaves all fail."""
    a = {"W": jnp.asarray([[3.0, 0.5], [-0.4, 0.2], [0.1, 0.3]]), "b": jnp.asarray([0.2, -0.1])}
    b = {"W": jnp.asarray([[2.0, -0.3], [0.5, 0.1], [-0.2, 0.4]]), "b": jnp.asarray([0.3, 0.2])}
    k, S = 4, 20000

    def estimate(key):
        sketch = mixture.gradient_sketch(a, k, key, kind)
        return mixture.flatten_gradients(a, sketch) @ mixture.flatten_gradients(b, sketch)

    x = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.PRNGKey(0), S)), np.float64)
    fa, fb = (np.asarray(mixture.flatten_gradients(v), np.float64) for v in (a, b))
    dot = fa @ fb
    var_gauss = (dot**2 + (fa @ fa) * (fb @ fb)) / k
    var = var_gauss - (2 * np.sum(fa**2 * fb**2) / k if kind == "rademacher" else 0.0)
    assert abs(x.mean() - dot) < 4 * np.sqrt(var / S), (x.mean(), dot)
    se_var = np.std((x - x.mean()) ** 2) / np.sqrt(S)
    assert abs(x.var() - var) < 4 * se_var, (x.var(), var, se_var)
    assert abs(var_gauss - (var_gauss - 2 * np.sum(fa**2 * fb**2) / k)) > 10 * se_var  # the kinds are told apart


CFG = tfm.TransformerConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                            max_seq_len=16)


@dataclasses.dataclass(frozen=True)
class SequenceLoss:
    """Mean next-token loss of one sequence {tokens [L], loss_mask [L]} (hashable: one compilation)."""

    cfg: tfm.TransformerConfig

    def __call__(self, params, sample):
        return next_token_loss(Model(self.cfg), params, {k: v[None] for k, v in sample.items()})[0]


def test_per_sample_gradients_of_a_transformer_match_forward_mode_derivatives():
    """vmap(grad) on the nonlinear model: g_i·v equals the forward-mode derivative of ℓ(x_i; θ + εv) (jvp),
    sample by sample, masks and padding included."""
    rng = np.random.default_rng(0)  # numpy draws: no compilation per parameter shape
    shapes = jax.eval_shape(lambda key: tfm.init_params(CFG, key), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    tokens = rng.integers(1, CFG.vocab_size, size=(5, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < np.asarray([12, 9, 7, 12, 4])[:, None]).astype(np.float32)
    samples = {"tokens": tokens, "loss_mask": mask}
    loss = SequenceLoss(CFG)
    grads = mixture.sample_gradients(loss, params, samples, chunk=2)
    v = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    fv = np.asarray(mixture.flatten_gradients(v), np.float64)
    jvp = jax.jit(jax.vmap(lambda one: jax.jvp(lambda p: loss(p, one), (params,), (v,))[1]))(samples)
    np.testing.assert_allclose(grads @ fv, np.asarray(jvp), rtol=1e-4, atol=1e-5)


def test_joint_influence_then_eq6_weights_on_domain_model_influences():
    """Eqs. 5-6 end to end on constructed influences [capabilities, checkpoints, samples]: α ∝ t over T = 2
    checkpoints (1/3, 2/3) and uniform over C = 2 capabilities, then token-weighted ρ_g, clipped and normalised."""
    inf_CTN = np.asarray([[[1.0, 2.0, -3.0, 0.0], [4.0, 2.0, -3.0, 0.0]],
                          [[0.0, 1.0, -6.0, 3.0], [0.0, 1.0, 0.0, 3.0]]])
    joint = mixture.joint_influence(inf_CTN)
    want = 0.5 * (inf_CTN[0, 0] / 3 + inf_CTN[0, 1] * 2 / 3) + 0.5 * (inf_CTN[1, 0] / 3 + inf_CTN[1, 1] * 2 / 3)
    np.testing.assert_allclose(joint, want)
    lengths = np.asarray([10.0, 30.0, 20.0, 5.0])
    w = mixture.group_weights({"g": joint[:2], "bad": joint[2:3], "h": joint[3:]},
                              {"g": lengths[:2], "bad": lengths[2:3], "h": lengths[3:]},
                              {"g": 40.0, "bad": 20.0, "h": 5.0})
    rho_g, rho_h = (joint[0] * 10 + joint[1] * 30) / 40, joint[3]
    assert w == pytest.approx({"g": rho_g / (rho_g + rho_h), "bad": 0.0, "h": rho_h / (rho_g + rho_h)})


def test_coevolution_stage_keeps_positive_influence_and_reweights_over_the_pool():
    """Eq. 7: only I > 0 survives; Eq. 6 over the kept samples with N_g = the group's whole pool tokens."""
    influence = {"a": [0.5, -0.2, 0.1, 0.0], "b": [-1.0, -2.0], "c": [0.3]}
    lengths = {"a": [10, 20, 30, 40], "b": [5, 5], "c": [10]}
    keep, w = mixture.coevolution_stage(influence, lengths)
    assert {g: m.tolist() for g, m in keep.items()} == {"a": [True, False, True, False], "b": [False, False],
                                                      "c": [True]}
    rho_a, rho_c = (0.5 * 10 + 0.1 * 30) / 100, 0.3 * 10 / 10
    assert w == pytest.approx({"a": rho_a / (rho_a + rho_c), "b": 0.0, "c": rho_c / (rho_a + rho_c)})
    with pytest.raises(ValueError, match="no sample has positive influence"):
        mixture.coevolution_stage({"a": [0.0, -1.0]}, {"a": [3, 4]})


def _with_singular_values(sigma, n, d, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s = np.zeros((n, d))
    s[np.arange(len(sigma)), np.arange(len(sigma))] = sigma
    return u @ s @ v.T


def test_rankme_equals_entropy_of_normalised_singular_values():
    sigma = [4.0, 2.0, 1.0, 1.0]
    p = np.asarray(sigma) / 8.0
    want = np.exp(-np.sum(p * np.log(p)))  # exp(1.2130) = 3.3636; the fifth, zero σ adds only ε terms
    assert mixture.rankme(_with_singular_values(sigma, 7, 5)) == pytest.approx(want, rel=1e-5)
    assert mixture.rankme(_with_singular_values([3.0] * 4, 9, 6)) == pytest.approx(4.0, rel=1e-5)
    assert mixture.rankme(_with_singular_values([5.0], 6, 6)) == pytest.approx(1.0, rel=1e-5)
