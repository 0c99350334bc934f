"""LLaDA's semi-autoregressive sampler with low-confidence (or random) remasking, fully jitted.

Port of the maths of `generate` in ML-GSAI/LLaDA `generate.py` (dllm_rl.md §1.2):

    x = [prompt ; MASK × gen_length], split into gen_length / block_length blocks, steps / num_blocks steps each
    per block: k[s] = ⌊m / S⌋ (+1 for the first m mod S steps), m = masked positions of the block at its start
    per step: logits = f(x)   (CFG: un + (w + 1)(cond − un), `un` with the prompt masked)
              x0 = argmax(logits/τ + Gumbel)   (argmax(logits) at τ = 0)
              conf = softmax(logits)[x0]  (low_confidence)   or   U(0, 1)  (random)
              only masked positions of the current and earlier blocks compete; the k[s] most confident
              are set to x0.

Differences from the reference, on purpose:
- LLaDA writes the Gumbel-max as exp(l) / (−log u)^τ in float64; that is argmax(l/τ + g), g ~ Gumbel(0, 1),
  which we draw in float32 by default (float64 when `noise_dtype="float64"` and jax_enable_x64 is on).
  SPG's eval sampler also uses float32. Never below float32 (arXiv 2409.02908).
- `torch.topk` tie-breaking is unspecified; here ties go to the lower position (stable sort).
- `fixed` positions (IGPO inpainting) hold given tokens, are never masked, never count in k and never
  change. The reference only supports a prompt prefix.
- Only positions of the generation region can be unmasked (the reference would also fill MASK tokens that
  appear inside the prompt).
- The mask token is never chosen as generated text (`allow_mask_token=False`, the default): x0 is drawn with the
  mask id's logit at −∞, while the confidence stays LLaDA's softmax(logits)[x0] over the full vocabulary. The
  reference, run at τ > 0 on an untrained model, can write the mask id into a rollout; `allow_mask_token=True`
  lets the mask id be chosen again (such a position then counts as decoded and keeps the mask id, where the
  reference would let it compete again in later steps of the block).
- Prompts of different lengths in one batch: left-padded to P, with `prompt_lengths` [B]; the padding is hidden
  by the attention mask and each row's positions start at 0 at its first real token
  (`models.left_padding_layout`), so a row's sample does not depend on its batch mates. The reference (and
  SPG/d1) assume one prompt length per batch, which is what `prompt_lengths=None` gives.

The model is `jaxllm.models.Model(cfg)` (cfg.causal=False) or any hashable callable `model(params, tokens, *,
attention_mask=None, positions=None) -> logits`; it is called with the layout keywords only when
`prompt_lengths` is given. It is a static argument of the jitted sampler: equal models share one compilation.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ConfigError, check, check_choice
from jaxllm.models.model import left_padding_layout

ModelFn = Callable[..., jax.Array]  # model(params, tokens [B, L], *, attention_mask=, positions=) -> [B, L, V]


@dataclasses.dataclass(frozen=True)
class DiffusionSamplerConfig:
    gen_length: int = 128
    block_length: int = 128
    steps: int = 128
    mask_id: int = 126336
    temperature: float = 0.0
    remasking: str = "low_confidence"  # or "random"
    cfg_scale: float = 0.0  # classifier-free guidance weight w (0 = off)
    noise_dtype: str = "float32"  # Gumbel noise precision: float32 or float64 (needs jax_enable_x64)
    allow_mask_token: bool = False  # True = LLaDA's reference: the mask id may be chosen as generated text

    def __post_init__(self):
        for name in ("gen_length", "block_length", "steps"):
            check(getattr(self, name) >= 1, f"DiffusionSamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        check(self.gen_length % self.block_length == 0,
              f"gen_length={self.gen_length} is not a multiple of block_length={self.block_length}")
        check(self.steps % self.num_blocks == 0,
              f"steps={self.steps} is not a multiple of the number of blocks {self.num_blocks} "
              f"(gen_length / block_length), as LLaDA's generate asserts")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(self.cfg_scale >= 0, f"cfg_scale must be >= 0, got {self.cfg_scale}")
        check_choice("DiffusionSamplerConfig.remasking", self.remasking, ["low_confidence", "random"])
        check_choice("DiffusionSamplerConfig.noise_dtype", self.noise_dtype, ["float32", "float64"])

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks


class DiffusionSample(NamedTuple):
    tokens: jax.Array  # [B, P + G] int32: prompt followed by the generation
    unmask_step: jax.Array  # [B, G] int32: global step (0..steps-1) at which each position was set; -1 if fixed
    confidence: jax.Array  # [B, G] float32: softmax probability of the chosen token when it was set (1 if fixed)


def num_transfer_tokens(masked_count_B: jax.Array, steps: int) -> jax.Array:
    """LLaDA `get_num_transfer_tokens`: [B, steps] int32, ⌊m/S⌋ per step, +1 on the first m mod S steps."""
    m = masked_count_B.astype(jnp.int32)[:, None]
    base = m // steps
    rem = m % steps
    return base + (jnp.arange(steps, dtype=jnp.int32)[None, :] < rem).astype(jnp.int32)


def gumbel_argmax(key: jax.Array, logits_BLV: jax.Array, temperature: float, noise_dtype: str = "float32"):
    """argmax(logits/τ + g): exact sampling from softmax(logits/τ); argmax(logits) at τ = 0."""
    if temperature == 0.0:
        return jnp.argmax(logits_BLV, axis=-1).astype(jnp.int32)
    dtype = jnp.dtype(noise_dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ConfigError("noise_dtype='float64' needs jax.config.update('jax_enable_x64', True)")
    u = jax.random.uniform(key, logits_BLV.shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    g = -jnp.log(-jnp.log(u))
    return jnp.argmax(logits_BLV.astype(dtype) / temperature + g, axis=-1).astype(jnp.int32)


def _top_k_by_row(conf_BG: jax.Array, k_B: jax.Array) -> jax.Array:
    """Boolean [B, G]: the k_B[b] largest confidences per row; ties to the lower position (stable sort)."""
    order = jnp.argsort(-conf_BG, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1)
    return ranks < k_B[:, None]


def _sample(model: ModelFn, config: DiffusionSamplerConfig, params, prompt_BP, key, fixed_tokens_BG, fixed_BG,
            prompt_lengths_B):
    B, P = prompt_BP.shape
    G, bl, spb = config.gen_length, config.block_length, config.steps_per_block
    mask_id = jnp.int32(config.mask_id)
    gen0 = jnp.where(fixed_BG, fixed_tokens_BG.astype(jnp.int32), mask_id)
    x = jnp.concatenate([prompt_BP.astype(jnp.int32), gen0], axis=1)
    gen_pos = jnp.arange(G, dtype=jnp.int32)
    unmask_step = jnp.full((B, G), -1, jnp.int32)
    confidence = jnp.where(fixed_BG, 1.0, 0.0).astype(jnp.float32)
    is_gen_mask0 = ~fixed_BG  # positions still to be generated
    layout = {}
    if prompt_lengths_B is not None:  # left padding: hidden keys, positions from each row's first real token
        key_mask, positions = left_padding_layout(prompt_lengths_B, P, P + G)
        layout = {"attention_mask": key_mask, "positions": positions}

    def logits_of(x):
        if config.cfg_scale > 0:
            un_x = x.at[:, :P].set(mask_id)
            both_layout = {k: jnp.concatenate([v, v], axis=0) for k, v in layout.items()}
            both = model(params, jnp.concatenate([x, un_x], axis=0), **both_layout).astype(jnp.float32)
            cond, un = both[:B], both[B:]
            return un + (config.cfg_scale + 1.0) * (cond - un)
        return model(params, x, **layout).astype(jnp.float32)

    def block_body(b, carry):
        x, unmask_step, confidence, pending = carry
        in_block = (gen_pos >= b * bl) & (gen_pos < (b + 1) * bl)
        k_BS = num_transfer_tokens(jnp.sum(pending & in_block[None], axis=1), spb)

        def step_body(s, carry):
            x, unmask_step, confidence, pending = carry
            step = b * spb + s
            k_step = jax.random.fold_in(key, step)
            logits = logits_of(x)[:, P:]  # [B, G, V]
            V = logits.shape[-1]
            if not 0 <= config.mask_id < V:
                raise ValueError(f"DiffusionSamplerConfig.mask_id={config.mask_id} is outside the model's "
                                 f"vocabulary [0, {V})")
            choice = logits
            if not config.allow_mask_token:  # the mask id is never generated text; confidence stays LLaDA's
                choice = jnp.where(jnp.arange(V) == config.mask_id, -jnp.inf, logits)
            x0 = gumbel_argmax(k_step, choice, config.temperature, config.noise_dtype)
            probs = jax.nn.softmax(logits, axis=-1)
            p_x0 = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
            if config.remasking == "low_confidence":
                score = p_x0
            else:
                score = jax.random.uniform(jax.random.fold_in(k_step, 1), (B, G), jnp.float32)
            eligible = pending & (gen_pos < (b + 1) * bl)[None]
            score = jnp.where(eligible, score, -jnp.inf)
            k = jax.lax.dynamic_index_in_dim(k_BS, s, axis=1, keepdims=False)
            transfer = _top_k_by_row(score, k) & eligible
            gen = jnp.where(transfer, x0, x[:, P:])
            x = x.at[:, P:].set(gen)
            unmask_step = jnp.where(transfer, step, unmask_step)
            confidence = jnp.where(transfer, p_x0, confidence)
            return x, unmask_step, confidence, pending & ~transfer

        return jax.lax.fori_loop(0, spb, step_body, (x, unmask_step, confidence, pending))

    x, unmask_step, confidence, _ = jax.lax.fori_loop(
        0, config.num_blocks, block_body, (x, unmask_step, confidence, is_gen_mask0))
    return DiffusionSample(x, unmask_step, confidence)


@partial(jax.jit, static_argnums=(0, 1))
def _sample_jit(model, config, params, prompt_BP, key, fixed_tokens_BG, fixed_BG, prompt_lengths_B):
    return _sample(model, config, params, prompt_BP, key, fixed_tokens_BG, fixed_BG, prompt_lengths_B)


def generate(
    model: ModelFn,
    params,
    prompt_BP: jax.Array,
    key: jax.Array,
    config: DiffusionSamplerConfig,
    *,
    prompt_lengths: Optional[jax.Array] = None,
    fixed_tokens: Optional[jax.Array] = None,
    fixed: Optional[jax.Array] = None,
) -> DiffusionSample:
    """Sample completions for a batch of prompts. Jitted once per (model, config, shapes, padded or not).

    model: `jaxllm.models.Model(cfg)` or another hashable `model(params, tokens, *, attention_mask=None,
      positions=None) -> logits [B, L, V]` (static under jit: equal models reuse the compilation).
    prompt_BP: [B, P] int32 prompts; with `prompt_lengths` [B] int (0..P), row b's prompt is its last
      prompt_lengths[b] tokens (left padding, any pad id; hidden by the attention mask, positions restart at
      the first real token). Default: every row is a full-length prompt and the model sees tokens only.
    fixed_tokens / fixed: [B, gen_length] int32 tokens and bool mask of generation positions given in advance
      (inpainting); they are never modified.
    Returns DiffusionSample(tokens [B, P + G] (the padded prompt, then the generation), unmask_step [B, G],
      confidence [B, G]).
    """
    if prompt_BP.ndim != 2:
        raise ValueError(f"prompt must be [batch, prompt_len], got shape {prompt_BP.shape}")
    B, P = prompt_BP.shape
    G = config.gen_length
    if (fixed is None) != (fixed_tokens is None):
        raise ValueError("pass both fixed_tokens and fixed (inpainting), or neither")
    if fixed is None:
        fixed = jnp.zeros((B, G), bool)
        fixed_tokens = jnp.zeros((B, G), jnp.int32)
    for name, arr in (("fixed", fixed), ("fixed_tokens", fixed_tokens)):
        if tuple(arr.shape) != (B, G):
            raise ValueError(f"{name} must have shape (batch, gen_length) = {(B, G)}, got {tuple(arr.shape)}")
    if prompt_lengths is not None:
        if tuple(np.shape(prompt_lengths)) != (B,):
            raise ValueError(f"prompt_lengths must have shape (batch,) = {(B,)}, got {tuple(np.shape(prompt_lengths))}")
        if not isinstance(prompt_lengths, jax.core.Tracer):
            lengths = np.asarray(prompt_lengths)
            if ((lengths < 0) | (lengths > P)).any():
                raise ValueError(f"prompt_lengths must lie in [0, {P}] (the padded prompt length), got "
                                 f"{lengths.tolist()}")
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    return _sample_jit(model, config, params, jnp.asarray(prompt_BP, jnp.int32), key,
                       jnp.asarray(fixed_tokens, jnp.int32), jnp.asarray(fixed, bool), prompt_lengths)
