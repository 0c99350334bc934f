"""Masked-diffusion SFT through the one trainer: rows of [left-padded prompt ; answer + EOS padding] and the
Task that trains a bidirectional Transformer on them with `jaxllm.diffusion.sft_loss` (the prompt is never
masked; the answer and its EOS padding are, as in LLaDA's SFT).
"""

from __future__ import annotations

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import ConfigError
from jaxllm.diffusion import sft_loss
from jaxllm.models import Model, init_params, logical_axes
from jaxllm.train.trainer import Task


def pack_sft_rows(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], prompt_len: int,
                  gen_length: int, *, pad_id: int, eos_id: int) -> np.ndarray:
    """[N, prompt_len + gen_length] int32: prompts left-padded with `pad_id`, answers followed by EOS up to the
    end (trained on, as LLaDA SFT). A prompt longer than `prompt_len` or an answer that leaves no room for one EOS
    is an error naming the row."""
    if len(prompts) != len(answers):
        raise ConfigError(f"pack_sft_rows: {len(prompts)} prompts but {len(answers)} answers")
    out = np.full((len(prompts), prompt_len + gen_length), eos_id, np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if len(p) > prompt_len:
            raise ConfigError(f"row {i}: prompt of {len(p)} tokens exceeds prompt_len={prompt_len}")
        if len(a) >= gen_length:
            raise ConfigError(f"row {i}: answer of {len(a)} tokens does not fit gen_length={gen_length} with an EOS")
        out[i, :prompt_len] = pad_id
        out[i, prompt_len - len(p): prompt_len] = p
        out[i, prompt_len: prompt_len + len(a)] = a
    return out


def masked_sft_task(model: Model, rows: np.ndarray, prompt_len: int, optimizer: optax.GradientTransformation, *,
                    batch_size: int, normalisation: Literal["llada", "d1"] = "llada") -> Task:
    """A trainer Task: each step draws `batch_size` random rows of `rows` [N, P + G] (on device, indices from the
    step's key, so resume is exact without an iterator) and takes the masked SFT loss of `model`."""
    cfg = model.cfg
    if cfg.causal or cfg.mask_token_id is None:
        raise ConfigError("masked SFT needs a bidirectional model with a mask token (causal=False, mask_token_id set)")
    rows = np.asarray(rows)
    if rows.ndim != 2 or not 0 < prompt_len < rows.shape[1]:
        raise ConfigError(f"rows must be [N, prompt_len + gen_length] with 0 < prompt_len={prompt_len} < "
                          f"{rows.shape[1:] or rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= cfg.vocab_size):
        raise ConfigError(f"rows hold ids in [{rows.min()}, {rows.max()}] outside the vocabulary [0, {cfg.vocab_size})")
    data = jnp.asarray(rows, jnp.int32)
    prompt_mask = jnp.broadcast_to(jnp.arange(rows.shape[1]) < prompt_len, (batch_size, rows.shape[1]))

    def loss_fn(params, batch, rng):
        k_idx, k_mask = jax.random.split(rng)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        return sft_loss(model, params, k_mask, data[idx], prompt_mask, cfg.mask_token_id, normalisation=normalisation)

    return Task(init_params=lambda k: init_params(cfg, k), loss_fn=loss_fn, optimizer=optimizer,
                logical_axes=logical_axes(cfg))
