"""Models: the one Transformer (pure functions), its presets, and the hashable model object `Model`."""

from __future__ import annotations

from jaxllm.models.model import Model, as_model, left_padding_layout
from jaxllm.models.presets import PRESETS, get_preset
from jaxllm.models.transformer import (
    TransformerConfig,
    TransformerOutput,
    count_params,
    dense_linear,
    forward,
    init_cache,
    init_params,
    logical_axes,
)

__all__ = [
    "PRESETS", "Model", "TransformerConfig", "TransformerOutput", "as_model", "count_params", "dense_linear",
    "forward", "get_preset", "init_cache", "init_params", "left_padding_layout", "logical_axes",
]
