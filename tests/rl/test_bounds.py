"""SPG's per-sequence bounds against closed forms, exact enumeration and the reference's probability-space code.

Oracles: SPG App. E (length-2 sequences over {A, B}); exact enumeration of a tabular any-order model
(tests/rl/toy.py, float64) for the ELBO, the EUBO of SPG Corollary 1 and the any-order likelihood log π_AO;
a torch re-derivation of `SPGTrainer._get_per_seq_logps` / `compute_loss` (softmax, p^β, mean, log).
The library computes an exact expectation when given every mask pattern as a "draw" with weight
K·E_t[w(t) q_t(M)] (K patterns): `sequence_bounds` then averages over patterns exactly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxllm import diffusion
from jaxllm.rl import losses
from tests.rl import toy

MODEL = toy.TableModel(length=4, vocab=3)
MASK = MODEL.mask_id
PROMPT = 1
ANSWER = [1, 2, 3]
SEQS = np.array([[0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2]], np.int32)


def exact_library_bounds(model, table, seqs, answer, beta, eps=0.0):
    """The library's ELBO / EUBO (unnormalised) with all mask patterns of `answer` as weighted draws."""
    masks, sizes = toy.all_patterns(answer, model.length)
    K, B = len(masks), len(seqs)
    weight = np.array([K * toy.mask_pattern_weight(int(k), len(answer), eps) for k in sizes], np.float32)
    masked = jnp.asarray(np.broadcast_to(masks[:, None], (K, B, model.length)))
    batch = {"tokens": jnp.asarray(seqs)}
    logp = losses.masked_token_logps(model, jnp.asarray(table, jnp.float32), batch, masked, model.mask_id)
    lo, hi = answer[0], answer[-1] + 1
    b = losses.sequence_bounds(logp[..., lo:hi], masked[..., lo:hi], jnp.broadcast_to(jnp.asarray(weight)[:, None], (K, B)),
                               jnp.full((B,), len(answer)), beta=beta, length_normalise=False)
    return np.asarray(b.elbo, np.float64), np.asarray(b.eubo, np.float64)


# ---- SPG App. E: length 2 over {A, B}, x = AA ----------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_app_e_closed_forms_of_elbo_and_eubo(beta):
    """ELBO(x) = ½(log a + log b) + ½(log c + log d), EUBO(x) = Σ_tokens (1/β) log((a^β + b^β)/2) with
    a = π(x1=A | MA), b = π(x1=A | MM), c = π(x2=A | AM), d = π(x2=A | MM) (SPG App. E.3), through the model."""
    model = toy.TableModel(length=2, vocab=2)
    table = toy.random_table(model, seed=3)
    lp = toy.log_softmax(table)
    x = np.array([[0, 0]], np.int32)
    a, b = (math.exp(toy.cond_logp(model, lp, x[0], M, 0)) for M in ([0], [0, 1]))
    c, d = (math.exp(toy.cond_logp(model, lp, x[0], M, 1)) for M in ([1], [0, 1]))
    elbo, eubo = exact_library_bounds(model, table, x, [0, 1], beta)
    np.testing.assert_allclose(elbo, 0.5 * (math.log(a) + math.log(b)) + 0.5 * (math.log(c) + math.log(d)), rtol=1e-5)
    want = math.log((a ** beta + b ** beta) / 2) / beta + math.log((c ** beta + d ** beta) / 2) / beta
    np.testing.assert_allclose(eubo, want, rtol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 1.5, 3.0])
def test_app_e_gradients(beta):
    """∂EUBO/∂a = a^(β−1)/(a^β + b^β) and ∂ELBO/∂a = 1/(2a) for the first token (SPG App. E.3): the EUBO moves
    the larger probability most (ratio (a/b)^(β−1)), the ELBO the smaller one (ratio b/a)."""
    # draws: {x1 masked, x2 visible} -> a; {x2 masked} -> x1 not in the bound; {both masked} -> b; weight 3·½ each
    mask = jnp.array([[[True]], [[False]], [[True]]])
    weight = jnp.full((3, 1), 1.5)

    def bounds(ab):
        logp = jnp.log(jnp.stack([ab[0], 0.5, ab[1]]))[:, None, None]
        out = losses.sequence_bounds(logp, mask, weight, jnp.ones((1,)), beta=beta, length_normalise=False)
        return out.elbo[0], out.eubo[0]

    ab = jnp.array([0.7, 0.2])
    g_elbo = jax.grad(lambda v: bounds(v)[0])(ab)
    g_eubo = jax.grad(lambda v: bounds(v)[1])(ab)
    a, b = 0.7, 0.2
    np.testing.assert_allclose(g_elbo, [1 / (2 * a), 1 / (2 * b)], rtol=1e-5)
    np.testing.assert_allclose(g_eubo, [a ** (beta - 1) / (a ** beta + b ** beta), b ** (beta - 1) / (a ** beta + b ** beta)],
                               rtol=1e-5)
    np.testing.assert_allclose(bounds(ab)[1], math.log((a ** beta + b ** beta) / 2) / beta, rtol=1e-6)


# ---- exact enumeration: ELBO ≤ log π ≤ EUBO --------------------------------------------------------------------

ALL_SEQS = np.array([[0, *rest] for rest in np.ndindex(3, 3, 3)] + [[2, *rest] for rest in np.ndindex(3, 3, 3)],
                    np.int32)


@pytest.fixture(scope="module")
def random_model():
    table = toy.random_table(MODEL, seed=0)
    lp = toy.log_softmax(table)
    ao = np.array([toy.any_order_loglik(MODEL, lp, x, ANSWER) for x in ALL_SEQS])
    return table, lp, ao


def test_library_exact_bounds_equal_enumeration(random_model):
    """The library's estimator over all mask patterns is the exact ELBO / EUBO (float32 vs float64: 1e-5)."""
    table, lp, _ = random_model
    elbo, eubo = exact_library_bounds(MODEL, table, ALL_SEQS, ANSWER, beta=1.5)
    np.testing.assert_allclose(elbo, [toy.exact_elbo(MODEL, lp, x, ANSWER) for x in ALL_SEQS], rtol=1e-5)
    np.testing.assert_allclose(eubo, [toy.exact_eubo(MODEL, lp, x, ANSWER, 1.5) for x in ALL_SEQS], rtol=1e-5)


def test_sandwich_elbo_loglik_eubo_for_any_model_when_beta_at_least_length(random_model):
    """For an arbitrary (inconsistent) model, ELBO ≤ log π_AO ≤ EUBO_β per sequence once β ≥ n (= 3 tokens):
    SPG Theorem 1 with the constant C = 0 (Hölder); the mixture lies between the two bounds."""
    table, _, ao = random_model
    for beta in (3.0, 4.0):
        elbo, eubo = exact_library_bounds(MODEL, table, ALL_SEQS, ANSWER, beta=beta)
        assert np.all(elbo <= ao + 1e-4), np.max(elbo - ao)
        assert np.all(ao <= eubo + 1e-4), np.max(ao - eubo)
        for omega in (0.25, 0.5, 0.75):
            mix = omega * eubo + (1 - omega) * elbo
            assert np.all((elbo <= mix) & (mix <= eubo))
    assert np.max(ao - elbo) > 0.05, "the ELBO gap is visible for this model"


def test_constant_free_eubo_needs_beta_at_least_length_for_inconsistent_models(random_model):
    """SPG's Corollary 1 drops the θ-independent constant C(T) of Theorem 1, which vanishes only for β ≥ n:
    with β = 1 < n = 3 the constant-free EUBO falls below log π_AO for some sequences of this model (so the
    'upper bound' is one up to a constant; its gradient is unaffected)."""
    table, _, ao = random_model
    _, eubo = exact_library_bounds(MODEL, table, ALL_SEQS, ANSWER, beta=1.0)
    assert np.min(eubo - ao) < -0.05


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_sandwich_for_a_consistent_model_for_every_beta_at_least_one(beta):
    """When every conditional comes from one joint p, log π_AO = log p = ELBO ≤ EUBO_β for all β ≥ 1."""
    table, joint = toy.consistent_table(MODEL, seed=1)
    lp = toy.log_softmax(table)
    seqs = ALL_SEQS[::3]
    true = np.array([math.log(joint[tuple(x)] / joint[x[0]].sum()) for x in seqs])
    np.testing.assert_allclose([toy.any_order_loglik(MODEL, lp, x, ANSWER) for x in seqs], true, atol=1e-9)
    elbo, eubo = exact_library_bounds(MODEL, table, seqs, ANSWER, beta=beta)
    np.testing.assert_allclose(elbo, true, atol=2e-4)
    assert np.all(true <= eubo + 1e-4)
    assert np.mean(eubo - true) > 1e-3, "strictly above on average"


# ---- Monte Carlo convergence as m grows ------------------------------------------------------------------------

M_GRID = (8, 64, 512)
R = 256  # replicates


def _mc_table(params, tokens_BL, masked_NL, loss_mask_NG, weight_N, length_B, beta, length_normalise):
    """Bounds of R replicates at each m of M_GRID (nested prefixes of one set of draws): [R, len(M_GRID), 2, B].

    masked_NL etc. hold N = R·m_max·B independent draws, row (r·m_max + τ)·B + b being draw τ of row b in
    replicate r (drawn by one call of the library's mask function on a tiled batch, so it compiles once).
    """
    B, L = tokens_BL.shape
    m_max = M_GRID[-1]
    tiled = {"tokens": jnp.tile(tokens_BL, (R * m_max, 1))}
    logp = losses.masked_token_logps(MODEL, params, tiled, masked_NL[None], MASK)[0]
    shape = (R, m_max, B)
    logp = logp[:, PROMPT:].reshape(shape + (-1,))
    loss_mask, weight = loss_mask_NG.reshape(shape + (-1,)), weight_N.reshape(shape)

    def per_replicate(lp, lm, w):
        out = []
        for m in M_GRID:
            b = losses.sequence_bounds(lp[:m], lm[:m], w[:m], length_B, beta=beta, length_normalise=length_normalise)
            out.append(jnp.stack([b.elbo, b.eubo]))
        return jnp.stack(out)

    return np.asarray(jax.jit(jax.vmap(per_replicate))(logp, loss_mask, weight), np.float64)


def _assert_mc_converges(samples, exact_elbo, exact_eubo):
    """ELBO: unbiased at every m (|z| < 4.5). EUBO: the plug-in log-of-mean is biased low (Jensen) by O(1/m):
    at m = 8 never significantly above its limit and visibly below it for some row; at m = 512 within 0.05
    nats, with the bias cut at least 8× from m = 8 (1/m predicts 64×) unless it is already within noise."""
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    for j in range(len(M_GRID)):
        z = np.abs(mean[j, 0] - exact_elbo) / se[j, 0]
        assert np.all(z < 4.5), f"ELBO at m={M_GRID[j]}: mean {mean[j, 0]} vs exact {exact_elbo} (z={z})"
    bias = mean[:, 1] - exact_eubo  # [len(M_GRID), B]
    assert np.all(bias[0] < 4.5 * se[0, 1]) and np.max(-bias[0]) > 0.1, f"EUBO bias at m=8: {bias[0]}"
    assert np.all(np.abs(bias[-1]) < 0.05), f"EUBO bias at m={M_GRID[-1]}: {bias[-1]}"
    shrunk = (8 * np.abs(bias[-1]) < np.abs(bias[0])) | (np.abs(bias[-1]) < 4.5 * se[-1, 1])
    assert np.all(shrunk), f"EUBO bias by m: {bias}, se {se[:, 1]}"


def test_random_t_estimators_converge_to_exact_elbo_and_eubo(random_model):
    """Random-t masks (t ~ U, w = 1/p): the library's MC ELBO / EUBO converge to the exact eq. 2 / eq. 7 values."""
    table, lp, _ = random_model
    eps, beta = 1e-3, 1.5
    N = R * M_GRID[-1] * len(SEQS)
    tokens = jnp.tile(jnp.asarray(SEQS), (N // len(SEQS), 1))
    answer = jnp.broadcast_to(jnp.arange(MODEL.length) >= PROMPT, tokens.shape)
    mb = jax.jit(lambda k, x, a: diffusion.forward_mask(k, x, MASK, maskable_BL=a, eps=eps))(
        jax.random.PRNGKey(7), tokens, answer)  # arrays as arguments: no constant folding of 400k rows
    samples = _mc_table(jnp.asarray(table, jnp.float32), jnp.asarray(SEQS), mb.masked, mb.masked[:, PROMPT:],
                        1.0 / mb.p_mask, jnp.full((3,), 3), beta, length_normalise=False)
    exact_elbo = np.array([toy.exact_elbo(MODEL, lp, x, ANSWER, eps) for x in SEQS])
    exact_eubo = np.array([toy.exact_eubo(MODEL, lp, x, ANSWER, beta, eps) for x in SEQS])
    _assert_mc_converges(samples, exact_elbo, exact_eubo)


@pytest.mark.parametrize("block_length", [1, 3])
def test_block_estimators_converge_to_exact_limits(random_model, block_length):
    """SPG's block-wise masks (1/t̂ weights, length-normalised, prompt and clean blocks perturbed w.p. 0.15),
    rows with 3, 1 and 2 completion tokens in blocks of 1 (clean earlier blocks) and of 3 (one block: a uniform
    n ~ U{1..ml} subset of it masked): the estimators converge to their enumerated limits."""
    table, lp, _ = random_model
    beta, p_clean = 1.5, 0.15
    comp = np.array([[True, True, True], [True, False, False], [True, True, False]])
    N = R * M_GRID[-1] * len(SEQS)
    # i.i.d. draws: one draw (m = 1) per tiled row (a single row's m draws would use distinct blocks, m ≤ blocks)
    comp_N = jnp.tile(jnp.asarray(comp), (N // len(SEQS), 1))
    bm = jax.jit(lambda k, c: diffusion.block_random_masks(k, PROMPT, c, block_length=block_length, num_samples=1,
                                                           p_mask_clean=p_clean))(jax.random.PRNGKey(7), comp_N)
    samples = _mc_table(jnp.asarray(table, jnp.float32), jnp.asarray(SEQS), bm.masked[0], bm.loss_mask[0],
                        1.0 / bm.t_hat[0], jnp.asarray(comp.sum(1)), beta, length_normalise=True)
    limits = np.array([toy.block_limits(MODEL, lp, x, int(c.sum()), PROMPT, block_length, p_clean, beta)
                       for x, c in zip(SEQS, comp)])
    _assert_mc_converges(samples, limits[:, 0], limits[:, 1])


# ---- log space vs the reference's probability space ------------------------------------------------------------

def torch_reference_spg(logits_BmGV, targets_BG, perturb_BmG, completion_BG, advantages_B, beta, omega, mode):
    """SPGTrainer._get_per_seq_logps + compute_loss re-derived in torch (one device = one group)."""
    logits = torch.tensor(np.asarray(logits_BmGV), requires_grad=True)
    B, m, G, V = logits.shape
    tgt = torch.tensor(np.asarray(targets_BG), dtype=torch.long)[:, None, :].expand(B, m, G)
    logp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
    prob = torch.softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
    cm = torch.tensor(np.asarray(completion_BG), dtype=torch.float32)[:, None, :].expand(B, m, G)
    pm = torch.tensor(np.asarray(perturb_BmG), dtype=torch.float32)
    den = (cm * pm).sum(-1).clamp(min=1e-8)
    per_draw = (logp * cm * pm).sum(-1) / den
    t_hat = (cm * pm).sum(-1) / cm.sum(-1)
    avg = (prob.pow(beta) * pm * cm / t_hat[..., None].clamp(min=1e-8)).mean(1)  # [B, G]
    keep = avg > 0
    dezero = torch.where(keep, avg, torch.ones_like(avg))
    eubo = (dezero.log() * keep).sum(-1) / keep.sum(-1).clamp(min=1e-8) / beta
    elbo = per_draw.mean(1)
    neg = {"eubo": eubo, "mix": omega * eubo + (1 - omega) * elbo, "elbo": elbo}[mode]
    adv = torch.tensor(np.asarray(advantages_B), dtype=torch.float32)
    seq = torch.where(adv > 0, elbo, neg)
    length = cm[:, 0].sum(-1)
    loss = (-adv * seq * length).sum() / length.sum()
    loss.backward()
    return {"elbo": elbo.detach().numpy(), "eubo": eubo.detach().numpy(), "loss": loss.item(),
            "grad": logits.grad.numpy()}


def _random_group(seed, B=6, P=3, G=8, V=11, scale=2.0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V - 1, size=(B, P + G)).astype(np.int32)
    lengths = rng.integers(1, G + 1, size=B)
    comp = np.arange(G)[None] < lengths[:, None]
    adv = rng.normal(size=B).astype(np.float32)
    adv -= adv.mean()
    m = 2
    logits = (rng.normal(size=(m * B, P + G, V)) * scale).astype(np.float32)  # rows copy-major: τ·B + b
    return tokens, comp, adv, logits


@pytest.mark.parametrize("loss_name,mode", [("spg_mix", "mix"), ("spg_eubo", "eubo"), ("spg_elbo", "elbo")])
def test_log_space_spg_equals_reference_probability_form(loss_name, mode):
    """On random logits and SPG's own block masks, the per-sequence ELBO / EUBO, the loss and its gradient with
    respect to the logits equal the reference's probability-space code (fp32 both sides: rtol 1e-5 on values;
    gradients atol 1e-6, their magnitude ~1e-2)."""
    tokens, comp, adv, logits = _random_group(0)
    B, G = comp.shape
    P = tokens.shape[1] - G
    cfg = losses.RLLossConfig(mask_id=10, loss=loss_name, group_size=B, beta=1.5, omega=0.5, num_mask_draws=2,
                              block_length=4)
    batch = {"tokens": jnp.asarray(tokens), "completion_mask": jnp.asarray(comp), "advantages": jnp.asarray(adv)}
    key = jax.random.PRNGKey(5)
    model = toy.ConstModel()
    bounds, _ = losses.spg_bounds(model, jnp.asarray(logits), batch, key, cfg)
    loss_fn = losses.make_loss(model, cfg)
    (loss, _), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logits), batch, key)
    bm = diffusion.block_random_masks(key, P, jnp.asarray(comp), block_length=4, num_samples=2, p_mask_clean=0.15)
    m = 2
    per_copy = logits.reshape(m, B, P + G, -1)[:, :, P:]  # [m, B, G, V]
    ref = torch_reference_spg(per_copy.transpose(1, 0, 2, 3), tokens[:, P:],
                              np.asarray(bm.masked)[..., P:].transpose(1, 0, 2), comp, adv, 1.5, 0.5, mode)
    np.testing.assert_allclose(np.asarray(bounds.elbo), ref["elbo"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bounds.eubo), ref["eubo"], rtol=1e-5)
    np.testing.assert_allclose(float(loss), ref["loss"], rtol=1e-5)
    grad_copy = np.asarray(grad).reshape(m, B, P + G, -1)
    np.testing.assert_allclose(grad_copy[:, :, P:].transpose(1, 0, 2, 3), ref["grad"], atol=1e-6)
    assert np.all(grad_copy[:, :, :P] == 0), "prompt logits do not enter the bound"
    assert np.abs(ref["grad"]).max() > 1e-3


def test_log_space_eubo_stays_exact_where_probability_form_underflows():
    """A token with log π = −80 under β = 1.5: π^β = e^−120 underflows fp32 (smallest subnormal ≈ e^−103). The
    naive log(mean(p^β)) is −inf, the reference's de-zeroing silently drops the token; the log-space EUBO
    equals its float64 value (rtol 1e-5) with a finite gradient."""
    G, V, beta = 4, 5, 1.5
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, G, V)).astype(np.float32)  # [m, G, V], one sequence
    targets = np.array([0, 1, 2, 3])
    logits[:, 2, :] = 0.0
    logits[:, 2, 2] = -80.0  # log π(x_2) ≈ −80 − log 4 in both draws
    mask = np.array([[True, True, True, False], [False, True, True, True]])
    t_hat = mask.sum(1) / G

    def ours(lg):
        logp = diffusion.token_log_probs(lg, jnp.broadcast_to(jnp.asarray(targets), (2, G)))[:, None]
        return losses.sequence_bounds(logp, jnp.asarray(mask)[:, None], jnp.asarray(1.0 / t_hat)[:, None],
                                      jnp.array([G]), beta=beta).eubo[0]

    value, grad = jax.value_and_grad(ours)(jnp.asarray(logits))
    lp64 = toy.log_softmax(logits.astype(np.float64))[np.arange(2)[:, None], np.arange(G)[None], targets[None]]
    s = [np.log(np.mean([mask[t, i] * np.exp(beta * lp64[t, i]) / t_hat[t] for t in range(2)])) for i in range(G)]
    want = np.sum(s) / beta / G
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)[:, 2]).max() > 1e-3

    prob = torch.softmax(torch.tensor(logits), -1)[torch.arange(2)[:, None], torch.arange(G)[None], torch.tensor(targets)[None]]
    avg = (prob.pow(beta) * torch.tensor(mask) / torch.tensor(t_hat, dtype=torch.float32)[:, None]).mean(0)
    assert avg[2].item() == 0.0, "fp32 underflow in the probability form"
    assert torch.log(avg).sum().item() == -math.inf
    keep = avg > 0
    ref = ((torch.where(keep, avg, torch.ones_like(avg)).log() * keep).sum() / keep.sum() / beta).item()
    dropped = np.sum([s[i] for i in (0, 1, 3)]) / beta / 3
    np.testing.assert_allclose(ref, dropped, rtol=1e-5)  # the reference's value: token 2 left out
    assert want < ref - 10, "dropping the underflowed token moves the bound by tens of nats"
