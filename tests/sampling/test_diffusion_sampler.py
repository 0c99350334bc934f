"""LLaDA sampler: schedule, blocks, inpainting, determinism, parity with a numpy port of `generate`, left-padded
prompts of different lengths, and the mask token never generated (by default)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.models import Model, get_preset, init_params
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


def reference_generate(apply_fn, params, prompt, steps, gen_length, block_length, cfg_scale=0.0, exclude_mask=False):
    """numpy port of LLaDA `generate` at temperature 0 with low-confidence remasking (ties: lower index).

    exclude_mask: x0 is the argmax over the tokens other than MASK (our default); the confidence stays
    softmax(logits)[x0] over the whole vocabulary."""
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
            x0 = np.where(np.arange(logits.shape[-1]) == MASK, -np.inf, logits).argmax(-1) if exclude_mask \
                else logits.argmax(-1)
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


# The toy model's greedy choices never include the mask id, so these hold with or without its exclusion
# (the exclusion itself is checked against the port with `biased_apply` below).
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
    mcfg = get_preset("tiny_llada", d_model=32, n_layers=1, d_ff=64)
    p = init_params(mcfg, jax.random.PRNGKey(0))
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=4, steps=4, mask_id=mcfg.mask_token_id)
    model = Model(mcfg)
    out = ds.generate(model, p, PROMPT, jax.random.PRNGKey(0), cfg)
    want = reference_generate_transformer(model, p, cfg, exclude_mask=True)
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


def reference_generate_transformer(fn, p, cfg, prompt=PROMPT, exclude_mask=False):
    global MASK
    old, MASK = MASK, cfg.mask_id
    try:
        return reference_generate(fn, p, prompt, cfg.steps, cfg.gen_length, cfg.block_length, cfg.cfg_scale,
                                  exclude_mask=exclude_mask)
    finally:
        MASK = old


# ----------------------------------------------------------------------------------------------------------
# Left-padded prompts of different lengths (real batches), on the Transformer.

# init_std 0.3: an untrained model whose samples depend on the prompt (at 0.02 every row decodes one token)
TINY_ARGS = dict(vocab_size=24, mask_token_id=23, d_model=32, n_layers=2, d_ff=64, max_seq_len=64, init_std=0.3)
TINY = get_preset("tiny_llada", **TINY_ARGS)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, jax.random.PRNGKey(3))


def _padded_batch(prompts, P, pad_id):
    out = np.full((len(prompts), P), pad_id, np.int32)
    for i, pr in enumerate(prompts):
        out[i, P - len(pr):] = pr
    return jnp.asarray(out), jnp.asarray([len(pr) for pr in prompts])


@pytest.mark.parametrize("cfg_scale", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_padded_row_equals_the_same_prompt_alone(tiny_params, cfg_scale):
    """A row's greedy sample does not depend on the padding its batch needed: hidden keys, positions from its
    first real token. Tokens and unmask steps are exactly those of the row sampled alone (the confidences too,
    up to float32 reduction order over the longer key axis)."""
    model = Model(TINY)
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=4, steps=8, mask_id=TINY.mask_token_id,
                                    cfg_scale=cfg_scale)
    prompts = [[3, 4, 5, 6, 7, 8], [9, 10, 11], [12]]
    batch, lengths = _padded_batch(prompts, 6, pad_id=17)  # a real token as pad: only the mask may hide it
    out = ds.generate(model, tiny_params, batch, jax.random.PRNGKey(0), cfg, prompt_lengths=lengths)
    for b, pr in enumerate(prompts):
        alone = ds.generate(model, tiny_params, jnp.asarray([pr], jnp.int32), jax.random.PRNGKey(0), cfg)
        np.testing.assert_array_equal(np.asarray(out.tokens)[b, 6:], np.asarray(alone.tokens)[0, len(pr):])
        np.testing.assert_array_equal(np.asarray(out.unmask_step)[b], np.asarray(alone.unmask_step)[0])
        np.testing.assert_allclose(np.asarray(out.confidence)[b], np.asarray(alone.confidence)[0], rtol=1e-5)
    # without the layout the padding is seen as text and the short rows change
    blind = ds.generate(model, tiny_params, batch, jax.random.PRNGKey(0), cfg)
    assert not np.array_equal(np.asarray(blind.tokens)[1:], np.asarray(out.tokens)[1:])


def test_full_length_prompt_lengths_equal_the_unpadded_sampler(tiny_params):
    model = Model(TINY)
    cfg = ds.DiffusionSamplerConfig(gen_length=8, block_length=8, steps=4, mask_id=TINY.mask_token_id)
    prompt = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, TINY.mask_token_id)
    a = ds.generate(model, tiny_params, prompt, jax.random.PRNGKey(0), cfg)
    b = ds.generate(model, tiny_params, prompt, jax.random.PRNGKey(0), cfg, prompt_lengths=jnp.full((3,), 5))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.unmask_step), np.asarray(b.unmask_step))
    # an all-True mask changes XLA's fusion of the softmax: float32 rounding only
    np.testing.assert_allclose(np.asarray(a.confidence), np.asarray(b.confidence), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(a.tokens),
                                  reference_generate_transformer(model, tiny_params, cfg, prompt, exclude_mask=True))


def test_bad_prompt_lengths_are_named(tiny_params):
    cfg = ds.DiffusionSamplerConfig(gen_length=4, block_length=4, steps=4, mask_id=TINY.mask_token_id)
    prompt = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"prompt_lengths must lie in \[0, 3\]"):
        ds.generate(Model(TINY), tiny_params, prompt, jax.random.PRNGKey(0), cfg, prompt_lengths=jnp.array([3, 4]))
    with pytest.raises(ValueError, match="prompt_lengths must have shape"):
        ds.generate(Model(TINY), tiny_params, prompt, jax.random.PRNGKey(0), cfg, prompt_lengths=jnp.array([3]))
    with pytest.raises(ValueError, match="mask_id=30 is outside the model's vocabulary"):
        ds.generate(Model(TINY), tiny_params, prompt, jax.random.PRNGKey(0),
                    ds.DiffusionSamplerConfig(gen_length=4, block_length=4, steps=4, mask_id=30))


def test_equal_models_share_one_compilation(tiny_params):
    """The model object is a static jit argument: a Model rebuilt from an equal config reuses the trace."""
    cfg = ds.DiffusionSamplerConfig(gen_length=4, block_length=4, steps=2, mask_id=TINY.mask_token_id)
    prompt = jnp.zeros((2, 3), jnp.int32)
    ds.generate(Model(TINY), tiny_params, prompt, jax.random.PRNGKey(0), cfg)
    before = ds._sample_jit._cache_size()
    rebuilt = Model(get_preset("tiny_llada", **TINY_ARGS))
    ds.generate(rebuilt, tiny_params, prompt, jax.random.PRNGKey(1), cfg)
    assert ds._sample_jit._cache_size() == before


# ----------------------------------------------------------------------------------------------------------
# The mask token as generated text (SPG issue: rollouts must never contain it).


def biased_apply(params, tokens):
    """The toy model with the mask id's logit raised to the level of the top logits (the most likely token at
    about half the positions), as an untrained model can have it."""
    return toy_apply(params, tokens).at[..., MASK].add(45.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_token_is_never_generated_by_default(params, temperature):
    cfg = ds.DiffusionSamplerConfig(gen_length=16, block_length=8, steps=8, mask_id=MASK, temperature=temperature)
    ref = ds.generate(biased_apply, params, PROMPT, jax.random.PRNGKey(0),
                      ds.DiffusionSamplerConfig(**{**cfg.__dict__, "allow_mask_token": True}))
    assert np.any(np.asarray(ref.tokens)[:, 3:] == MASK)  # LLaDA's reference writes the mask id as text
    out = ds.generate(biased_apply, params, PROMPT, jax.random.PRNGKey(0), cfg)
    gen = np.asarray(out.tokens)[:, 3:]
    assert not np.any(gen == MASK)
    if temperature == 0.0:  # greedy: the most likely token other than the mask, LLaDA's confidence kept
        want = reference_generate(biased_apply, params, PROMPT, 8, 16, 8, exclude_mask=True)
        np.testing.assert_array_equal(np.asarray(out.tokens), want)
