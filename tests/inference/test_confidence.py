"""DeepConf statistics and decision rules against closed forms, brute force and the official code's rules
(deepconf_lsp.md D1). Tolerances: float32 arithmetic on values of size ~10, so 1e-5 relative unless stated."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxllm.config import ConfigError
from jaxllm.inference import deepconf as dc

RNG = np.random.default_rng(0)


def conf_of(p, k):
    return float(dc.token_confidence(jnp.log(jnp.asarray(p, jnp.float32)), k))


# ---- D1.1-5: token confidence ----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.01, 30.0), st.integers(0, 2**31 - 1))
def test_confidence_is_at_least_log_k(k, scale, seed):
    logits = np.random.default_rng(seed).normal(size=(3, 40)) * scale
    c = np.asarray(dc.token_confidence(jnp.asarray(logits, jnp.float32), k))
    assert (c >= math.log(k) - 1e-5 * max(1.0, math.log(k))).all(), (c, math.log(k))


def test_lower_bound_is_reached_when_the_top_k_share_the_mass_equally():
    for k in (1, 5, 20):
        logits = np.full(32, -1e4, np.float32)
        logits[:k] = 0.0  # p = 1/k on k tokens, 0 elsewhere
        assert float(dc.token_confidence(jnp.asarray(logits), k)) == pytest.approx(math.log(k), abs=1e-6)


def test_uniform_distribution_gives_log_v_for_every_k():
    for k in (1, 7, 20, 32):
        assert float(dc.token_confidence(jnp.zeros(32), k)) == pytest.approx(math.log(32), rel=1e-6)
    assert float(dc.token_confidence(jnp.zeros(32), 20)) == pytest.approx(3.4657, abs=1e-4)  # D1.2


def test_full_vocabulary_confidence_is_log_v_plus_kl_uniform_to_p():
    logits = RNG.normal(size=(5, 16)) * 2
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    kl = np.sum((1 / 16) * (np.log(1 / 16) - np.log(p)), axis=-1)
    np.testing.assert_allclose(dc.token_confidence(jnp.asarray(logits, jnp.float32), 16), math.log(16) + kl, rtol=1e-5)


@pytest.mark.parametrize("eps,expected", [(1e-2, 4.3935), (1e-3, 6.5639), (1e-4, 8.7500)])
def test_near_one_hot_closed_form(eps, expected):
    V, k = 32, 20
    p = np.full(V, eps)
    p[0] = 1 - (V - 1) * eps
    closed = -(math.log(1 - (V - 1) * eps) + (k - 1) * math.log(eps)) / k
    assert closed == pytest.approx(expected, abs=1e-4)
    assert conf_of(p, k) == pytest.approx(closed, rel=1e-5)


def test_confidence_is_invariant_to_shifting_the_logits():
    logits = jnp.asarray(RNG.normal(size=(4, 48)) * 3, jnp.float32)
    base = dc.token_confidence(logits, 20)
    for c in (-50.0, 37.5, 1000.0):  # log_softmax subtracts the max first, so even +1000 stays exact to rounding
        np.testing.assert_allclose(dc.token_confidence(logits + c, 20), base, rtol=1e-4 if c == 1000.0 else 1e-6)


def test_sampled_token_variant_averages_top_k_and_the_sampled_token():
    logits = jnp.asarray(RNG.normal(size=(48,)) * 2, jnp.float32)
    logp = np.asarray(jax.nn.log_softmax(logits))
    order = np.argsort(-logp)
    inside, outside = int(order[3]), int(order[40])
    assert float(dc.token_confidence(logits, 20, jnp.int32(inside))) == pytest.approx(-logp[order[:20]].mean(), rel=1e-6)
    want = -(logp[order[:20]].sum() + logp[outside]) / 21  # vLLM's dict: 21 entries
    assert float(dc.token_confidence(logits, 20, jnp.int32(outside))) == pytest.approx(want, rel=1e-6)


def test_confidence_from_sampler_top_logprobs_matches_logits():
    logits = jnp.asarray(RNG.normal(size=(2, 3, 40)), jnp.float32)
    top = jax.lax.top_k(jax.nn.log_softmax(logits), 20)[0]
    np.testing.assert_allclose(dc.confidence_from_top_logprobs(top), dc.token_confidence(logits, 20), rtol=1e-6)
    np.testing.assert_allclose(dc.confidence_from_top_logprobs(top, 5), dc.token_confidence(logits, 5), rtol=1e-6)


def test_bad_k_is_an_error_naming_k():
    with pytest.raises(ValueError, match="k=50"):
        dc.token_confidence(jnp.zeros(32), 50)
    with pytest.raises(ConfigError, match="keep_fraction"):
        dc.DeepConfConfig(keep_fraction=0.0)
    with pytest.raises(ConfigError, match="statistic"):
        dc.DeepConfConfig(statistic="median")


# ---- D1.6: windows and trace statistics ----------------------------------------------------------------

def brute_stats(c, L, w, tail, frac=0.1):
    """The official code's functions (deepconf/utils.py), written as loops over one trace."""
    c = list(map(float, c[:L]))
    groups = [sum(c[i:i + w]) / w for i in range(L - w + 1)] if L >= w else [sum(c) / L]
    nb = max(1, int(frac * len(groups)))
    return dict(mean=sum(c) / L, lowest=min(groups), bottom=float(np.mean(sorted(groups)[:nb])),
                tail=float(np.mean(c[-tail:])), groups=groups)


@pytest.mark.parametrize("w,tail", [(1, 1), (4, 6), (8, 8), (30, 3)])
def test_trace_statistics_equal_brute_force(w, tail):
    B, T = 12, 25
    conf = RNG.uniform(2, 9, size=(B, T)).astype(np.float32)
    lengths = np.concatenate([[1, 2, min(w, T), T], RNG.integers(1, T + 1, B - 4)])
    mask = np.arange(T)[None, :] < lengths[:, None]
    got = dc.trace_confidence(jnp.asarray(conf), jnp.asarray(mask), w, tail)
    groups, gvalid = dc.group_confidence(jnp.asarray(conf), jnp.asarray(mask), w)
    for b in range(B):
        want = brute_stats(conf[b], int(lengths[b]), w, tail)
        for name in ("mean", "lowest", "bottom", "tail"):
            assert float(getattr(got, name)[b]) == pytest.approx(want[name], rel=1e-5), (b, name)
        np.testing.assert_allclose(np.asarray(groups[b])[np.asarray(gvalid[b])], want["groups"], rtol=1e-5)
    assert (np.asarray(got.length) == lengths).all()


def test_window_means_equal_the_cumsum_form():
    x = RNG.uniform(0, 10, size=(3, 50)).astype(np.float64)
    s = np.concatenate([np.zeros((3, 1)), np.cumsum(x, 1)], 1)
    np.testing.assert_allclose(dc.window_means(jnp.asarray(x, jnp.float32), 7), (s[:, 7:] - s[:, :-7]) / 7, rtol=1e-5)


def test_statistic_orderings_and_constant_traces():
    conf = jnp.asarray(RNG.uniform(2, 9, size=(20, 40)), jnp.float32)
    mask = jnp.ones((20, 40), bool)
    s = dc.trace_confidence(conf, mask, 5, 5)
    groups, valid = dc.group_confidence(conf, mask, 5)
    gmean = np.asarray(jnp.sum(jnp.where(valid, groups, 0), 1) / jnp.sum(valid, 1))
    assert (np.asarray(s.lowest) <= np.asarray(s.bottom) + 1e-6).all()
    assert (np.asarray(s.bottom) <= gmean + 1e-6).all()
    s19 = dc.trace_confidence(conf[:, :23], mask[:, :23], 5, 5)  # 19 groups: ⌊1.9⌋ = 1 → bottom = lowest
    np.testing.assert_array_equal(s19.bottom, s19.lowest)
    const = dc.trace_confidence(jnp.full((2, 9), 4.25), jnp.asarray(np.arange(9)[None] < np.array([[9], [3]])), 4, 2)
    for v in const[:4]:
        np.testing.assert_allclose(v, 4.25, rtol=1e-6)


def test_empty_trace_statistics_are_nan_and_do_not_vote():
    s = dc.trace_confidence(jnp.ones((2, 5)), jnp.asarray([[True] * 5, [False] * 5]), 3, 3)
    assert np.isnan(np.asarray(s.lowest)[1]) and np.isfinite(np.asarray(s.lowest)[0])
    v = dc.weighted_vote(jnp.asarray([0, 1]), s.lowest, jnp.asarray([True, True]) & (s.length > 0), 2)
    assert int(v.winner) == 0 and float(v.share) == 1.0


# ---- D1.7: voting ----------------------------------------------------------------------------------------

def official_weighted_vote(answers, weights):
    """deepconf/utils.py `weighted_majority_vote`: dict in insertion order, max() keeps the first on ties."""
    w = collections.OrderedDict()
    for a, x in zip(answers, weights):
        if a is not None:
            w[a] = w.get(a, 0.0) + float(x)
    return max(w.keys(), key=lambda a: w[a]) if w else None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(1, 4)), min_size=1, max_size=30))
def test_weighted_vote_equals_the_official_dict_vote(rows):
    ids = np.asarray([r[0] for r in rows], np.int32)
    valid = np.asarray([r[1] for r in rows])
    weights = np.asarray([r[2] for r in rows], np.float32)  # small integers: ties happen and sums are exact
    v = dc.weighted_vote(jnp.asarray(ids), jnp.asarray(weights), jnp.asarray(valid), 5)
    want = official_weighted_vote([int(i) if ok else None for i, ok in zip(ids, valid)], weights)
    assert int(v.winner) == (-1 if want is None else want)
    maj = dc.majority_vote(jnp.asarray(ids), jnp.asarray(valid), 5)
    counted = collections.Counter(int(i) for i, ok in zip(ids, valid) if ok).most_common(1)  # first on ties
    assert int(maj.winner) == (counted[0][0] if counted else -1)


def test_vote_is_invariant_to_scaling_weights_and_permuting_traces():
    ids = jnp.asarray(RNG.integers(0, 6, 64), jnp.int32)
    w = jnp.asarray(RNG.uniform(1, 10, 64), jnp.float32)  # continuous weights: no ties
    valid = jnp.asarray(RNG.random(64) < 0.8)
    base = dc.weighted_vote(ids, w, valid, 6)
    for lam in (0.01, 3.0, 1e4):
        v = dc.weighted_vote(ids, w * lam, valid, 6)
        assert int(v.winner) == int(base.winner) and float(v.share) == pytest.approx(float(base.share), rel=1e-5)
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(64)
        v = dc.weighted_vote(ids[perm], w[perm], valid[perm], 6)
        assert int(v.winner) == int(base.winner)
        np.testing.assert_allclose(v.totals, base.totals, rtol=1e-5)


def test_duplicate_answers_pool_their_votes_under_math_equivalence_only():
    texts = ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{1/2}", "\\boxed{3}", "\\boxed{3}", "no answer"]
    ids, valid, keys, ref = dc.answer_ids(texts, reference="\\frac12")
    assert ids[:5].tolist() == [0, 0, 0, 1, 1] and valid.tolist() == [True] * 5 + [False] and ref == 0
    assert int(dc.majority_vote(jnp.asarray(ids), jnp.asarray(valid), len(keys)).winner) == 0  # 3 votes vs 2
    ids, valid, keys, ref = dc.answer_ids(texts, equivalence="exact", reference="0.5")
    assert ids[:5].tolist() == [0, 1, 2, 3, 3] and ref == 0  # the code groups by string (issue #15)
    assert int(dc.majority_vote(jnp.asarray(ids), jnp.asarray(valid), len(keys)).winner) == 3


def test_no_valid_vote_gives_no_winner():
    v = dc.weighted_vote(jnp.asarray([1, 2]), jnp.asarray([1.0, 2.0]), jnp.asarray([False, False]), 3)
    assert int(v.winner) == -1 and float(v.share) == 0.0


# ---- D1.8, D1.13: filtering and thresholds --------------------------------------------------------------

@pytest.mark.parametrize("n,kept_low,kept_high", [(16, 2, 14), (64, 7, 57), (481, 49, 433), (512, 52, 460)])
def test_keep_fraction_counts(n, kept_low, kept_high):
    scores = jnp.asarray(RNG.permutation(n).astype(np.float32) + RNG.random(n).astype(np.float32) * 0.5)
    valid = jnp.ones(n, bool)
    assert int(jnp.sum(dc.keep_top(scores, valid, 0.1))) == kept_low == n - math.ceil(0.9 * (n - 1))
    assert int(jnp.sum(dc.keep_top(scores, valid, 0.9))) == kept_high == n - math.ceil(0.1 * (n - 1) - 1e-9)
    assert int(jnp.sum(dc.keep_top(scores, valid, 1.0))) == n


def test_masked_percentile_equals_numpy():
    for n in (1, 2, 5, 16, 100):
        x = RNG.normal(size=(n + 7,)).astype(np.float32)
        valid = np.zeros(n + 7, bool)
        valid[RNG.permutation(n + 7)[:n]] = True
        for q in (0, 10, 37.5, 50, 90, 100):
            got = float(dc.masked_percentile(jnp.asarray(x), jnp.asarray(valid), q))
            assert got == pytest.approx(float(np.percentile(x[valid].astype(np.float64), q)), abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=40))
def test_threshold_for_a_smaller_keep_fraction_is_never_lower(xs):
    x, valid = jnp.asarray(xs, jnp.float32), jnp.ones(len(xs), bool)
    assert float(dc.confidence_threshold(x, valid, 0.1)) >= float(dc.confidence_threshold(x, valid, 0.9))


# ---- D1.9-11: online stopping and the consensus stop ---------------------------------------------------

def brute_stop(c, L, w, s):
    for t in range(w, L + 1):
        if sum(map(float, c[t - w:t])) / w < s:
            return t, True
    return L, False


def test_online_stop_is_the_first_full_window_below_threshold_and_matches_the_offline_filter():
    B, T, w = 40, 30, 5
    conf = RNG.uniform(2, 9, size=(B, T)).astype(np.float32)
    lengths = RNG.integers(1, T + 1, B)
    mask = np.arange(T)[None] < lengths[:, None]
    stats = dc.trace_confidence(jnp.asarray(conf), jnp.asarray(mask), w, w)
    s = float(np.median(np.asarray(stats.lowest)))
    cut, stopped = dc.online_stop(jnp.asarray(conf), jnp.asarray(mask), w, s)
    for b in range(B):
        t, stp = brute_stop(conf[b], int(lengths[b]), w, s)
        assert (int(cut[b]), bool(stopped[b])) == (t, stp), b
        if lengths[b] >= w:  # D1.9: survives iff its full-trace lowest group is >= s
            assert bool(stopped[b]) == (float(stats.lowest[b]) < s)
        else:
            assert not bool(stopped[b])  # shorter than the window: never cut online
    cut, stopped = dc.online_stop(jnp.asarray(conf), jnp.asarray(mask), w, -np.inf)
    assert not bool(jnp.any(stopped)) and (np.asarray(cut) == lengths).all()  # D1.10
    cut, stopped = dc.online_stop(jnp.asarray(conf), jnp.asarray(mask), w, np.inf)
    assert (np.asarray(stopped) == (lengths >= w)).all() and (np.asarray(cut)[lengths >= w] == w).all()


def reference_online(conf, lengths, ids, valid, c: dc.DeepConfConfig):
    """A sequential re-derivation of `online_deepconf` (numpy + loops, one trace at a time)."""
    K = len(lengths)
    st = [brute_stats(conf[i], int(lengths[i]), c.window, c.tail) for i in range(K)]
    s = float(np.percentile([x["lowest"] for x in st[:c.warmup]], 100 * (1 - c.keep_fraction)))
    totals, tokens, order = {}, 0, []
    for i in range(K):
        if i < c.warmup:
            n, stopped = int(lengths[i]), False
        else:
            n, stopped = brute_stop(conf[i], int(lengths[i]), c.window, s)
        tokens += n
        if valid[i] and not stopped and st[i]["lowest"] >= s:
            totals[int(ids[i])] = totals.get(int(ids[i]), 0.0) + st[i][c.statistic]
            order.append(int(ids[i]))
        if i >= c.warmup - 1 and totals and max(totals.values()) / sum(totals.values()) >= c.tau:
            break
    winner = max(totals, key=lambda a: totals[a]) if totals else -1
    return winner, tokens, i + 1, s


@pytest.mark.parametrize("keep,tau,stat", [(0.1, 0.95, "lowest"), (0.9, 0.6, "tail"), (0.9, 2.0, "mean")])
def test_online_simulation_equals_a_sequential_reference(keep, tau, stat):
    c = dc.DeepConfConfig(window=4, tail=4, warmup=6, keep_fraction=keep, tau=tau, statistic=stat)
    for seed in range(6):
        r = np.random.default_rng(seed)
        K, T = 40, 16
        conf = r.uniform(3, 6, size=(K, T)).astype(np.float32)
        lengths = r.integers(2, T + 1, K)
        ids = r.choice(3, K, p=[0.7, 0.2, 0.1]).astype(np.int32)
        valid = r.random(K) < 0.9
        mask = np.arange(T)[None] < lengths[:, None]
        got = dc.online_deepconf(jnp.asarray(conf), jnp.asarray(mask), jnp.asarray(ids), jnp.asarray(valid), c, 3)
        winner, tokens, used, s = reference_online(conf, lengths, ids, valid, c)
        assert (int(got.winner), int(got.tokens), int(got.traces)) == (winner, tokens, used), seed
        assert float(got.threshold) == pytest.approx(s, rel=1e-6)
        if tau > 1:  # D1.11: no consensus stop = the official code: the whole budget
            assert int(got.traces) == K


def test_unanimous_warmup_settles_at_the_first_check_and_traces_never_exceed_the_budget():
    c = dc.DeepConfConfig(window=3, tail=3, warmup=4, keep_fraction=0.9)
    conf = jnp.asarray(RNG.uniform(3, 6, size=(10, 8)), jnp.float32)
    mask = jnp.ones((10, 8), bool)
    got = dc.online_deepconf(conf, mask, jnp.zeros(10, jnp.int32), jnp.ones(10, bool), c, 2)
    assert int(got.traces) == 4 and float(got.share) == 1.0 and int(got.tokens) == 32
    split = dc.online_deepconf(conf, mask, jnp.arange(10) % 2, jnp.ones(10, bool), c, 2)
    assert int(split.traces) == 10 and 0 < float(split.share) < 1


# ---- diffusion ---------------------------------------------------------------------------------------------

def test_diffusion_step_and_block_confidence_equal_brute_force():
    from jaxllm.models import Model, get_preset, init_params
    from jaxllm.sampling import diffusion

    cfg = get_preset("tiny_llada", vocab_size=40, mask_token_id=39)
    params = init_params(cfg, jax.random.PRNGKey(0))
    sc = diffusion.DiffusionSamplerConfig(gen_length=12, block_length=4, steps=6, mask_id=39, temperature=1.0)
    out = diffusion.generate(Model(cfg), params, jnp.ones((3, 4), jnp.int32), jax.random.PRNGKey(1), sc)
    step, conf = np.asarray(out.unmask_step), np.asarray(out.confidence)
    sc_BS, smask = dc.diffusion_step_confidence(out.unmask_step, out.confidence, 6)
    thr = float(np.median(conf))
    bconf, spent, stopped = dc.diffusion_block_stop(out.unmask_step, out.confidence, 6, 2, thr)
    for b in range(3):
        want = [conf[b][step[b] == s].mean() for s in range(6) if (step[b] == s).any()]
        np.testing.assert_allclose(np.asarray(sc_BS[b])[np.asarray(smask[b])], want, rtol=1e-6)
        blocks = [conf[b][(step[b] // 2) == k].mean() for k in range(3)]
        np.testing.assert_allclose(bconf[b], blocks, rtol=1e-6)
        first = next((k for k in range(3) if blocks[k] < thr), None)
        assert bool(stopped[b]) == (first is not None)
        assert int(spent[b]) == (6 if first is None else 2 * (first + 1))
