"""Named model configs: published shapes and tiny_* shapes for tests.

Big presets are only ever built with `jax.eval_shape` in tests (no memory).
"""

from __future__ import annotations

import dataclasses

from jaxllm.config import register_choices
from jaxllm.models.transformer import TransformerConfig

# MobileLLM-R1 (arXiv 2509.24945, Table 1): Llama4-text decoders, interleaved RoPE, QK-norm, tied embeddings.
_MOBILELLM_R1 = dict(
    vocab_size=128256, flavour="llama", rope_layout="interleaved", qk_norm=True, tie_embeddings=True,
    norm_eps=1e-5, rope_theta=8.0e6, max_seq_len=32768, causal=True,
)

PRESETS: dict[str, TransformerConfig] = {
    "mobilellm_r1_140m": TransformerConfig(d_model=576, n_layers=15, n_heads=9, n_kv_heads=3, head_dim=64,
                                           d_ff=2048, **_MOBILELLM_R1),
    "mobilellm_r1_360m": TransformerConfig(d_model=1024, n_layers=15, n_heads=16, n_kv_heads=4, head_dim=64,
                                           d_ff=4096, **_MOBILELLM_R1),
    "mobilellm_r1_950m": TransformerConfig(d_model=1536, n_layers=22, n_heads=24, n_kv_heads=6, head_dim=64,
                                           d_ff=6144, **_MOBILELLM_R1),
    # LLaDA-8B (dllm_rl.md 1.3): bidirectional, rotate_half RoPE theta 5e5, untied head, MHA.
    "llada_8b": TransformerConfig(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                                  head_dim=128, d_ff=12288, max_seq_len=4096, causal=False, flavour="llama",
                                  rope_layout="half", rope_theta=500000.0, tie_embeddings=False,
                                  mask_token_id=126336),
    # Tiny shapes for tests and CPU experiments.
    "tiny_mobilellm": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                        head_dim=16, d_ff=128, max_seq_len=256, rope_layout="interleaved",
                                        qk_norm=True, rope_theta=8.0e6),
    "tiny_llama": TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    d_ff=128, max_seq_len=256, tie_embeddings=False),
    "tiny_llada": TransformerConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                                    max_seq_len=256, causal=False, tie_embeddings=False, rope_theta=500000.0,
                                    mask_token_id=63),
    "tiny_gpt2": TransformerConfig(vocab_size=40, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=256,
                                   flavour="gpt2", dropout=0.0),
}


register_choices(TransformerConfig, PRESETS)  # `model=<preset>` on the command line, then `model.<field>=...`


def get_preset(name: str, **overrides) -> TransformerConfig:
    """The named config, with field overrides (e.g. `get_preset('tiny_llada', vocab_size=32)`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)
