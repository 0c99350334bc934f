"""The model object: one hashable callable that every consumer of a model takes.

    model = Model(cfg)                                   # dense; Model(cfg, linear=RSparseLinear(...)) for R-Sparse
    logits_BLV = model(params, tokens_BL, attention_mask=mask_BL, positions=pos_BL)
    out = model.forward(params, tokens_BL, cache=cache, cache_index=i)   # every option of transformer.forward

The samplers (`jaxllm.sampling.autoregressive` / `.diffusion`), the masked-diffusion estimators
(`jaxllm.diffusion`), the LM losses (`jaxllm.train.lm`) and the RL losses take a model, not a config plus a
closure. A `Model` is a frozen dataclass of a `TransformerConfig` and a linear function, so two Models built
from equal configs (and the same linear) are equal and hash equal: passed as a static argument of `jax.jit`
they share one compilation, and no module needs a global cache of closures.

The diffusion sampler and estimators only call `model(params, tokens, *, attention_mask=None, positions=None)`,
so any other hashable callable with that signature (the enumerable toy models of the tests) is a model there
too; the autoregressive sampler also needs `model.cfg` and `model.forward` (the KV cache).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from jaxllm.models import transformer as tfm


@dataclasses.dataclass(frozen=True)
class Model:
    """The one Transformer as a hashable function of (params, tokens).

    cfg: the architecture. linear: `linear(name, p, x, eqn)` used for every projection (see
    `transformer.dense_linear`); it must be hashable (a module-level function or a frozen dataclass).
    """

    cfg: tfm.TransformerConfig
    linear: tfm.Linear = tfm.dense_linear

    def __post_init__(self):
        if not isinstance(self.cfg, tfm.TransformerConfig):
            raise TypeError(f"Model(cfg): cfg must be a TransformerConfig, got {type(self.cfg).__name__}")
        try:
            hash(self.linear)
        except TypeError as e:
            raise TypeError(f"Model(linear=...) must be hashable (a function or a frozen dataclass): {e}") from None
        if not callable(self.linear):
            raise TypeError(f"Model(linear=...) must be callable, got {type(self.linear).__name__}")

    def __call__(self, params, tokens: jax.Array, *, attention_mask: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None) -> jax.Array:
        """logits [B, L, V] float32 for tokens [B, L] int32; attention_mask [B, L] bool (False = padding key),
        positions [B, L] int32 (default arange(L))."""
        return self.forward(params, tokens, attention_mask=attention_mask, positions=positions).logits

    def forward(self, params, tokens: Optional[jax.Array] = None, **kwargs) -> tfm.TransformerOutput:
        """`transformer.forward(self.cfg, params, tokens, linear=self.linear, **kwargs)`: input_embeds, cache,
        cache_index, segment_ids, dropout_rng, return_layer_hiddens, return_attention, compute_logits, ..."""
        return tfm.forward(self.cfg, params, tokens, linear=self.linear, **kwargs)


def as_model(model_or_cfg) -> Model:
    """A `Model` unchanged, or `Model(cfg)` for a TransformerConfig (for entry points that accept either)."""
    if isinstance(model_or_cfg, tfm.TransformerConfig):
        return Model(model_or_cfg)
    if isinstance(model_or_cfg, Model):
        return model_or_cfg
    raise TypeError(f"expected a jaxllm.models.Model or a TransformerConfig, got {type(model_or_cfg).__name__}")


def left_padding_layout(prompt_lengths_B: jax.Array, prompt_len: int, total_len: int) -> tuple[jax.Array, jax.Array]:
    """Key mask and positions of left-padded prompts of different lengths followed by a shared continuation.

    Row b holds `prompt_len - prompt_lengths_B[b]` padding slots, then its prompt, then the continuation (up to
    `total_len` slots). Returns (attention_mask [B, total_len] bool: False on the padding; positions [B, total_len]
    int32: 0 at the row's first real token, clipped to 0 on the padding), so that a row's logits do not depend
    on how much padding its batch needed.
    """
    pad_B = prompt_len - jnp.asarray(prompt_lengths_B, jnp.int32)
    slots = jnp.arange(total_len, dtype=jnp.int32)[None, :]
    return slots >= pad_B[:, None], jnp.maximum(slots - pad_B[:, None], 0).astype(jnp.int32)
