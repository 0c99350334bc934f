"""LLaDA sampler: schedule, blocks, inpainting, determinism, and parity with a numpy port of `generate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.sampling import diffusion as ds

VOCAB, MASK, D = 12, 11, 16


def toy_apply(params, tokens):
    """A cheap bidirectional model: each position sees its own embedding, its position and the sequence mean."""
    h = params["emb"][tokens] + params["pos"][None, : tokens.shape[1]]
    ctx = jnp.mean(h, axis=1, keepdims=True)
    return jnp.tanh(h + jnp.broadcast_to(ctx, h.shape)) @ params["out"] * 4.0


def toy_params(seed=0, L=64):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"emb": jax.random.normal(k1, (VOCAB, D)), "pos": jax.random.normal(k2, (L, D)),
            "out": jax.random.normal(k3, (D, VOCAB))}


def reference_generate(apply_fn, params, prompt, steps, gen_length, block_length, cfg_scale=0.0):
    """numpy port of LLaDA `generate` at temperature 0 with low-confidence remasking (ties: lower index)."""
    prompt = np.asarray(prompt)
    B, P = prompt.shape
    x = np.full((B, P + gen_length), MASK, np.int64)
    x[:, :P] = prompt
    prompt_index = x != MASK
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for nb in range(num_blocks):
        block_mask = x[:, P + nb * block_length: P + (nb + 1) * block_length] == MASK
        m = block_mask.sum(1, keepdims=True)
        ntt = np.broadcast_to(m // spb, (B, spb)).copy()
        ntt += np.arange(spb)[None] < (m % spb)
        for i in range(spb):
            mask_index = x == MASK
            if cfg_scale > 0:
                un_x = x.copy()
                un_x[prompt_index] = MASK
                both = np.asarray(apply_fn(params, jnp.asarray(np.concatenate([x, un_x]))), np.float64)
                logits, un = both[:B], both[B:]
                logits = un + (cfg_scale + 1) * (logits - un)
            else:
                logits = np.asarray(apply_fn(params, jnp.asarray(x)), np.float64)
            x0 = logits.argmax(-1)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            x0_p = np.take_along_axis(p, x0[..., None], -1)[..., 0]
            x0_p[:, P + (nb + 1) * block_length:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            conf = np.where(mask_index, x0_p, -np.inf)
            for j in range(B):
                sel = np.argsort(-conf[j], kind="stable")[: ntt[j, i]]
                x[j, sel] = x0[j, sel]
    return x


@pytest.fixture(scope="module")
def params():
    return toy_params()


PROMPT = jnp.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], jnp.int32)


@pytest.mark.parametrize("gen,block,steps", [(16, 4, 8), (16, 16, 16), (12, 4, 9), (16, 8, 4)])
def test_matches_numpy_port_of_llada_generate(params, gen, block, steps):
    cfg = ds.DiffusionSamplerConfig(gen_length=gen, block_length=block, steps=steps, mask_id=MASK)
    out = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(0), cfg)
    want = reference_generate(toy_apply, params, PROMPT, steps, gen, block)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


def test_cfg_matches_numpy_port(params):
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=4, steps=4, mask_id=MASK, cfg_scale=1.5)
    out = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(0), cfg)
    want = reference_generate(toy_apply, params, PROMPT, 4, 8, 4, cfg_scale=1.5)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


def _fixed_example(B, G, seed=0):
    rng = np.random.default_rng(seed)
    fixed = rng.random((B, G)) < 0.3
    fixed_tokens = rng.integers(0, MASK, (B, G))
    return jnp.asarray(fixed_tokens, jnp.int32), jnp.asarray(fixed)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_schedule_blocks_and_fixed_positions(params, remasking):
    G, bl, steps = 24, 8, 9  # 3 blocks of 3 steps; uneven counts exercise the +1 remainder rule
    cfg = ds.DiffusionSamplerConfig(gen_length=G, block_length=bl, steps=steps, mask_id=MASK,
                                    remasking=remasking, temperature=0.7)
    fixed_tokens, fixed = _fixed_example(3, G)
    out = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(5), cfg, fixed_tokens=fixed_tokens, fixed=fixed)
    tokens, step = np.asarray(out.tokens)[:, 3:], np.asarray(out.unmask_step)
    fixed, fixed_tokens = np.asarray(fixed), np.asarray(fixed_tokens)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, :3], np.asarray(PROMPT))
    # fixed positions are untouched and never "unmasked"
    np.testing.assert_array_equal(tokens[fixed], fixed_tokens[fixed])
    assert np.all(step[fixed] == -1) and np.all(step[~fixed] >= 0)
    assert np.all(tokens != MASK)
    spb = steps // (G // bl)
    for b in range(3):
        for blk in range(G // bl):
            sl = slice(blk * bl, (blk + 1) * bl)
            s = step[b, sl][~fixed[b, sl]]
            # no position is unmasked before its block is reached (or after it ends)
            assert np.all(s // spb == blk)
            m = int((~fixed[b, sl]).sum())
            want = [m // spb + (i < m % spb) for i in range(spb)]
            got = [int((s == blk * spb + i).sum()) for i in range(spb)]
            assert got == want, (b, blk, got, want)
    conf = np.asarray(out.confidence)
    assert np.all((conf[~fixed] > 0) & (conf[~fixed] <= 1)) and np.all(conf[fixed] == 1)


def test_llada_rl_setting_unmasks_two_tokens_per_step():
    counts = np.asarray(ds.num_transfer_tokens(jnp.array([32, 31, 0]), 16))
    assert counts[0].tolist() == [2] * 16
    assert counts[1].tolist() == [2] * 15 + [1]
    assert counts[2].tolist() == [0] * 16


def test_greedy_is_deterministic_and_temperature_is_not(params):
    cfg = ds.DiffusionSamplerConfig(gen_length=16, block_length=8, steps=8, mask_id=MASK)
    a = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(0), cfg)
    b = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(1), cfg)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.unmask_step), np.asarray(b.unmask_step))
    hot = ds.DiffusionSamplerConfig(gen_length=16, block_length=8, steps=8, mask_id=MASK, temperature=1.0)
    c = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(0), hot)
    d = ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(1), hot)
    assert np.any(np.asarray(c.tokens) != np.asarray(d.tokens))


def test_gumbel_max_samples_softmax_at_temperature():
    logits = jnp.array([[[1.0, 0.0, -1.0, 2.0]]])
    tau = 0.7
    n = 20000
    draws = jax.vmap(lambda k: ds.gumbel_argmax(k, logits, tau)[0, 0])(jax.random.split(jax.random.PRNGKey(0), n))
    freq = np.bincount(np.asarray(draws), minlength=4) / n
    p = np.asarray(jax.nn.softmax(logits[0, 0] / tau))
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / n).max())


def test_ties_break_to_lower_position():
    conf = jnp.array([[0.5, 0.9, 0.5, 0.5, 0.9]])
    sel = np.asarray(ds._top_k_by_row(conf, jnp.array([3])))
    assert sel.tolist() == [[True, True, False, False, True]]


def test_compiles_once_per_config(params):
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=8, steps=4, mask_id=MASK, temperature=0.5)
    ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(0), cfg)
    before = ds._sample_jit._cache_size()
    ds.generate(toy_apply, params, PROMPT, jax.random.PRNGKey(1), cfg)
    assert ds._sample_jit._cache_size() == before


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="block_length"):
        ds.DiffusionSamplerConfig(gen_length=10, block_length=4, steps=4)
    with pytest.raises(ConfigError, match="steps"):
        ds.DiffusionSamplerConfig(gen_length=16, block_length=4, steps=6)
    with pytest.raises(ConfigError, match="remasking"):
        ds.DiffusionSamplerConfig(remasking="topk")
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=8, steps=8, mask_id=MASK)
    with pytest.raises(ValueError, match="fixed"):
        ds.generate(toy_apply, toy_params(), PROMPT, jax.random.PRNGKey(0), cfg,
                    fixed=jnp.zeros((3, 7), bool), fixed_tokens=jnp.zeros((3, 7), jnp.int32))


def test_runs_on_the_transformer_with_causal_false():
    from jaxllm.models import get_preset, init_params

    mcfg = get_preset("tiny_llada", d_model=32, n_layers=1, d_ff=64)
    p = init_params(mcfg, jax.random.PRNGKey(0))
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=4, steps=4, mask_id=mcfg.mask_token_id)
    fn = ds.transformer_apply_fn(mcfg)
    out = ds.generate(fn, p, PROMPT, jax.random.PRNGKey(0), cfg)
    want = reference_generate_transformer(fn, p, cfg)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


def reference_generate_transformer(fn, p, cfg):
    global MASK
    old, MASK = MASK, cfg.mask_id
    try:
        return reference_generate(fn, p, PROMPT, cfg.steps, cfg.gen_length, cfg.block_length)
    finally:
        MASK = old
