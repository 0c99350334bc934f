"""LoRA (jaxllm.rl.lora): the adapted model starts equal to the base one, applies W + (α/r)·A·B exactly
(checked against a numpy re-derivation of the merged kernel), and its optimizer moves only the factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.models import Model, get_preset, init_params
from jaxllm.rl.lora import LoraConfig, LoraLinear, add_lora, lora_optimizer, merge_lora

CFG = get_preset("tiny_llada", vocab_size=16, max_seq_len=8, mask_token_id=2, d_model=32, n_layers=2, n_heads=4,
                 d_ff=64)
LORA = LoraConfig(rank=4, alpha=8.0, targets=("q", "o", "up"))
TOKENS = jnp.array([[3, 4, 5, 2, 2, 6, 7, 8]], jnp.int32)


def _setup():
    base = init_params(CFG, jax.random.PRNGKey(0))
    return base, add_lora(base, LORA, jax.random.PRNGKey(1))


def test_starts_equal_to_base_and_merges_exactly():
    base, params = _setup()
    model = jax.jit(Model(CFG, linear=LoraLinear(LORA.scale)))
    dense = jax.jit(Model(CFG))
    np.testing.assert_array_equal(model(params, TOKENS), dense(base, TOKENS))  # B = 0 at init
    # non-zero B: the adapted forward equals the dense forward of the numpy-merged kernels (float32 tolerance)
    params = jax.tree.map(lambda x: x, params)
    rng = np.random.default_rng(0)
    merged = jax.tree.map(np.asarray, base)
    for i in range(CFG.n_layers):
        for blk, name in (("attn", "q"), ("attn", "o"), ("mlp", "up")):
            p = params[f"layer_{i}"][blk][name]
            p["lora_b"] = jnp.asarray(rng.normal(size=p["lora_b"].shape), jnp.float32)
            a, b = np.asarray(p["lora_a"], np.float64), np.asarray(p["lora_b"], np.float64)
            n_in = 2 if name == "o" else 1
            delta = (a.reshape(-1, LORA.rank) @ b.reshape(LORA.rank, -1)).reshape(p["kernel"].shape)
            merged[f"layer_{i}"][blk][name]["kernel"] = (np.asarray(p["kernel"], np.float64) + 2.0 * delta
                                                         ).astype(np.float32)
            assert a.shape[:n_in] == p["kernel"].shape[:n_in]
    out = model(params, TOKENS)
    np.testing.assert_allclose(out, dense(merged, TOKENS), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense(merge_lora(params, LORA), TOKENS), out, rtol=1e-5, atol=1e-5)


def test_optimizer_moves_only_the_factors():
    _, params = _setup()
    model = Model(CFG, linear=LoraLinear(LORA.scale))
    opt = lora_optimizer(optax.adam(1e-2))
    state = opt.init(params)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model(p, TOKENS) ** 2)))(params)
    updates, _ = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    moved = {jax.tree_util.keystr(k): bool(np.any(np.asarray(a) != np.asarray(b)))
             for (k, a), b in zip(jax.tree_util.tree_flatten_with_path(new)[0], jax.tree.leaves(params))}
    assert all(v == ("lora_" in k) or ("lora_a" in k and not v) for k, v in moved.items()), moved
    assert any(v for k, v in moved.items() if "lora_b" in k)


def test_bad_targets_are_named():
    with pytest.raises(ConfigError, match=r"lora.targets \['qq'\] are not projections"):
        LoraConfig(rank=2, targets=("qq",))
    with pytest.raises(ConfigError, match="match no projection"):
        add_lora({"embed": jnp.zeros((2, 2))}, LoraConfig(rank=2), jax.random.PRNGKey(0))
