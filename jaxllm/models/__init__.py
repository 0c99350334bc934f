"""Models: the one Transformer (pure functions), its presets, and a notebook-friendly facade."""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax

from jaxllm.models.presets import PRESETS, get_preset
from jaxllm.models.transformer import (
    TransformerConfig,
    TransformerOutput,
    count_params,
    forward,
    init_cache,
    init_params,
    logical_axes,
)

__all__ = [
    "PRESETS", "TransformerConfig", "TransformerOutput", "apply", "count_params", "forward", "get_preset",
    "init_cache", "init_params", "logical_axes",
]


@partial(jax.jit, static_argnames=("config", "return_hidden"))
def apply(config: TransformerConfig, params, tokens, attention_mask: Optional[jax.Array] = None,
          return_hidden: bool = False):
    """logits [batch, seq, vocab] for tokens [batch, seq] int32 (and the final hidden states on request).

    Pure and jitted with `config` static, for notebooks: `jaxllm.models.apply(cfg, params, tokens)`.
    """
    out = forward(config, params, tokens, attention_mask=attention_mask)
    return (out.logits, out.hidden) if return_hidden else out.logits
