"""The chunked LM head + cross-entropy (jaxllm.models.lm_head) and per-layer remat change memory, not values.

Claims: the chunked loss equals the full-logits loss in value and in every gradient (tied and untied heads, a
sequence that is not a multiple of the chunk, masked positions); `next_token_loss` picks it by config; the
automatic rule leaves small vocabularies on the full path; the chunked step and remat need fewer temporaries
(XLA's memory_analysis). Tolerances: float32, the same per-row matmuls, only summation order differs across
chunks (the dW accumulation, the weighted sum) -> rtol 1e-5 relative to the largest entry.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.models import Model, lm_head
from jaxllm.models import transformer as tfm
from jaxllm.train.lm import lm_task, next_token_loss, token_losses
from jaxllm.train.trainer import init_state, make_train_step


def _cfg(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)
    base.update(kw)
    return tfm.TransformerConfig(**base)


def _batch(cfg, B=3, T=11, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, size=(B, T + 1)).astype(np.int32)
    mask = (rng.random((B, T + 1)) > 0.25).astype(np.float32)
    return {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask)}


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.abs(b).max()), 1e-30)
    assert np.abs(a - b).max() <= rtol * scale, f"max diff {np.abs(a - b).max():.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_gradients_equal_the_full_logits(tied):
    cfg = _cfg(tie_embeddings=tied)
    params = tfm.init_params(cfg, jax.random.PRNGKey(1))
    batch = _batch(cfg)

    def full(p, h):
        logits = tfm.unembed(cfg, p, h)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][:, 1:, None], -1)[..., 0]
        return jnp.sum(nll * batch["loss_mask"][:, 1:]), nll

    def chunked(p, h):
        return lm_head.weighted_nll(cfg, p, h, batch["tokens"][:, 1:], batch["loss_mask"][:, 1:], chunk=4)

    h = jax.random.normal(jax.random.PRNGKey(2), (3, 11, cfg.d_model))  # 11 positions: chunks of 4 pad the last
    (v_full, nll_full), g_full = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(params, h)
    (v_chunk, nll_chunk), g_chunk = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(params, h)
    _close(v_chunk, v_full)
    _close(nll_chunk, nll_full)
    _close(g_chunk[1], g_full[1])
    head = "embed" if tied else "lm_head"
    _close(g_chunk[0][head], g_full[0][head])
    assert float(jnp.abs(g_full[0][head]).max()) > 0  # the comparison is not between two zero gradients


def test_next_token_loss_uses_the_chunked_head_by_config_with_the_same_gradients():
    cfg = _cfg()
    params = tfm.init_params(cfg, jax.random.PRNGKey(3))
    batch = _batch(cfg, T=13)

    def run(chunk):
        model = Model(dataclasses.replace(cfg, logits_chunk=chunk))
        return jax.value_and_grad(lambda p: next_token_loss(model, p, batch)[0])(params)

    (v_off, g_off), (v_on, g_on) = run(-1), run(5)
    _close(v_on, v_off)
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off)):
        _close(a, b)
    # and the reference is the per-token path: mean of token_losses over the mask
    nll, w = token_losses(Model(cfg), params, batch)
    _close(v_off, jnp.sum(nll * w) / jnp.sum(w))


def test_automatic_chunking_only_for_large_logits():
    assert lm_head.head_chunk(_cfg(), 8, 512) == 0  # 8 * 512 * 97 * 4 bytes: full logits
    big = _cfg(vocab_size=128_256)
    chunk = lm_head.head_chunk(big, 4, 256)  # 0.5 GiB of logits
    assert 0 < chunk < 256 and 4 * chunk * 128_256 * 4 <= lm_head.AUTO_CHUNK_BYTES
    assert lm_head.head_chunk(dataclasses.replace(big, logits_chunk=-1), 4, 256) == 0
    assert lm_head.head_chunk(dataclasses.replace(big, logits_chunk=1000), 4, 256) == 256
    with pytest.raises(ConfigError, match="logits_chunk"):
        _cfg(logits_chunk=-2)
    with pytest.raises(ConfigError, match="remat"):
        _cfg(remat="some")


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    cfg = _cfg()
    params = tfm.init_params(cfg, jax.random.PRNGKey(4))
    batch = _batch(cfg)
    grad = jax.jit(jax.grad(lambda p, c: next_token_loss(Model(c), p, batch)[0]), static_argnums=1)
    for a, b in zip(jax.tree.leaves(grad(params, dataclasses.replace(cfg, remat=remat))),
                    jax.tree.leaves(grad(params, cfg))):
        _close(a, b, rtol=1e-6)


def _temp_bytes(cfg, B, T):
    task = lm_task(cfg, optax.adamw(1e-3), None)
    state = init_state(task, 0)
    batch = {"tokens": jnp.zeros((B, T + 1), jnp.int32), "loss_mask": jnp.ones((B, T + 1), jnp.float32)}
    return jax.jit(make_train_step(task)).lower(state, batch).compile().memory_analysis().temp_size_in_bytes


def test_chunked_head_and_remat_need_fewer_temporaries():
    cfg = _cfg(vocab_size=8192, d_model=64, n_layers=4, d_ff=128, max_seq_len=256)
    full = _temp_bytes(dataclasses.replace(cfg, logits_chunk=-1), 4, 128)  # 16 MiB of logits, x3 live
    chunked = _temp_bytes(dataclasses.replace(cfg, logits_chunk=16), 4, 128)
    remat = _temp_bytes(dataclasses.replace(cfg, logits_chunk=16, remat="full"), 4, 128)
    logits_bytes = 4 * 128 * 8192 * 4
    assert full - chunked > logits_bytes, (full, chunked)  # at least one full logits tensor less
    assert remat < chunked, (remat, chunked)
