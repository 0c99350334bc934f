"""R-Sparse method: budget rule, exactness at full rank, calibration, the decoder transform (an injected linear,
with the Pallas kernel reachable from it), search."""

import ast
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.models.presets import get_preset
from jaxllm.sparse import rsparse as rs
from pallas_kernels import rsparse_gemv as rk


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
    sparse = rs.rsparse_model(cfg, 1.0)(tree, tokens)
    np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=1e-5)


def test_prefill_dense_then_sparse_decode_matches_sparse_fraction_forward():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.7)
    T, P = tokens.shape[1], 8
    full = rs.rsparse_model(cfg, (T - P) / T)(tree, tokens)
    dense = tfm.forward(cfg, params, tokens).logits
    np.testing.assert_allclose(np.asarray(full[:, :P]), np.asarray(dense[:, :P]), atol=1e-5)  # prefix untouched
    assert float(jnp.abs(full[:, P:] - dense[:, P:]).max()) > 1e-3  # the sparse tokens do change
    cache = tfm.init_cache(cfg, tokens.shape[0], T)
    out = Model(cfg).forward(tree, tokens[:, :P], cache=cache, cache_index=0)  # prefill: the dense model
    cache, steps = out.cache, []
    decode = rs.rsparse_model(cfg, 1.0)
    for t in range(P, T):
        out = decode.forward(tree, tokens[:, t:t + 1], cache=cache, cache_index=t)
        cache = out.cache
        steps.append(out.logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full[:, P:]), atol=1e-4)


def test_kv_cache_greedy_decode_through_the_cpu_gather_equals_the_masked_dense_path():
    """The decoder's R-Sparse path (`cpu_gather=True`: only the kept weight rows are read) gives the same greedy
    tokens as the masked-dense jnp path, and logits within float32 rounding (1e-4: the gather sums the kept rows
    in another order), while differing from the dense model (so the sparse path really ran)."""
    from jaxllm.sampling.autoregressive import SamplingConfig, generate

    if jax.default_backend() != "cpu":
        pytest.skip("the gather path is the CPU backend's")
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.7)
    prompts = [tokens[0, :6].tolist(), tokens[1, :6].tolist()]
    s = SamplingConfig(max_new_tokens=8)
    key = jax.random.PRNGKey(0)
    gathered = generate(rs.rsparse_model(cfg, 1.0, cpu_gather=True), tree, prompts, key, s)
    masked = generate(rs.rsparse_model(cfg, 1.0, use_kernel=False), tree, prompts, key, s)
    np.testing.assert_array_equal(np.asarray(gathered.tokens), np.asarray(masked.tokens))
    x = tokens[:, :1]
    lg = rs.rsparse_model(cfg, 1.0, cpu_gather=True)(tree, x)
    lm = rs.rsparse_model(cfg, 1.0, use_kernel=False)(tree, x)
    np.testing.assert_allclose(np.asarray(lg), np.asarray(lm), atol=1e-4)
    assert float(jnp.abs(lm - tfm.forward(cfg, params, x).logits).max()) > 1e-3


def test_shape_mismatch_names_the_layer():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.5)
    bad = jax.tree.map(lambda v: v, tree)
    bad["layer_1"]["mlp"]["down"]["rsparse"]["scale"] = jnp.ones((7,))
    with pytest.raises(ValueError, match="layer_1/mlp/down"):
        rs.rsparse_model(cfg, 1.0)(bad, tokens)
    f = rs.svd_factors(np.ones((8, 4)))
    with pytest.raises(ValueError, match="layer_0/attn/q"):
        rs.build_entry("layer_0/attn/q", rs.layer_budget("layer_0/attn/q", 8, 4, 0.5, 0.5), f, np.ones((3, 5)))
    with pytest.raises(ValueError, match="sparse_fraction"):
        rs.RSparseLinear(sparse_fraction=1.5)


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


def _search_kl(cfg, params, factors, inputs, search_tokens, alphas):
    """KL(dense ‖ R-Sparse at s = 0.5 with `alphas`) of next-token distributions, recomputed independently of the
    search (no rank padding, numpy float64 for the KL)."""
    tree, _ = rs.rsparsify(cfg, params, None, 0.5, alphas, factors=factors, inputs=inputs)
    dense = np.asarray(tfm.forward(cfg, params, search_tokens).logits, np.float64)
    sparse = np.asarray(rs.rsparse_model(cfg, 1.0)(tree, search_tokens), np.float64)
    lp, lq = (x - x.max(-1, keepdims=True) for x in (dense, sparse))
    lp, lq = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (lp, lq))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), -1)))


def test_evolutionary_search_never_worse_than_its_start():
    """The returned α is the one whose fitness is returned (recomputed here: the KL of the model it builds), and
    it is at least as good as the search's start (init) and as pure thresholding (α = 1), both of which are in
    its first population; the best fitness never rises across generations."""
    cfg, params, tokens = _tiny()
    factors = rs.compute_factors(params)
    inputs = rs.collect_inputs(cfg, params, tokens)
    search_tokens = jax.random.randint(jax.random.PRNGKey(9), (2, 10), 0, cfg.vocab_size)
    names = list(rs.projections(params))
    init = {n: 0.95 for n in names}
    alphas, best, history = rs.evolutionary_alpha_search(cfg, params, factors, inputs, search_tokens, 0.5, init=init,
                                                         generations=2, population=4, seed=0)
    assert set(alphas) == set(names)
    kl = lambda a: _search_kl(cfg, params, factors, inputs, search_tokens, a)  # noqa: E731
    # fp32 forwards of the same function with and without the search's rank padding: ~1e-7 apart (KL ~ 1e-2)
    np.testing.assert_allclose(kl(alphas), best, rtol=1e-3, atol=1e-6)
    start, thresholding = kl(init), kl({n: 1.0 for n in names})
    assert best <= start + 1e-6 and best <= thresholding + 1e-6, (best, start, thresholding)
    assert history == sorted(history, reverse=True) and best == history[-1]


# ----------------------------------------------------------------------------------------------------------
# The injected linear: no cycle, arrays-only trees, and the Pallas kernel reachable from rsparsify + forward.

ROOT = Path(__file__).resolve().parents[2]


def test_transformer_never_imports_the_sparse_package():
    """R-Sparse is injected (Model(cfg, linear=...)): transformer.py names no jaxllm.sparse module, and importing
    the models package does not load it."""
    tree = ast.parse((ROOT / "jaxllm/models/transformer.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("jaxllm.sparse") or n.startswith("pallas_kernels")], names
    code = "import sys, jaxllm.models; print(sorted(m for m in sys.modules if m.startswith('jaxllm.sparse')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_rsparse_tree_holds_only_arrays_and_the_linear_sees_every_projection():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.8)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(tree))
    seen = []

    def recording(name, p, x, eqn):
        seen.append(name)
        return tfm.dense_linear(name, p, x, eqn)

    Model(cfg, linear=recording).forward(tree, tokens)
    assert sorted(seen) == sorted(rs.projections(params))  # each once, named by the tree path R-Sparse calibrated


BLOCKS = rk.BlockSizes(block_k=32, block_n=32, block_r=16)  # tiny_llama's 64/32/128-wide layers fit


@pytest.mark.parametrize("padded_rank", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["exact_rank", "rank_mask"])
def test_pallas_kernel_through_rsparsify_and_forward_equals_jnp_path(padded_rank):
    """Decode-shaped calls (B·T ≤ 4 sparse rows) of a Model with RSparseLinear(interpret=True) run the Pallas GEMV
    (interpret mode on CPU) and give the jnp path's logits; longer calls stay on the jnp path. Tolerance: float32
    with a different summation order (kernel: per-tile fp32 sums; jnp: one dot), ~1e-6 on O(1) logits."""
    cfg = get_preset("tiny_llama", n_layers=1)  # one layer: interpret mode runs every kernel program in Python
    params = tfm.init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, cfg.vocab_size)
    pad = None
    if padded_rank:
        pad = {n: rs.layer_budget(n, *rs.kernel_matrix(n, p["kernel"]).shape, 0.5, 0.0).rank
               for n, p in rs.projections(params).items()}
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.7, pad_rank=pad)
    kernel = rs.rsparse_model(cfg, 1.0, interpret=True, blocks=BLOCKS)
    plain = rs.rsparse_model(cfg, 1.0, use_kernel=False)
    short = tokens[:, :2]  # 2 rows x 2 tokens = 4 sparse rows per projection
    assert "pallas_call" in str(jax.make_jaxpr(kernel)(tree, short))
    assert "pallas_call" not in str(jax.make_jaxpr(plain)(tree, short))
    assert "pallas_call" not in str(jax.make_jaxpr(kernel)(tree, tokens))  # 20 rows: the jnp path
    want = np.asarray(plain(tree, short))
    np.testing.assert_allclose(np.asarray(jax.jit(kernel)(tree, short)), want, atol=2e-5, rtol=1e-5)
    assert float(np.abs(want - np.asarray(Model(cfg)(params, short))).max()) > 1e-3  # sparsity is in effect
    # one decode step with a KV cache (2 rows x 1 token), the serving shape
    cache = tfm.init_cache(cfg, 2, tokens.shape[1])
    pre = Model(cfg).forward(tree, tokens[:, :5], cache=cache, cache_index=0)
    step = lambda m: m.forward(tree, tokens[:, 5:6], cache=pre.cache, cache_index=5).logits  # noqa: E731
    np.testing.assert_allclose(np.asarray(step(kernel)), np.asarray(step(plain)), atol=2e-5, rtol=1e-5)


def test_models_with_equal_sparse_linears_are_equal_and_hash_equal():
    cfg = get_preset("tiny_llama")
    a, b = rs.rsparse_model(cfg, 0.5, blocks=BLOCKS), rs.rsparse_model(get_preset("tiny_llama"), 0.5, blocks=BLOCKS)
    assert a == b and hash(a) == hash(b)
    assert a != rs.rsparse_model(cfg, 1.0, blocks=BLOCKS) and a != Model(cfg)


def _has_gpu():
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a GPU (the Pallas Triton lowering is GPU-only)")
def test_sparse_decode_on_gpu_dispatches_to_the_compiled_kernel():
    cfg, params, tokens = _tiny()
    tree, _ = rs.rsparsify(cfg, params, tokens, 0.5, 0.7)
    kernel, plain = rs.rsparse_model(cfg, 1.0, blocks=BLOCKS), rs.rsparse_model(cfg, 1.0, use_kernel=False)
    short = tokens[:, :2]
    assert "pallas_call" in str(jax.make_jaxpr(kernel)(tree, short))
    got, want = np.asarray(jax.jit(kernel)(tree, short)), np.asarray(jax.jit(plain)(tree, short))
    print(f"GPU kernel vs jnp path through the model: max abs logit diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)  # GPU dots may use other accumulation orders
