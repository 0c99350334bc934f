"""The one Transformer: every flavour runs under strict rank promotion, causality, KV cache, packing; the hashable
model object."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.models import Model, get_preset, init_params
from jaxllm.models import transformer as tfm


@pytest.mark.parametrize("name", ["tiny_mobilellm", "tiny_llama", "tiny_llada", "tiny_gpt2"])
def test_every_tiny_preset_runs_with_hidden_states(name):
    cfg = get_preset(name)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 7)), jnp.int32)
    out = jax.jit(lambda p, t: tfm.forward(cfg, p, t, return_layer_hiddens=True, return_attention=True))(params, tokens)
    assert out.logits.shape == (2, 7, cfg.vocab_size) and out.hidden.shape == (2, 7, cfg.d_model)
    assert len(out.layer_hiddens) == cfg.n_layers + 1 and np.isfinite(np.asarray(out.logits)).all()


def test_causal_model_output_depends_only_on_the_past():
    cfg = get_preset("tiny_mobilellm")
    params = init_params(cfg, jax.random.PRNGKey(1))
    emb = jax.random.normal(jax.random.PRNGKey(2), (1, 6, cfg.d_model))
    jac = jax.jit(jax.jacobian(lambda e: tfm.forward(cfg, params, input_embeds=e).hidden[0, 2].sum()))(emb)
    assert float(jnp.abs(jac[0, 3:]).max()) == 0.0 and float(jnp.abs(jac[0, :3]).max()) > 0


def test_kv_cache_decode_matches_full_forward():
    cfg = get_preset("tiny_mobilellm")
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
    full = jax.jit(lambda p, t: tfm.forward(cfg, p, t).logits)(params, tokens)
    step = jax.jit(lambda p, t, c, i: tfm.forward(cfg, p, t, cache=c, cache_index=i))
    cache = tfm.init_cache(cfg, 2, 16)
    out = step(params, tokens[:, :4], cache, 0)
    steps = [out.logits]
    cache = out.cache
    for t in range(4, 9):
        out = step(params, tokens[:, t:t + 1], cache, t)
        cache = out.cache
        steps.append(out.logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_segment_ids_isolate_packed_documents():
    cfg = get_preset("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    a = jnp.asarray([[5, 6, 7]], jnp.int32)
    b = jnp.asarray([[8, 9]], jnp.int32)
    packed = jnp.concatenate([a, b], 1)
    fwd = jax.jit(lambda p, t, s, q: tfm.forward(cfg, p, t, segment_ids=s, positions=q).logits)
    out = fwd(params, packed, jnp.asarray([[1, 1, 1, 2, 2]]), jnp.asarray([[0, 1, 2, 0, 1]]))
    want = jnp.concatenate([fwd(params, a, jnp.ones_like(a), jnp.arange(3)[None]),
                            fwd(params, b, jnp.ones_like(b), jnp.arange(2)[None])], 1)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_interleaved_and_half_rope_differ():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 2, 8))
    pos = jnp.arange(3)[None]
    rope = jax.jit(tfm.rope, static_argnums=(2, 3))
    half, inter = rope(x, pos, 1e4, "half"), rope(x, pos, 1e4, "interleaved")
    assert float(jnp.abs(half - inter).max()) > 1e-2
    # both are rotations: norms of every pair are kept
    np.testing.assert_allclose(jnp.linalg.norm(inter, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# The model object.


def test_model_call_equals_forward_with_masks_and_positions():
    cfg = get_preset("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6)), jnp.int32)
    mask = jnp.asarray([[True] * 6, [False, False] + [True] * 4])
    pos = jnp.asarray([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]], jnp.int32)
    got = Model(cfg)(params, tokens, attention_mask=mask, positions=pos)
    want = tfm.forward(cfg, params, tokens, attention_mask=mask, positions=pos).logits
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the same computation, bit for bit


def test_equal_models_are_one_static_jit_argument():
    """Two Models built from equal configs are equal and hash equal, so a function jitted with the model static
    traces once for both (no global cache needed); another config traces again."""
    cfg = get_preset("tiny_llama", n_layers=1)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jnp.zeros((1, 4), jnp.int32)
    a, b = Model(cfg), Model(get_preset("tiny_llama", n_layers=1))
    assert a is not b and a == b and hash(a) == hash(b)

    @partial(jax.jit, static_argnums=0)
    @chex.assert_max_traces(n=2)
    def logits(model, p, t):
        return model(p, t)

    logits(a, params, tokens)
    logits(b, params, tokens)  # cache hit: no second trace
    logits(Model(get_preset("tiny_llama", n_layers=1, d_ff=64)), init_params(
        get_preset("tiny_llama", n_layers=1, d_ff=64), jax.random.PRNGKey(0)), tokens)  # second trace
    with pytest.raises(AssertionError, match="traced > 2"):
        logits(Model(get_preset("tiny_llama", n_layers=1, d_ff=32)), init_params(
            get_preset("tiny_llama", n_layers=1, d_ff=32), jax.random.PRNGKey(0)), tokens)


def test_model_rejects_a_config_of_the_wrong_kind_and_unhashable_linears():
    with pytest.raises(TypeError, match="TransformerConfig"):
        Model({"d_model": 64})
    with pytest.raises(TypeError, match="hashable"):
        Model(get_preset("tiny_llama"), linear=[tfm.dense_linear])
