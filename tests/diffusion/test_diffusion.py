"""Masked diffusion maths against exact enumeration on an enumerable toy model.

The toy model is a lookup table: logits depend on the whole (partly masked) input sequence, vocabulary
{0, 1, 2} plus the mask token 3, length 4. Every mask, every order and every sequence is enumerated in numpy
(float64), so the exact expectation of each Monte Carlo estimator is known. Tolerance for "converges": the
MC mean over R independent replicates lies within 4.5 standard errors of the exact value (a false alarm
probability below 1e-5 per check), and the standard error is itself small (checked), so a biased estimator
fails.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import diffusion
from jaxllm.models import Model, get_preset, init_params, left_padding_layout
from tests.rl import toy as enum_toy

V, MASK, L = 3, 3, 4
N_IN = (V + 1) ** L


def _index(tokens):
    return sum(tokens[..., i] * (V + 1) ** i for i in range(L))


def table_logits(table, tokens_BL, *, attention_mask=None, positions=None):
    """The toy model (a hashable function): params = a table [N_IN, L, V+1] of logits indexed by the full input."""
    return table[_index(tokens_BL.astype(jnp.int32))]


def table_params(table):
    return jnp.asarray(table, jnp.float32)


def _logp_table(table):
    x = np.asarray(table, np.float64)
    return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(-1, keepdims=True)


def masked_sum(logp, x, M):
    """Σ_{i∈M} log p(x_i | x with M masked) for the table model (numpy, float64)."""
    z = np.array(x)
    z[list(M)] = MASK
    idx = int(_index(z))
    return sum(logp[idx, i, x[i]] for i in M)


def subsets(A):
    for k in range(1, len(A) + 1):
        yield from itertools.combinations(A, k)


def exact_elbo(logp, x, A):
    """Σ_{M⊆A} S(M) / (|M| C(n,|M|)): the t~U(0,1) ELBO (also the stratified estimator's mean)."""
    n = len(A)
    return sum(masked_sum(logp, x, M) / (len(M) * math.comb(n, len(M))) for M in subsets(A))


def exact_random_t(logp, x, A, eps):
    """E_t Σ_M p^k (1-p)^(n-k) S(M) / p with p = (1-eps) t + eps uniform on [eps, 1]."""
    n = len(A)
    total = 0.0
    for M in subsets(A):
        k = len(M)
        poly = np.polynomial.Polynomial([1.0]) * np.polynomial.Polynomial([0, 1]) ** (k - 1) \
            * np.polynomial.Polynomial([1, -1]) ** (n - k)
        integ = poly.integ()
        total += masked_sum(logp, x, M) * (integ(1.0) - integ(eps)) / (1 - eps)
    return total


def any_order_loglik(logp, x, A):
    """log p_AO(x_A | x_rest) = log E_σ Π_k p(x_σk | x_σ<k revealed, rest of A masked): the exact likelihood of
    the any-order sampler that unmasks one uniformly random position at a time."""
    probs = []
    for order in itertools.permutations(A):
        z = np.array(x)
        z[list(A)] = MASK
        lp = 0.0
        for i in order:
            lp += logp[int(_index(z)), i, x[i]]
            z[i] = x[i]
        probs.append(np.exp(lp))
    return float(np.log(np.mean(probs)))


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(N_IN, L, V + 1)) * 1.5
    return table, _logp_table(table)


def _replicates(estimate, R=1024):
    """R independent replicates of estimate(key) -> [B] (vmapped, jitted)."""
    keys = jax.random.split(jax.random.PRNGKey(1), R)
    return np.asarray(jax.jit(jax.vmap(estimate))(keys), np.float64)  # [R, B]


def _assert_converges(samples_RB, exact_B, max_se):
    mean = samples_RB.mean(0)
    se = samples_RB.std(0, ddof=1) / np.sqrt(samples_RB.shape[0])
    assert np.all(se < max_se), f"standard errors too large to test: {se}"
    z = np.abs(mean - exact_B) / se
    assert np.all(z < 4.5), f"MC mean {mean} vs exact {exact_B} (z={z})"


SEQS = np.array([[0, 1, 2, 0], [2, 2, 1, 0], [1, 0, 0, 2]], np.int32)
ANSWER = np.array([False, True, True, True])  # position 0 is the prompt


def test_stratified_estimator_converges_to_exact_elbo(toy):
    table, logp = toy
    tp = table_params(table)
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    samples = _replicates(lambda k: diffusion.elbo_stratified(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 8))
    exact = np.array([exact_elbo(logp, x, [1, 2, 3]) for x in SEQS])
    _assert_converges(samples, exact, max_se=0.05)


@pytest.mark.parametrize("antithetic", [False, True])
def test_random_t_estimator_converges_to_exact_expectation(toy, antithetic):
    table, logp = toy
    tp = table_params(table)
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    eps = 0.05
    samples = _replicates(lambda k: diffusion.elbo_random_t(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 8, eps=eps,
                                                            antithetic=antithetic))
    exact = np.array([exact_random_t(logp, x, [1, 2, 3], eps) for x in SEQS])
    _assert_converges(samples, exact, max_se=0.15)
    # with eps -> 0 the random-t expectation is the ELBO itself
    np.testing.assert_allclose([exact_random_t(logp, x, [1, 2, 3], 0.0) for x in SEQS],
                               [exact_elbo(logp, x, [1, 2, 3]) for x in SEQS], rtol=1e-9)


def test_stratified_has_lower_variance_than_random_t(toy):
    table, logp = toy
    tp = table_params(table)
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    s = _replicates(lambda k: diffusion.elbo_stratified(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 4), R=256)
    r = _replicates(lambda k: diffusion.elbo_random_t(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 4, eps=1e-3), R=256)
    assert np.all(s.var(0) < r.var(0))


def test_pretrain_loss_expectation_is_minus_eps_elbo(toy):
    table, logp = toy
    tp = table_params(table)
    eps = 0.05
    samples = _replicates(lambda k: diffusion.pretrain_loss(table_logits, tp, k, jnp.asarray(SEQS), MASK, eps)[0][None], R=1024)
    exact = -np.mean([exact_random_t(logp, x, [0, 1, 2, 3], eps) for x in SEQS]) / L
    _assert_converges(samples, np.array([exact]), max_se=0.1)


def _block_exact(logp, x, comp_len, prompt_len, block_length, p_clean, length=L):
    """Exact expectation of one draw of SPG's block-wise ELBO (elbo_block with m = 1) by enumeration of every
    outcome of `block_random_masks` (tests/rl/toy.py `block_draws`, shared with the RL bound tests)."""
    model = enum_toy.TableModel(length=length, vocab=V)  # the same table indexing as `table_logits` at length 4
    return enum_toy.block_limits(model, logp, x, comp_len, prompt_len, block_length, p_clean, beta=1.0)[0]


# (sequence length, block length, completion lengths per row): prompt 1, completion L - 1 tokens. Blocks of 2-4
# tokens make the in-block subset (n ~ U{1..ml}, then a uniform n-subset) and the clean-block noise non-trivial;
# completion lengths that end inside a block exercise the partial last block (ml < block_length).
BLOCK_CASES = [(4, 1, (3, 1, 2)), (4, 3, (3, 1, 2)), (5, 2, (4, 3, 1)), (5, 4, (4, 3, 2))]


@pytest.mark.parametrize("length,block_length,comp_lens", BLOCK_CASES, ids=lambda c: str(c))
def test_block_estimator_converges_to_exact_expectation(length, block_length, comp_lens):
    """The MC mean of `elbo_block` (one draw per replicate, p_mask_clean = 0.15) equals its enumerated
    expectation for blocks of 1 to 4 tokens and completions that end inside a block."""
    model = enum_toy.TableModel(length=length, vocab=V)
    table = enum_toy.random_table(model, seed=length)
    logp = enum_toy.log_softmax(table)
    seqs = np.random.default_rng(length).integers(0, V, size=(len(comp_lens), length)).astype(np.int32)
    comp = np.arange(length - 1)[None] < np.array(comp_lens)[:, None]
    tp = jnp.asarray(table, jnp.float32)
    samples = _replicates(lambda k: diffusion.elbo_block(model, tp, k, jnp.asarray(seqs), 1, jnp.asarray(comp), MASK,
                                                         block_length=block_length, num_samples=1, p_mask_clean=0.15),
                          R=2048)
    exact = np.array([_block_exact(logp, x, n, 1, block_length, 0.15, length) for x, n in zip(seqs, comp_lens)])
    _assert_converges(samples, exact, max_se=0.05)


def test_block_masks_structure():
    """Per row and draw: the chosen block holds completion tokens, 1..ml of its valid tokens are masked, later
    blocks and post-EOS positions are masked, and the prompt and earlier blocks are masked at rate 0.15."""
    key = jax.random.PRNGKey(3)
    B, P, G, bl, p_clean = 2048, 5, 32, 8, 0.15
    lengths = jax.random.randint(jax.random.PRNGKey(4), (B,), 1, G + 1)
    comp = jnp.arange(G)[None] < lengths[:, None]
    bm = diffusion.block_random_masks(key, P, comp, block_length=bl, num_samples=2, p_mask_clean=p_clean)
    masked, block = np.asarray(bm.masked), np.asarray(bm.block)  # [2, B, P + G], [2, B]
    comp, lengths = np.asarray(comp), np.asarray(lengths)
    gen = masked[..., P:]  # [2, B, G]
    pos_block = np.arange(G) // bl
    nb = -(-lengths // bl)
    assert np.all((0 <= block) & (block < nb[None]))
    assert np.all(gen[:, ~comp]), "post-EOS positions are always masked"
    later = pos_block[None, None] > block[..., None]
    assert np.all(gen[later]), "later blocks are fully masked"
    in_blk = (pos_block[None, None] == block[..., None]) & comp[None]
    n_masked = (gen & in_blk).sum(-1)
    assert np.all((1 <= n_masked) & (n_masked <= in_blk.sum(-1)))
    earlier = np.concatenate([np.ones((2, B, P), bool), pos_block[None, None] < block[..., None]], -1)
    noise = masked[earlier]
    # Each prompt / earlier-block position is masked independently w.p. 0.15, so the observed rate over n such
    # positions is a binomial mean with standard error √(0.15·0.85/n); n = 43,056 here (SE = 0.0017). 5 SE
    # (false alarm < 1e-6) is 0.0086: p_mask_clean = 0.14 or 0.16 gives z = 6.7 / 5.4 and fails (the old
    # ±0.05 was 5 SE of its 64 rows, n ≈ 1,350: a rate of 0.11 or 0.19 passed it).
    se = np.sqrt(p_clean * (1 - p_clean) / noise.size)
    assert noise.size > 4e4 and abs(noise.mean() - p_clean) < 5 * se, (noise.mean(), noise.size, se)
    # two draws of a row use distinct blocks whenever the completion spans all blocks
    full = lengths == G
    assert np.all(block[0, full] != block[1, full])


def test_elbo_never_above_exact_loglik(toy):
    """ELBO ≤ log p_AO for an arbitrary model, with equality when the conditionals come from one joint."""
    table, logp = toy
    A = [1, 2, 3]
    for x in itertools.product(range(V), repeat=L):
        x = np.array(x)
        assert exact_elbo(logp, x, A) <= any_order_loglik(logp, x, A) + 1e-9
    # a consistent model: every conditional is the exact conditional of one joint over V^L
    rng = np.random.default_rng(1)
    joint = rng.dirichlet(np.ones(V ** L) * 0.5).reshape((V,) * L)
    cons = np.full((N_IN, L, V + 1), -1e9)
    for z in itertools.product(range(V + 1), repeat=L):
        idx = int(_index(np.array(z)))
        sl = tuple(slice(None) if zi == MASK else zi for zi in z)
        sub = joint[sl]  # marginal over masked positions
        masked_pos = [i for i in range(L) if z[i] == MASK]
        for j, i in enumerate(masked_pos):
            other = tuple(a for a in range(len(masked_pos)) if a != j)
            marg = sub.sum(axis=other) if other else sub
            cons[idx, i, :V] = np.log(marg / marg.sum())
    lp = _logp_table(cons)
    for x in itertools.product(range(V), repeat=L):
        x = np.array(x)
        cond = joint[x[0]] / joint[x[0]].sum()
        true = np.log(cond[tuple(x[1:])])
        np.testing.assert_allclose(exact_elbo(lp, x, A), true, atol=1e-9)
        np.testing.assert_allclose(any_order_loglik(lp, x, A), true, atol=1e-9)
    # and the estimator code reaches the same number on the consistent model
    tp = table_params(cons)
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    samples = _replicates(lambda k: diffusion.elbo_stratified(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 8))
    exact = np.array([np.log(joint[tuple(x)] / joint[x[0]].sum()) for x in SEQS])
    _assert_converges(samples, exact, max_se=0.05)


@pytest.mark.parametrize("normalisation", ["llada", pytest.param("d1", marks=pytest.mark.slow)])
def test_sft_loss_matches_numpy_and_never_masks_prompt(normalisation):
    cfg = get_preset("tiny_llada", vocab_size=16, mask_token_id=15, d_model=32, n_layers=1, d_ff=64)
    params = init_params(cfg, jax.random.PRNGKey(0))
    B, T = 4, 12
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, 15)
    prompt_len = np.array([3, 5, 2, 7])
    prompt = jnp.asarray(np.arange(T)[None] < prompt_len[:, None])
    model = Model(cfg)
    key = jax.random.PRNGKey(2)
    loss, _ = diffusion.sft_loss(model, params, key, tokens, prompt, 15, normalisation=normalisation)
    mb = diffusion.forward_mask(key, tokens, 15, maskable_BL=~prompt)  # the same draw
    assert not np.any(np.asarray(mb.masked) & np.asarray(prompt))
    logits = np.asarray(model(params, mb.noisy), np.float64)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(lp, np.asarray(tokens)[..., None], -1)[..., 0]
    w = np.where(np.asarray(mb.masked), ce / np.asarray(mb.p_mask)[:, None], 0)
    ans_len = T - prompt_len
    want = (w.sum(1) / ans_len).sum() / B if normalisation == "llada" else w.sum() / ans_len.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_forward_mask_rate_follows_linear_schedule():
    tokens = jnp.zeros((4, 20000), jnp.int32)
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    mb = diffusion.forward_mask(jax.random.PRNGKey(0), tokens, 7, t_B=t)
    rate = np.asarray(mb.masked).mean(1)
    np.testing.assert_allclose(rate, (1 - 1e-3) * np.asarray(t) + 1e-3, atol=0.01)
    assert np.all(np.asarray(mb.noisy)[np.asarray(mb.masked)] == 7)


def test_shared_masks_make_model_differences_low_variance(toy):
    """d1/SPG score the old and the current policy on the same mask draw (same key): the difference of two
    close models' estimates then has far lower variance than with independent draws."""
    table, _ = toy
    a, b = table_params(table), table_params(table + 0.05 * np.random.default_rng(5).normal(size=table.shape))
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    est = lambda tp, k: diffusion.elbo_stratified(table_logits, tp, k, jnp.asarray(SEQS), ans, MASK, 2)  # noqa: E731
    shared = _replicates(lambda k: est(a, k) - est(b, k), R=128)
    indep = _replicates(lambda k: est(a, k) - est(b, jax.random.fold_in(k, 1)), R=128)
    assert np.all(shared.var(0) * 20 < indep.var(0))
    np.testing.assert_array_equal(np.asarray(est(a, jax.random.PRNGKey(0))), np.asarray(est(a, jax.random.PRNGKey(0))))


def estimator_report(R=4096):
    """Printed by `python tests/diffusion/test_diffusion.py`: MC mean vs exact, per estimator (docs/results/dllm.md)."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(N_IN, L, V + 1)) * 1.5
    logp = _logp_table(table)
    tp = table_params(table)
    ans = jnp.broadcast_to(jnp.asarray(ANSWER), SEQS.shape)
    x = jnp.asarray(SEQS)
    comp = np.array([[True, True, True], [True, False, False], [True, True, False]])
    cases = [
        ("stratified l/L (8 draws)", lambda k: diffusion.elbo_stratified(table_logits, tp, k, x, ans, MASK, 8),
         [exact_elbo(logp, s, [1, 2, 3]) for s in SEQS]),
        ("random t, eps=0.05 (8 draws)", lambda k: diffusion.elbo_random_t(table_logits, tp, k, x, ans, MASK, 8, eps=0.05),
         [exact_random_t(logp, s, [1, 2, 3], 0.05) for s in SEQS]),
        ("random t antithetic (8 draws)", lambda k: diffusion.elbo_random_t(table_logits, tp, k, x, ans, MASK, 8, eps=0.05,
                                                                            antithetic=True),
         [exact_random_t(logp, s, [1, 2, 3], 0.05) for s in SEQS]),
        ("SPG block-wise (1 draw)", lambda k: diffusion.elbo_block(table_logits, tp, k, x, 1, jnp.asarray(comp), MASK,
                                                                   block_length=1, num_samples=1),
         [_block_exact(logp, s, int(c.sum()), 1, 1, 0.15) for s, c in zip(SEQS, comp)]),
    ]
    print(f"| estimator | exact (3 sequences) | MC mean over {R} replicates | max abs error | max z | per-replicate std |")
    print("|---|---|---|---|---|---|")
    for name, est, exact in cases:
        s = _replicates(est, R=R)
        mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(R)
        exact = np.array(exact)
        print(f"| {name} | {np.round(exact, 4).tolist()} | {np.round(mean, 4).tolist()} | "
              f"{np.abs(mean - exact).max():.4f} | {(np.abs(mean - exact) / se).max():.2f} | "
              f"{np.round(s.std(0), 3).tolist()} |")



def test_estimators_hide_left_padding_given_its_layout():
    """With the key mask and positions of left-padded prompts (`models.left_padding_layout`), the SFT loss and the
    conditional ELBO estimators of a padded batch do not depend on what the padding holds (masked keys get exactly
    zero attention); without the layout the padding is read as text and the estimates change."""
    cfg = get_preset("tiny_llada", vocab_size=16, mask_token_id=15, d_model=32, n_layers=1, d_ff=64, init_std=0.3)
    params = init_params(cfg, jax.random.PRNGKey(0))
    model = Model(cfg)
    B, P, G = 3, 4, 6
    lengths = jnp.array([4, 2, 1])
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, P + G), 0, 15)
    padding = jnp.arange(P + G)[None] < (P - lengths)[:, None]
    other = jnp.where(padding, jax.random.randint(jax.random.PRNGKey(2), (B, P + G), 0, 15), tokens)
    assert not np.array_equal(np.asarray(other), np.asarray(tokens))
    mask, pos = left_padding_layout(lengths, P, P + G)
    answer = jnp.broadcast_to(jnp.arange(P + G) >= P, (B, P + G))
    key = jax.random.PRNGKey(4)  # a draw that masks answer tokens of every row
    estimators = {  # elbo_random_t and elbo_stratified call the model as elbo_block does (`_draw_log_probs`)
        "sft_loss": lambda t, **kw: diffusion.sft_loss(model, params, key, t, ~answer, 15, **kw)[0],
        "elbo_block": lambda t, **kw: diffusion.elbo_block(model, params, key, t, P, jnp.ones((B, G), bool), 15,
                                                           block_length=3, num_samples=2, **kw),
    }
    hidden = jax.jit(lambda t: [est(t, attention_mask=mask, positions=pos) for est in estimators.values()])
    blind = jax.jit(lambda t: [est(t) for est in estimators.values()])
    for name, a, b, c, d in zip(estimators, hidden(tokens), hidden(other), blind(tokens), blind(other)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, err_msg=name)
        assert not np.allclose(np.asarray(c), np.asarray(d), rtol=1e-4), name


if __name__ == "__main__":
    estimator_report()
