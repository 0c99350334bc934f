"""Continuous-thought forward on the one Transformer: exactness, gradients through thoughts, set loss."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.data.tasks import reachability as rd
from jaxllm.models import coconut
from jaxllm.models import transformer as tfm

CFG = tfm.TransformerConfig(vocab_size=rd.VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                            max_seq_len=64, flavour="gpt2", dropout=0.0)
GRAPHS = rd.GraphConfig(min_nodes=6, max_nodes=8, hops=(2,), max_edges=10)


def _batch(stage=2, K=2):
    probs = rd.generate_problems(3, GRAPHS, seed=0)
    return rd.latent_batch(probs, stage, np.random.default_rng(0), max_latent=K, max_edges=GRAPHS.max_edges)


def test_thoughts_equal_a_naive_loop_of_full_forwards():
    params = tfm.init_params(CFG, jax.random.PRNGKey(0))
    b = _batch()
    P = rd.prompt_len(GRAPHS.max_edges)
    embeds = tfm.embed_tokens(CFG, params, jnp.asarray(b["tokens"]))
    res = jax.jit(lambda e: coconut.continuous_thought_forward(
        CFG, params, e, 2, P, positions=jnp.asarray(b["positions"]), attention_mask=jnp.asarray(b["attention_mask"])))(embeds)
    full = jax.jit(lambda e: tfm.forward(CFG, params, input_embeds=e, positions=jnp.asarray(b["positions"]),
                                         attention_mask=jnp.asarray(b["attention_mask"])).hidden)
    e = np.asarray(embeds).copy()
    for k in range(2):  # unsliced full-length forward each time: causality makes slicing exact
        h = full(jnp.asarray(e))
        e[:, P + k] = np.asarray(h[:, P + k - 1])
    np.testing.assert_allclose(np.asarray(res.thoughts), e[:, P:P + 2], atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.embeds), e, atol=1e-5)
    # the thought is the final-normed state: LayerNorm output has zero mean and unit variance before scale
    assert np.allclose(np.asarray(res.thoughts).mean(-1), 0, atol=1e-5)


def test_gradients_flow_through_thoughts():
    params = tfm.init_params(CFG, jax.random.PRNGKey(1))
    b = {k: jnp.asarray(v) for k, v in _batch(stage=5).items()}  # answer read at [A] after 2 thoughts
    P = rd.prompt_len(GRAPHS.max_edges)

    def loss(p, stop):
        embeds = tfm.embed_tokens(CFG, p, b["tokens"])
        if stop:  # reference: thoughts treated as constants
            res = coconut.continuous_thought_forward(CFG, jax.lax.stop_gradient(p), embeds, 2, P,
                                                     positions=b["positions"], attention_mask=b["attention_mask"])
            embeds = embeds.at[:, P:P + 2].set(jax.lax.stop_gradient(res.thoughts))
            out = tfm.forward(CFG, p, input_embeds=embeds, positions=b["positions"], attention_mask=b["attention_mask"])
            logits = out.logits
        else:
            logits = coconut.latent_logits(CFG, p, b, 2, P)[1].out.logits
        lg = jnp.take_along_axis(logits, b["read_pos"][:, None, None], 1)[:, 0]
        return jnp.mean(coconut.set_nll(lg, b["label_set"]))

    loss = jax.jit(loss, static_argnums=1)
    g_full = jax.jit(jax.grad(loss), static_argnums=1)(params, False)
    g_stop = jax.jit(jax.grad(loss), static_argnums=1)(params, True)
    diff = jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a - c))), g_full, g_stop)
    assert max(jax.tree.leaves(diff)) > 1e-6
    # The directional derivative of the full loss matches central finite differences. The Transformer keeps its
    # norms, attention scores and logits in float32 by design, so float64 is not available; the step comes from
    # the float32 error analysis instead. Central differences err by C·h² (truncation) + δ/(h·|f'|) (rounding of f,
    # δ ≈ u·|f| = 6e-8 · 3.8). Measured on this model: the relative error is 1.57e-2, 3.98e-3, 6.3e-4 at
    # h = 0.1, 0.05, 0.02 (C = 1.57, the h² law); |f'| = 0.232, so δ/|f'| ≈ 9.8e-7 and the optimum
    # h* = (9.8e-7 / (2C))^(1/3) ≈ 7e-3 gives C·h*² + 9.8e-7/h* ≈ 2.2e-4 (measured 1.2e-4). rtol 2e-3 leaves a 10×
    # margin; the old h = 0.1, rtol 2e-2 was at its own truncation error (1.6e-2) and could not tell this gradient
    # from the stop-gradient one (g_stop, 2.6e-2 away), which this check now rejects 13× over.
    direction = jax.tree.map(lambda x: 0.01 * jax.random.normal(jax.random.PRNGKey(2), x.shape), params)
    eps = 7e-3
    plus = loss(jax.tree.map(lambda x, d: x + eps * d, params, direction), False)
    minus = loss(jax.tree.map(lambda x, d: x - eps * d, params, direction), False)
    fd = (plus - minus) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g_full), jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(fd), float(analytic), rtol=2e-3)
    stopped = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g_stop), jax.tree.leaves(direction)))
    assert abs(float(stopped) - float(fd)) > 5 * 2e-3 * abs(float(fd)), "the check separates the two gradients"


def test_set_nll_is_minus_log_of_set_probability():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 7))
    sets = jnp.asarray(np.random.default_rng(0).random((4, 7)) < 0.5).at[:, 0].set(True).astype(jnp.float32)
    p = np.asarray(jax.nn.softmax(logits, -1))
    want = -np.log((p * np.asarray(sets)).sum(-1))
    np.testing.assert_allclose(np.asarray(coconut.set_nll(logits, sets)), want, rtol=1e-5)
    one = jax.nn.one_hot(jnp.array([1, 2, 3, 4]), 7)
    ce = -np.log(p[np.arange(4), [1, 2, 3, 4]])
    np.testing.assert_allclose(np.asarray(coconut.set_nll(logits, one)), ce, rtol=1e-5)


def test_latent_forward_is_jitted_once_per_shape():
    params = tfm.init_params(CFG, jax.random.PRNGKey(0))
    P = rd.prompt_len(GRAPHS.max_edges)
    traces = []

    @jax.jit
    def f(p, b):
        traces.append(1)
        return coconut.latent_loss(CFG, p, b, None, 2, P)[0]

    for stage in (0, 1, 2, 5):  # every stage has the same static shape
        f(params, {k: jnp.asarray(v) for k, v in _batch(stage=stage).items()})
    assert len(traces) == 1
