"""TEAL as its reference does it (`jaxllm/sparse/teal.py`): histogram thresholds, the TEAL linear, the greedy
per-block allocation, and the perplexity ordering against dense and R-Sparse on a small trained decoder."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import apply_overrides
from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.models.presets import get_preset
from jaxllm.sparse import rsparse as rs
from jaxllm.sparse import teal


def _binomial_tolerance(n: int, s: float, hist: teal.Histogram) -> float:
    """Tolerance on the dropped fraction |x| ≤ t at the reference's t = icdf(0.5 + s/2) for n i.i.d. draws of a
    symmetric distribution. The histogram fixes #(x ≤ t) to n(0.5 + s/2) up to one bin (interpolation between
    bin centres: at most the largest bin's share); what remains random is the lower tail #(x < −t) against the
    upper tail #(x > t), two cells of one multinomial with probability q = (1 − s)/2 each: Var(A − B) = 2nq,
    so the dropped fraction is off by 4·sqrt(2q/n) at most (4 σ) plus the bin share."""
    q = (1.0 - s) / 2
    return 4.0 * math.sqrt(2 * q / n) + float(np.max(hist.counts[1:-1]) / hist.counts.sum())


@pytest.mark.parametrize("s", [0.4, 0.5, 0.6, 0.7])
def test_histogram_threshold_hits_target_sparsity_on_calibration_data(s):
    """The reference's threshold icdf(0.5 + s/2) of a 10,000-bin histogram drops the fraction s of the
    calibration values (symmetric Laplace draws) within the binomial tolerance above; the |x| variant (`magnitude`)
    hits it within one bin's share, no sampling term."""
    x = np.random.default_rng(int(s * 10)).laplace(size=100_000)
    h = teal.histogram(x)
    assert abs(teal.drop_fraction(x, h.threshold(s)) - s) <= _binomial_tolerance(x.size, s, h)
    hm = teal.histogram(x, magnitude=True)
    assert abs(teal.drop_fraction(x, hm.threshold(s)) - s) <= float(np.max(hm.counts[1:-1]) / x.size) + 1e-9


def test_reference_threshold_presumes_a_symmetric_distribution():
    """On a skewed input (exponential − 0.3) the reference's icdf(0.5 + s/2) misses s = 0.5 by far (> 0.2); the
    |x| histogram still hits it: the reason `magnitude=True` exists, and why the experiment reports the weights
    actually read."""
    x = np.random.default_rng(0).exponential(size=50_000) - 0.3
    assert abs(teal.drop_fraction(x, teal.histogram(x).threshold(0.5)) - 0.5) > 0.2
    assert abs(teal.drop_fraction(x, teal.histogram(x, magnitude=True).threshold(0.5)) - 0.5) < 1e-3


def test_histogram_is_the_reference_layout():
    """num_bins bins; the two outer bins hold the 1 % tails (int(0.01 n) values each, up to ties), the main
    bins are equal-width; s = 0 gives threshold 0 (keep every non-zero value)."""
    x = np.random.default_rng(1).normal(size=20_000)
    h = teal.histogram(x, num_bins=1000)
    assert h.counts.shape == (1000,) and h.counts.sum() == x.size
    assert 199 <= h.counts[0] <= 201 and 199 <= h.counts[-1] <= 201
    widths = np.diff(h.centers[1:-1])
    np.testing.assert_allclose(widths, widths[0], rtol=1e-6)
    assert h.threshold(0.0) == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        h.threshold(1.5)
    with pytest.raises(ValueError, match="non-finite"):
        teal.histogram(np.array([1.0, np.nan, 2.0]))


def _tiny_params(seed=0):
    cfg = get_preset("tiny_llama")
    return cfg, tfm.init_params(cfg, jax.random.PRNGKey(seed))


def test_teal_linear_is_masked_dense_on_the_sparse_tokens_only():
    """TEALLinear computes (x ⊙ 1[|x| > τ]) W on the last ⌈f·T⌉ tokens and x W on the others (checked in
    numpy); a projection without a `teal` entry is dense."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    x = rng.normal(size=(2, 10, 16)).astype(np.float32)
    p = {"kernel": jnp.asarray(w), "teal": {"tau": jnp.float32(0.7)}}
    y = np.asarray(teal.TEALLinear(0.5, use_kernel=False)("l/attn/q", p, jnp.asarray(x), "BTD,DF->BTF"))
    masked = np.where(np.abs(x) > 0.7, x, 0.0)
    np.testing.assert_allclose(y[:, :5], x[:, :5] @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 5:], masked[:, 5:] @ w, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(y[:, 5:] - x[:, 5:] @ w)) > 1e-2  # the mask did something
    y0 = teal.TEALLinear(1.0)("l/attn/q", {"kernel": jnp.asarray(w)}, jnp.asarray(x), "BTD,DF->BTF")
    np.testing.assert_allclose(np.asarray(y0), x @ w, rtol=1e-5, atol=1e-5)


def test_tealify_at_sparsity_zero_is_the_dense_model_and_s_drops_that_share():
    """A TEAL tree at s = 0 (threshold 0) gives the dense logits; at s = 0.5 each projection's calibrated
    threshold drops about half its calibration inputs (tolerance 0.05: tiny model, few tokens, skew)."""
    cfg, params = _tiny_params()
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, cfg.vocab_size)
    inputs = rs.collect_inputs(cfg, params, tokens)
    hists = teal.projection_histograms(inputs, magnitude=True)
    dense = Model(cfg)(params, tokens)
    np.testing.assert_allclose(np.asarray(teal.teal_model(cfg)(teal.tealify(params, hists, 0.0), tokens)),
                               np.asarray(dense), rtol=1e-5, atol=1e-5)
    tree = teal.tealify(params, hists, 0.5)
    for name, x in inputs.items():
        lname, group, pname = name.split("/")
        assert abs(teal.drop_fraction(x, float(tree[lname][group][pname]["teal"]["tau"])) - 0.5) < 0.05, name


def test_greedy_allocation_meets_the_budget_exactly_and_beats_uniform():
    """The greedy allocation's parameter-weighted mean sparsity equals every target exactly in every block (Δ
    divides the targets), no projection leaves [0, 1], and its block error (recomputed independently through
    `tealify` + `TEALLinear`) is no worse than uniform sparsity at the same budget, on the tokens it was fitted on."""
    cfg, params = _tiny_params(1)
    tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 32), 0, cfg.vocab_size)
    inputs = rs.collect_inputs(cfg, params, tokens)
    hists = teal.projection_histograms(inputs)
    targets = (0.4, 0.5)
    alloc, paths = teal.greedy_allocation(cfg, params, hists, tokens, targets)
    counts = teal.parameter_counts(params)
    for t in targets:
        assert set(alloc[t]) == set(counts)
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in alloc[t].values())
        for layer in paths:
            block = {n: c for n, c in counts.items() if n.startswith(layer + "/")}
            assert abs(teal.model_sparsity(alloc[t], block) - t) < 1e-9, (layer, t)
        assert len({round(v, 9) for v in alloc[t].values()}) > 1  # an allocation, not uniform
        greedy = teal.uniform_block_error(cfg, params, hists, tokens, alloc[t])
        uniform = teal.uniform_block_error(cfg, params, hists, tokens, t)
        for layer, path in paths.items():
            n = int(round(t / path.delta))
            assert greedy[layer] == pytest.approx(path.errors[n - 1], rel=1e-4)
            assert uniform[layer] == pytest.approx(path.uniform_errors[n - 1], rel=1e-4)
            assert greedy[layer] <= uniform[layer] * (1 + 1e-5), (layer, t, greedy[layer], uniform[layer])


def test_greedy_step_divides_targets():
    """Δ ≤ the reference's base_step / Σ w and every target is a whole number of raises."""
    counts = {"l/attn/q": 4, "l/attn/k": 1, "l/attn/v": 1, "l/attn/o": 4, "l/mlp/gate": 14, "l/mlp/up": 14,
              "l/mlp/down": 14}
    d = teal.greedy_step((0.4, 0.5, 0.7), counts)
    assert d <= 0.05 * 4 / 52 + 1e-12
    for t in (0.4, 0.5, 0.7):
        assert abs(t / d - round(t / d)) < 1e-9
    with pytest.raises(ValueError, match="targets"):
        teal.greedy_step((0.0,), counts)


# ----------------------------------------------------------------------------------------------------------
# Perplexity ordering on a small trained decoder.


def _ordering(tmp_path, overrides, n_eval, seq):
    from experiments import rsparse_eval as ev

    config = apply_overrides(ev.Config(), [f"run_dir={tmp_path}", *overrides])
    cfg, params = ev.train_model(config, str(tmp_path))
    train, held = ev.corpus("train"), ev.corpus("heldout")
    calib = ev.fixed_windows(train, 8, seq, seed=10)[:, :-1]
    search = ev.fixed_windows(train, 8, seq, seed=11)[:, :-1]
    evalw = ev.fixed_windows(held, n_eval, seq, seed=12)
    factors = rs.compute_factors(params)
    calib_in, search_in = rs.collect_inputs(cfg, params, calib), rs.collect_inputs(cfg, params, search)
    hists = teal.projection_histograms(calib_in)
    alloc, _ = teal.greedy_allocation(cfg, params, hists, search, (0.5,))
    alpha, _ = rs.greedy_alpha_search(params, factors, calib_in, search_in, 0.5)
    ppl = {"dense": ev.perplexity(Model(cfg), params, evalw),
           "rsparse": ev.perplexity(rs.rsparse_model(cfg), rs.rsparsify(
               cfg, params, None, 0.5, alpha, factors=factors, inputs=calib_in)[0], evalw),
           "teal": ev.perplexity(teal.teal_model(cfg), teal.tealify(params, hists, alloc[0.5]), evalw)}
    return ppl


@pytest.mark.slow
def test_dense_beats_rsparse_beats_teal_at_half_sparsity_small(tmp_path):
    """At s = 0.5 on a small byte-level decoder trained here (2 layers, d_model 32, 150 steps): dense < R-Sparse
    (α searched per layer) < TEAL (the reference's greedy allocation, signed histograms), the searched-vs-greedy
    pair at equal budget, every token sparse (measured: passes). On the rsparse_eval model (4 layers, d_model 128,
    3 window seeds, docs/results/rsparse.md) the R-Sparse-vs-TEAL-greedy gap at s = 0.5 is within noise
    (−0.18 ± 0.46 pp), so the second inequality is a property of this fixed small model and seed, not a general
    margin; dense < both holds everywhere. Slow tier: 254 s on the 2 shared cores under load ≈ 17 (training, α
    search and greedy allocation are compile-bound here); the default tier checks each piece above."""
    ppl = _ordering(tmp_path, ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
                               "model.d_ff=96", "model.max_seq_len=32", "train.seq_len=32", "train.batch_size=8",
                               "train.trainer.steps=150", "train.optim.warmup_steps=10",
                               "train.trainer.checkpoint_every=1000", "train.trainer.log_every=50"], 32, 32)
    assert ppl["dense"] < ppl["rsparse"] < ppl["teal"], ppl
