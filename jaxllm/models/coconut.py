"""Continuous chain of thought (Coconut, arXiv 2412.06769) on the one Transformer, and its losses.

A continuous thought is the final-normed last hidden state (`forward(...).hidden`) at the position before a
latent slot, written into that slot's input embedding. `continuous_thought_forward` runs the (n + 1) causal
passes of Coconut with static shapes: pass k reads the hidden state at slot `latent_start + k - 1` of the
prefix (sliced statically to `latent_start + k` tokens, exact by causality) and writes it into slot
`latent_start + k`. Gradients flow through every thought (no stop_gradient).

Batch layout for the reachability task (`latent_batch`): every prompt is LEFT-padded so that its last token
(the root r) sits at index P-1 for all samples (Coconut's `MyCollator` trick); K latent slots follow, then
`[A]`. A sample with s < K latents masks slots s..K-1 out as keys and gives `[A]` the position id that follows
its s-th thought, so one static shape serves every curriculum stage and `uniform_prob` mixing.

Losses on the logits read at one position per sample (the Emergence paper's Eq. 5-6):
    set loss = -log sum_{v in S} softmax(logits)_v;  S one-hot (Coconut CE) or a node set (Coconut-BFS).
The discrete CoT / no-CoT baselines are plain language modelling: `jaxllm.train.lm.next_token_loss` and
`jaxllm.sampling.autoregressive.generate`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models import transformer as tfm


class ThoughtOutput(NamedTuple):
    out: tfm.TransformerOutput  # the final pass over the whole sequence (thoughts in place)
    thoughts: jax.Array  # [batch, n_thoughts, d_model]: the embeddings written into the latent slots
    embeds: jax.Array  # [batch, seq, d_model]: input embeddings of the final pass


def continuous_thought_forward(
    cfg: tfm.TransformerConfig,
    params,
    prompt_embeds: jax.Array,
    n_thoughts: int,
    latent_start: int,
    *,
    positions: Optional[jax.Array] = None,
    attention_mask: Optional[jax.Array] = None,
    dropout_rng: Optional[jax.Array] = None,
    return_attention: bool = False,
    return_layer_hiddens: bool = False,
) -> ThoughtOutput:
    """Fill `n_thoughts` latent slots starting at `latent_start` with continuous thoughts, then run once more.

    Args:
      prompt_embeds: [B, T, D] input embeddings (token embeddings; latent slots' contents are overwritten).
      n_thoughts, latent_start: static ints; slots latent_start .. latent_start + n_thoughts - 1 < T.
      positions, attention_mask: [B, T] as in `transformer.forward`.
    """
    T = prompt_embeds.shape[1]
    if not (1 <= latent_start and latent_start + n_thoughts <= T):
        raise ValueError(f"latent slots [{latent_start}, {latent_start + n_thoughts}) do not fit a sequence of {T}")
    embeds = prompt_embeds
    thoughts = []
    for k in range(n_thoughts):
        end = latent_start + k
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, k)
        out = tfm.forward(
            cfg, params, input_embeds=embeds[:, :end],
            positions=None if positions is None else positions[:, :end],
            attention_mask=None if attention_mask is None else attention_mask[:, :end],
            dropout_rng=rng, compute_logits=False,
        )
        thought = out.hidden[:, end - 1]
        thoughts.append(thought)
        embeds = embeds.at[:, end].set(thought.astype(embeds.dtype))
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, n_thoughts)
    out = tfm.forward(cfg, params, input_embeds=embeds, positions=positions, attention_mask=attention_mask,
                      dropout_rng=rng, return_attention=return_attention, return_layer_hiddens=return_layer_hiddens)
    stacked = jnp.stack(thoughts, 1) if thoughts else jnp.zeros((embeds.shape[0], 0, embeds.shape[2]), embeds.dtype)
    return ThoughtOutput(out, stacked, embeds)


def set_nll(logits_BV: jax.Array, label_set_BV: jax.Array) -> jax.Array:
    """[B] -log sum_{v in set} p(v): the Coconut-BFS set loss; equals CE when the set is one token."""
    logp = jax.nn.log_softmax(logits_BV.astype(jnp.float32), axis=-1)
    masked = jnp.where(label_set_BV > 0, logp, -jnp.inf)
    return -jax.nn.logsumexp(masked, axis=-1)


def latent_logits(cfg, params, batch: dict, n_slots: int, latent_start: int, dropout_rng=None,
                  return_attention: bool = False) -> tuple[jax.Array, ThoughtOutput]:
    """Logits [B, V] at each sample's `read_pos` after filling `n_slots` latent slots."""
    embeds = tfm.embed_tokens(cfg, params, batch["tokens"])
    res = continuous_thought_forward(cfg, params, embeds, n_slots, latent_start, positions=batch["positions"],
                                     attention_mask=batch["attention_mask"], dropout_rng=dropout_rng,
                                     return_attention=return_attention)
    logits = jnp.take_along_axis(res.out.logits, batch["read_pos"][:, None, None], axis=1)[:, 0]
    return logits, res


def latent_loss(cfg, params, batch: dict, rng, n_slots: int, latent_start: int):
    """Mean set loss and accuracy (argmax in the label set) over the batch; dropout on when cfg.dropout > 0."""
    logits, _ = latent_logits(cfg, params, batch, n_slots, latent_start, dropout_rng=rng)
    nll = set_nll(logits, batch["label_set"])
    hit = jnp.take_along_axis(batch["label_set"], jnp.argmax(logits, -1)[:, None], axis=1)[:, 0] > 0
    final = batch["is_final"].astype(jnp.float32)
    metrics = {"acc": jnp.mean(hit.astype(jnp.float32)),
               "answer_acc": jnp.sum(hit * final) / jnp.maximum(jnp.sum(final), 1.0)}
    return jnp.mean(nll), metrics


def as_numpy(batch: dict) -> dict:
    return {k: np.asarray(v) for k, v in batch.items()}
