"""R-Sparse method: budget rule, exactness at full rank, calibration, the decoder transform, search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.models import transformer as tfm
from jaxllm.models.presets import get_preset
from jaxllm.sparse import rsparse as rs


def _tiny(name="tiny_llama", seed=0):
    cfg = get_preset(name)
    params = tfm.init_params(cfg, jax.random.PRNGKey(seed))
    tokens = jax.random.randint(jax.random.PRNGKey(seed + 1), (2, 10), 0, cfg.vocab_size)
    return cfg, params, tokens


def _entry(tree, name):
    lname, group, pname = name.split("/")
    return tree[lname][group][pname]["rsparse"]


@pytest.mark.parametrize("tau", [-1.0, 0.0, 0.3, 1.0, 1e9])
def test_full_rank_rsparse_linear_equals_dense_for_every_tau(tau):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(24, 16))
    x = rng.normal(size=(5, 24)).astype(np.float32)
    f = rs.svd_factors(w)
    entry = {"scale": jnp.asarray(f.scale, jnp.float32), "tau": jnp.float32(tau),
             "a": jnp.asarray(f.a_full, jnp.float32), "b": jnp.asarray(f.b_full, jnp.float32)}
    y = rs.rsparse_matmul(jnp.asarray(x), jnp.asarray(w, jnp.float32), entry)
    np.testing.assert_allclose(np.asarray(y), x @ w, atol=2e-5, rtol=1e-5)


def test_channel_scores_are_weight_row_norms():
    w = np.random.default_rng(1).normal(size=(12, 7))
    np.testing.assert_allclose(rs.svd_factors(w).scale, np.linalg.norm(w, axis=1), rtol=1e-12)


def test_budget_rule_matches_reference_numbers():
    # set_threshold_r_sparse at 4096x4096, s = 0.5 (values from the reference code's formula)
    assert (rs.layer_budget("l", 4096, 4096, 0.5, 1.0).kept, rs.layer_budget("l", 4096, 4096, 0.5, 1.0).mode) == (
        2048, "sparse")
    b = rs.layer_budget("l", 4096, 4096, 0.5, 0.8)
    assert (b.kept, b.rank) == (1638, 205)
    b = rs.layer_budget("l", 4096, 4096, 0.5, 0.1448)
    assert (b.kept, b.rank) == (296, 876)
    # GQA k/v projection with its true d_out (the reference would count d_out = 4096)
    b = rs.layer_budget("k", 4096, 1024, 0.5, 0.8)
    assert (b.kept, b.rank) == (1638, 82)
    assert b.weights_read <= 0.5 * 4096 * 1024
    lr = rs.layer_budget("k", 4096, 1024, 0.5, 0.0)
    assert (lr.kept, lr.mode, lr.drop_fraction) == (0, "low_rank", 1.0)
    assert rs.layer_budget("k", 4096, 1024, 0.0, 0.3).mode == "dense"


@pytest.mark.parametrize("what,s,a", [("sparsity", 1.5, 0.5), ("alpha", 0.5, -0.1)])
def test_budget_outside_unit_interval_names_the_layer(what, s, a):
    with pytest.raises(ValueError, match=rf"layer_3/attn/k: {what}="):
        rs.layer_budget("layer_3/attn/k", 64, 32, s, a)


def test_calibrated_kept_fraction_matches_target_on_calibration_batch():
    cfg, params, tokens = _tiny()
    inputs = rs.collect_inputs(cfg, params, tokens)
    tree, budgets = rs.rsparsify(cfg, params, tokens, 0.4, 0.8, inputs=inputs)
    for name, b in budgets.items():
        target = 1.0 - b.drop_fraction
        numel = inputs[name].size
        assert abs(rs.kept_fraction(inputs[name], _entry(tree, name)) - target) <= 1.0 / numel + 1e-9, name
    teal, tb = rs.rsparsify(cfg, params, tokens, 0.5, method="teal", inputs=inputs)
    for name in tb:
        assert abs(rs.kept_fraction(inputs[name], _entry(teal, name)) - 0.5) <= 1.0 / inputs[name].size + 1e-9


def test_collected_inputs_reproduce_the_residual_stream():
    cfg, params, tokens = _tiny()
    inputs = rs.collect_inputs(cfg, params, tokens)
    hid = tfm.forward(cfg, params, tokens, return_layer_hiddens=True).layer_hiddens
    B, T = tokens.shape
    for i in range(cfg.n_layers):
        o = rs.kernel_matrix(f"layer_{i}/attn/o", params[f"layer_{i}"]["attn"]["o"]["kernel"])
        down = np.asarray(params[f"layer_{i}"]["mlp"]["down"]["kernel"], np.float64)
        x = np.asarray(hid[i]).reshape(B * T, -1)
        rebuilt = x + inputs[f"layer_{i}/attn/o"] @ o + inputs[f"layer_{i}/mlp/down"] @ down
        np.testing.assert_allclose(rebuilt, np.asarray(hid[i + 1]).reshape(B * T, -1), atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny_llama", "tiny_gpt2"])
def test_decoder_transformed_at_zero_sparsity_equals_dense(preset):
    cfg, params, tokens = _tiny(preset)
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.0, 0.9)
    dense = tfm.forward(cfg, params, tokens).logits
    sparse = tfm.forward(cfg, tree, tokens, sparse_fraction=1.0).logits
    np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=1e-5)


def test_prefill_dense_then_sparse_decode_matches_sparse_fraction_forward():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.7)
    T, P = tokens.shape[1], 8
    full = tfm.forward(cfg, tree, tokens, sparse_fraction=(T - P) / T).logits
    dense = tfm.forward(cfg, params, tokens).logits
    np.testing.assert_allclose(np.asarray(full[:, :P]), np.asarray(dense[:, :P]), atol=1e-5)  # prefix untouched
    assert float(jnp.abs(full[:, P:] - dense[:, P:]).max()) > 1e-3  # the sparse tokens do change
    cache = tfm.init_cache(cfg, tokens.shape[0], T)
    out = tfm.forward(cfg, tree, tokens[:, :P], cache=cache, cache_index=0)  # prefill: dense (f = 0)
    cache, steps = out.cache, []
    for t in range(P, T):
        out = tfm.forward(cfg, tree, tokens[:, t:t + 1], cache=cache, cache_index=t, sparse_fraction=1.0)
        cache = out.cache
        steps.append(out.logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full[:, P:]), atol=1e-4)


def test_shape_mismatch_names_the_layer():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.5)
    bad = jax.tree.map(lambda v: v, tree)
    bad["layer_1"]["mlp"]["down"]["rsparse"]["scale"] = jnp.ones((7,))
    with pytest.raises(ValueError, match="layer_1/mlp/down"):
        tfm.forward(cfg, bad, tokens, sparse_fraction=1.0)
    f = rs.svd_factors(np.ones((8, 4)))
    with pytest.raises(ValueError, match="layer_0/attn/q"):
        rs.build_entry("layer_0/attn/q", rs.layer_budget("layer_0/attn/q", 8, 4, 0.5, 0.5), f, np.ones((3, 5)))
    with pytest.raises(ValueError, match="sparse_fraction"):
        tfm.forward(cfg, tree, tokens, sparse_fraction=1.5)


def test_greedy_search_finds_exact_low_rank_path_for_a_low_rank_layer():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 2)) @ rng.normal(size=(2, 32))  # rank 2: the low-rank path is exact
    params = {"layer_0": {"attn": {}, "mlp": {"up": {"kernel": jnp.asarray(w, jnp.float32)}}}}
    factors = rs.compute_factors(params)
    x = {"layer_0/mlp/up": rng.normal(size=(64, 32)).astype(np.float32)}
    xh = {"layer_0/mlp/up": rng.normal(size=(64, 32)).astype(np.float32)}
    alphas, errors = rs.greedy_alpha_search(params, factors, x, xh, 0.5)
    assert errors["layer_0/mlp/up"] < 1e-5
    assert alphas["layer_0/mlp/up"] < 1.0  # pure thresholding (α = 1) would lose half the input
    b1 = rs.layer_budget("u", 32, 32, 0.5, 1.0)
    assert rs.relative_error(xh["layer_0/mlp/up"], w, rs.build_entry("u", b1, factors["layer_0/mlp/up"],
                                                                       x["layer_0/mlp/up"])) > 0.1


def test_evolutionary_search_never_worse_than_its_start():
    cfg, params, tokens = _tiny()
    factors = rs.compute_factors(params)
    inputs = rs.collect_inputs(cfg, params, tokens)
    search_tokens = jax.random.randint(jax.random.PRNGKey(9), (2, 10), 0, cfg.vocab_size)
    names = list(rs.projections(params))
    init = {n: 0.95 for n in names}
    alphas, best, history = rs.evolutionary_alpha_search(cfg, params, factors, inputs, search_tokens, 0.5, init=init,
                                                         generations=2, population=4, seed=0)
    assert set(alphas) == set(names) and all(0.0 <= a <= 1.0 for a in alphas.values())
    assert history == sorted(history, reverse=True) and best == history[-1]
