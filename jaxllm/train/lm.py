"""Language-model training through the one trainer: next-token loss with masks, eval loss, and a Task.

Batches are the dicts of `jaxllm.data.pipeline`: tokens [B, T] int32, loss_mask [B, T] (1 where the token
is a target), and optionally segment_ids / positions [B, T] for packed rows and attention_mask [B, T] bool
(False on left padding). The losses take the model object (`jaxllm.models.Model`), so an injected linear
(R-Sparse) or any other Model option applies to training and evaluation alike.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.models import lm_head
from jaxllm.models import transformer as tfm
from jaxllm.models.model import Model, as_model
from jaxllm.train.trainer import Task


def _forward(model: Model, params, batch: dict, rng, compute_logits: bool = True):
    tokens = batch["tokens"]
    return model.forward(params, tokens[:, :-1], positions=_cut(batch.get("positions")),
                         segment_ids=_cut(batch.get("segment_ids")), attention_mask=_cut(batch.get("attention_mask")),
                         dropout_rng=rng, compute_logits=compute_logits)


def _weights(batch: dict) -> jax.Array:
    mask = batch.get("loss_mask")
    shape = batch["tokens"][:, 1:].shape
    return jnp.ones(shape, jnp.float32) if mask is None else mask[:, 1:].astype(jnp.float32)


def token_losses(model: Model, params, batch: dict, rng: Optional[jax.Array] = None):
    """(per-target cross-entropy [B, T-1] float32, weights [B, T-1]): position t predicts token t+1.

    Differentiable per token (full [B, T-1, V] logits); for a weighted mean use `next_token_loss`, which
    chunks the LM head when the logits are large. rng: a key turns dropout on (gpt2 flavour with
    cfg.dropout > 0); None = deterministic."""
    out = _forward(model, params, batch, rng)
    targets = batch["tokens"][:, 1:]
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return nll, _weights(batch)


def weighted_loss_sum(model: Model, params, batch: dict, rng: Optional[jax.Array] = None):
    """(Σ weights · nll, Σ weights): the summed masked next-token loss, through the chunked LM head
    (`jaxllm.models.lm_head`, gradient formed in the forward pass) when `lm_head.head_chunk` says the logits are
    large, else through the full logits; the two agree to float32 rounding (tests/models/test_lm_head.py)."""
    targets = batch["tokens"][:, 1:]
    chunk = lm_head.head_chunk(model.cfg, *targets.shape)
    w = _weights(batch)
    if chunk == 0:
        nll, w = token_losses(model, params, batch, rng)
        return jnp.sum(nll * w), jnp.sum(w)
    out = _forward(model, params, batch, rng, compute_logits=False)
    total, _ = lm_head.weighted_nll(model.cfg, params, out.hidden, targets, w, chunk)
    return total, jnp.sum(w)


def _cut(x):
    return None if x is None else x[:, :-1]


def next_token_loss(model: Model, params, batch: dict, rng: Optional[jax.Array] = None):
    """Mean masked next-token cross-entropy; returns (loss, {"tokens": number of target tokens})."""
    total, n = weighted_loss_sum(model, params, batch, rng)
    return total / jnp.maximum(n, 1.0), {"tokens": n}


@partial(jax.jit, static_argnums=0)
def _loss_sums(model, params, batch):
    return weighted_loss_sum(model, params, batch)


def eval_loss(model: Model, params, batches: Iterable[dict]) -> float:
    """Token-weighted mean next-token loss over a finite list of batches (jitted per batch shape)."""
    if not isinstance(model, Model):
        raise TypeError(f"eval_loss needs a jaxllm.models.Model (e.g. Model(cfg)), got {type(model).__name__}")
    total, count = 0.0, 0.0
    for b in batches:
        s, n = _loss_sums(model, params, {k: jnp.asarray(v) for k, v in b.items()})
        total += float(s)
        count += float(n)
    if count == 0:
        raise ValueError("eval_loss: the batches hold no target tokens (all loss_mask entries are 0)")
    return total / count


def check_batch(cfg: tfm.TransformerConfig, batch: dict) -> None:
    """Boundary check of one batch (host side): shapes, dtypes and token ids within the vocabulary."""
    tok = np.asarray(batch["tokens"])
    if tok.ndim != 2 or not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"batch['tokens'] must be [batch, seq] integers, got {tok.dtype}{list(tok.shape)}")
    if tok.size and (tok.min() < 0 or tok.max() >= cfg.vocab_size):
        raise ValueError(f"batch['tokens'] has ids in [{tok.min()}, {tok.max()}] outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    if tok.shape[1] > cfg.max_seq_len + 1:
        raise ValueError(f"sequence length {tok.shape[1]} exceeds max_seq_len+1={cfg.max_seq_len + 1}")
    for k in ("loss_mask", "segment_ids", "positions", "attention_mask"):
        if k in batch and np.shape(batch[k]) != tok.shape:
            raise ValueError(f"batch[{k!r}] has shape {np.shape(batch[k])}, expected {tok.shape}")


class CheckedBatches:
    """Iterates `batches`, running `check_batch` on each one before it reaches the jitted step (an
    out-of-vocabulary id would otherwise be clamped silently inside the embedding gather). Keeps the
    iterator's get_state / set_state, so checkpoints still hold the data position."""

    def __init__(self, cfg: tfm.TransformerConfig, batches: Any):
        self.cfg, self.batches, self.it = cfg, batches, None

    def __iter__(self):
        self.it = iter(self.batches)
        return self

    def __next__(self) -> dict:
        batch = next(self.it)
        check_batch(self.cfg, batch)
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state) -> None:
        self.it.set_state(state)


def lm_task(model: Model | tfm.TransformerConfig, optimizer: optax.GradientTransformation, batches: Any,
            eval_batches: Optional[list[dict]] = None, init_params=None, eval_name: str = "loss") -> Task:
    """A trainer Task for next-token training of `model` (a Model, or a TransformerConfig for `Model(cfg)`).
    `eval_batches` (a finite list) gives eval/<eval_name>; `init_params(key)` overrides random init (e.g.
    fine-tuning from loaded weights)."""
    model = as_model(model)
    model_cfg = model.cfg
    if eval_batches is not None:
        for b in eval_batches:
            check_batch(model_cfg, b)

    def loss_fn(params, batch, rng):
        return next_token_loss(model, params, batch, rng if model_cfg.dropout > 0 else None)

    eval_fn = None
    if eval_batches is not None:
        def eval_fn(params):
            return {eval_name: eval_loss(model, params, eval_batches)}

    return Task(
        init_params=init_params or (lambda key: tfm.init_params(model_cfg, key)),
        loss_fn=loss_fn,
        optimizer=optimizer,
        batches=None if batches is None else CheckedBatches(model_cfg, batches),
        eval_fn=eval_fn,
        logical_axes=tfm.logical_axes(model_cfg),
    )
