"""Masked diffusion LM maths: the forward masking process, the pre-training and SFT losses, and the
Monte Carlo estimators of the (conditional) log-likelihood lower bound (ELBO) used by d1 / SPG / IGPO.

Notation (dllm_rl.md §1.1): a clean sequence x of length L; at noise level t each token is replaced by the
mask token independently with probability p = (1 − ε)t + ε (linear schedule α_t = 1 − t with LLaDA's
ε = 1e-3 floor). The ELBO of a masked diffusion LM is

    log p_θ(x) ≥ E_{t ~ U(0,1), x_t ~ q(·|x)} [ (1/t) Σ_i 1[x_t^i = M] log p_θ(x^i | x_t) ]          (LLaDA eq. 3)

and for a conditional likelihood log p(answer | prompt) only answer tokens are ever masked. Exactly the same
expectation is reached by the stratified estimator of LLaDA's `get_log_likelihood.py`: mask exactly l of
the n answer tokens (l uniform on 1..n) and weight by n/l. (Both equal the any-order autoregressive bound
E_σ Σ_k log p(x_σk | x_σ<k); tests check this by exact enumeration.)

Every loss and estimator takes `(model, params, key, tokens, ...)`, where `model(params, tokens [B, L] int32, *,
attention_mask=None, positions=None) -> logits [B, L, V] float32` is `jaxllm.models.Model(cfg)` (a bidirectional
Transformer, `cfg.causal=False`) or any other callable of that signature (the enumerable toy models of the tests).
`attention_mask` / `positions` [B, L], when given (left-padded prompts, `models.left_padding_layout`), are passed
to the model for every mask draw of the row; when not given the model is called with tokens only. Randomness is
an explicit key; passing the same key gives the same masks (the "shared masks" of d1/SPG, where the old and the
current policy are scored on one mask draw per inner iteration: `mask_seeds[step % μ]`).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

ModelFn = Callable[..., jax.Array]  # model(params, tokens [B, L], *, attention_mask=, positions=) -> [B, L, V]

LLADA_EPS = 1e-3  # LLaDA GUIDELINES.md: p_mask = (1 - eps) * t + eps


def model_logits(model: ModelFn, params: Any, tokens_NL: jax.Array, attention_mask: Optional[jax.Array] = None,
                 positions: Optional[jax.Array] = None) -> jax.Array:
    """model(params, tokens) [N, L, V] for N = S·B noisy rows (sample-major: row s·B + b is draw s of row b) and
    a row layout given per row [B, L] (repeated over the S draws); only the layout arrays given are passed."""
    N = tokens_NL.shape[0]
    extra = {}
    for name, value in (("attention_mask", attention_mask), ("positions", positions)):
        if value is not None:
            reps = N // value.shape[0]
            extra[name] = jnp.broadcast_to(value[None], (reps,) + value.shape).reshape((N,) + value.shape[1:])
    return model(params, tokens_NL, **extra)


def mask_probability(t: jax.Array, eps: float = LLADA_EPS) -> jax.Array:
    """p_mask = (1 − ε) t + ε: the per-token masking probability at time t (linear schedule, ε floor)."""
    return (1.0 - eps) * t + eps


def token_log_probs(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
    """log softmax(logits)[target] in float32: [B, L]."""
    logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets_BL[..., None].astype(jnp.int32), axis=-1)[..., 0]


class MaskedBatch(NamedTuple):
    noisy: jax.Array  # [B, L] int32: tokens with masked positions set to mask_id
    masked: jax.Array  # [B, L] bool: positions replaced by the mask token
    p_mask: jax.Array  # [B] float32: the masking probability used for each row (the 1/p weight)


def forward_mask(
    key: jax.Array,
    tokens_BL: jax.Array,
    mask_id: int,
    *,
    maskable_BL: Optional[jax.Array] = None,
    eps: float = LLADA_EPS,
    t_B: Optional[jax.Array] = None,
) -> MaskedBatch:
    """The forward process q(x_t | x): t ~ U[0, 1] per row (or `t_B`), each maskable token masked w.p. p_mask.

    maskable_BL: [B, L] bool, positions that may be masked (SFT: the answer; default: all).
    """
    B, L = tokens_BL.shape
    k_t, k_u = jax.random.split(key)
    if t_B is None:
        t_B = jax.random.uniform(k_t, (B,), jnp.float32)
    p = mask_probability(t_B, eps)
    masked = jax.random.uniform(k_u, (B, L), jnp.float32) < p[:, None]
    if maskable_BL is not None:
        masked = masked & maskable_BL.astype(bool)
    noisy = jnp.where(masked, jnp.int32(mask_id), tokens_BL.astype(jnp.int32))
    return MaskedBatch(noisy, masked, p)


def pretrain_loss(
    model: ModelFn, params: Any, key: jax.Array, tokens_BL: jax.Array, mask_id: int, eps: float = LLADA_EPS, *,
    attention_mask: Optional[jax.Array] = None, positions: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict]:
    """LLaDA pre-training loss Σ_{masked} CE / p_mask / (B·L) (GUIDELINES.md). −loss·L is the ELBO per row."""
    B, L = tokens_BL.shape
    mb = forward_mask(key, tokens_BL, mask_id, eps=eps)
    logp = token_log_probs(model_logits(model, params, mb.noisy, attention_mask, positions), tokens_BL)
    weighted = jnp.where(mb.masked, -logp / mb.p_mask[:, None], 0.0)
    loss = jnp.sum(weighted) / (B * L)
    return loss, {"loss": loss, "mask_frac": jnp.mean(mb.masked.astype(jnp.float32))}


def sft_loss(
    model: ModelFn,
    params: Any,
    key: jax.Array,
    tokens_BL: jax.Array,
    prompt_mask_BL: jax.Array,
    mask_id: int,
    *,
    eps: float = LLADA_EPS,
    normalisation: Literal["llada", "d1"] = "llada",
    attention_mask: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict]:
    """Masked SFT loss: the prompt is never masked; answer tokens (padding EOS included) are.

    prompt_mask_BL: [B, L] bool, True on prompt tokens.
    normalisation:
      "llada": Σ_b Σ_i (CE_bi / p_b) / answer_len_b / B   (LLaDA GUIDELINES.md: per-answer-length mean)
      "d1":    Σ (CE / p) / (B·L − #prompt tokens)       (d1 `dLLMTrainer`: one token-level mean)
    """
    if normalisation not in ("llada", "d1"):
        raise ValueError(f"normalisation={normalisation!r} is not one of ['llada', 'd1']")
    B, L = tokens_BL.shape
    answer = ~prompt_mask_BL.astype(bool)
    mb = forward_mask(key, tokens_BL, mask_id, maskable_BL=answer, eps=eps)
    logp = token_log_probs(model_logits(model, params, mb.noisy, attention_mask, positions), tokens_BL)
    weighted = jnp.where(mb.masked, -logp / mb.p_mask[:, None], 0.0)
    answer_len = jnp.maximum(jnp.sum(answer, axis=1).astype(jnp.float32), 1.0)
    if normalisation == "llada":
        loss = jnp.sum(jnp.sum(weighted, axis=1) / answer_len) / B
    else:
        loss = jnp.sum(weighted) / jnp.maximum(jnp.sum(answer).astype(jnp.float32), 1.0)
    masked_logp = jnp.where(mb.masked, logp, 0.0)
    n_masked = jnp.maximum(jnp.sum(mb.masked), 1)
    metrics = {
        "loss": loss,
        "masked_token_prob": jnp.sum(jnp.where(mb.masked, jnp.exp(masked_logp), 0.0)) / n_masked,
        "mask_frac": jnp.sum(mb.masked) / jnp.maximum(jnp.sum(answer), 1),
    }
    return loss, metrics


# ----------------------------------------------------------------------------------------------------------
# Conditional log-likelihood estimators: each returns one unbiased-estimate-of-the-ELBO per row, [B] float32,
# of log p(x[answer] | x[~answer]), averaged over `num_samples` mask draws.


def _draw_log_probs(model: ModelFn, params, tokens_BL, masked_SBL, mask_id, attention_mask, positions) -> jax.Array:
    """log p(x_i | x with draw s masked) at every position, for each of S mask draws: [S, B, L] (one forward)."""
    S, B, L = masked_SBL.shape
    noisy = jnp.where(masked_SBL, jnp.int32(mask_id), jnp.broadcast_to(tokens_BL.astype(jnp.int32), (S, B, L)))
    targets = jnp.broadcast_to(tokens_BL.astype(jnp.int32), (S, B, L)).reshape(S * B, L)
    logits = model_logits(model, params, noisy.reshape(S * B, L), attention_mask, positions)
    return token_log_probs(logits, targets).reshape(S, B, L)


def _masked_logp_sum(model: ModelFn, params, tokens_BL, masked_SBL, mask_id, attention_mask, positions) -> jax.Array:
    """Σ_{masked} log p(x_i | x_masked) for each of S mask draws: [S, B] (one batched forward pass)."""
    logp = _draw_log_probs(model, params, tokens_BL, masked_SBL, mask_id, attention_mask, positions)
    return jnp.sum(jnp.where(masked_SBL, logp, 0.0), axis=-1)


def elbo_random_t(
    model: ModelFn,
    params: Any,
    key: jax.Array,
    tokens_BL: jax.Array,
    answer_mask_BL: jax.Array,
    mask_id: int,
    num_samples: int,
    *,
    eps: float = LLADA_EPS,
    antithetic: bool = False,
    attention_mask: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
) -> jax.Array:
    """Monte Carlo ELBO with random t: mean over samples of Σ_{masked} log p / p_mask.  [B]

    Unbiased for E_{t~U}[Σ_M q_t(M) Σ_{i∈M} log p(x_i|x_M)/p_mask(t)], which equals the ELBO at ε = 0
    (with ε > 0 the tiny-t region is clipped: the LLaDA training objective, also the d1/UniGRPO form).
    antithetic: draw t in pairs (t, 1 − t) (our variance reduction, not from the references);
    num_samples must then be even.
    """
    if antithetic and num_samples % 2:
        raise ValueError(f"antithetic sampling needs an even num_samples, got {num_samples}")
    B, L = tokens_BL.shape
    k_t, k_u = jax.random.split(key)
    if antithetic:
        half = jax.random.uniform(k_t, (num_samples // 2, B), jnp.float32)
        t = jnp.concatenate([half, 1.0 - half], axis=0)
    else:
        t = jax.random.uniform(k_t, (num_samples, B), jnp.float32)
    p = mask_probability(t, eps)  # [S, B]
    masked = (jax.random.uniform(k_u, (num_samples, B, L)) < p[..., None]) & answer_mask_BL.astype(bool)[None]
    return jnp.mean(_masked_logp_sum(model, params, tokens_BL, masked, mask_id, attention_mask, positions) / p,
                    axis=0)


def _random_subset(key: jax.Array, eligible_BL: jax.Array, count_B: jax.Array) -> jax.Array:
    """A uniformly random subset of exactly count_B[b] eligible positions per row: [B, L] bool."""
    u = jax.random.uniform(key, eligible_BL.shape)
    u = jnp.where(eligible_BL, u, 2.0)  # ineligible positions rank last
    ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    return (ranks < count_B[:, None]) & eligible_BL


def stratified_mask_counts(key: jax.Array, n_B: jax.Array, num_samples: int) -> jax.Array:
    """LLaDA's stratified numbers of masked tokens l ∈ {1..n}: [S, B] int32.

    l_s = ((k − 1 + ⌊s·n/S + ½⌋) mod n) + 1 with k ~ U{1..n}: evenly spread over 1..n and marginally uniform
    for every s (get_log_likelihood.py rounds k + s·n/S jointly; adding the integer k after rounding keeps
    each l_s exactly uniform).
    """
    n = jnp.maximum(n_B.astype(jnp.int32), 1)
    k = jax.random.randint(key, n.shape, 0, n)  # k − 1
    s = jnp.arange(num_samples, dtype=jnp.float32)[:, None]
    shift = jnp.floor(s * n[None].astype(jnp.float32) / num_samples + 0.5).astype(jnp.int32)
    return (k[None] + shift) % n[None] + 1


def elbo_stratified(
    model: ModelFn,
    params: Any,
    key: jax.Array,
    tokens_BL: jax.Array,
    answer_mask_BL: jax.Array,
    mask_id: int,
    num_samples: int,
    *,
    attention_mask: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
) -> jax.Array:
    """LLaDA `get_log_likelihood`: mask exactly l of the n answer tokens (l stratified over 1..n), weight n/l.

    Unbiased for the exact ELBO (no ε); lower variance than random t. Returns [B].
    """
    B, L = tokens_BL.shape
    answer = answer_mask_BL.astype(bool)
    n = jnp.sum(answer, axis=1).astype(jnp.int32)
    k_l, k_m = jax.random.split(key)
    counts = stratified_mask_counts(k_l, n, num_samples)  # [S, B]
    keys = jax.random.split(k_m, num_samples)
    masked = jax.vmap(lambda k, c: _random_subset(k, answer, c))(keys, counts)  # [S, B, L]
    weight = n[None].astype(jnp.float32) / counts.astype(jnp.float32)
    logp_sum = _masked_logp_sum(model, params, tokens_BL, masked, mask_id, attention_mask, positions)
    return jnp.mean(logp_sum * weight, axis=0)


class BlockMasks(NamedTuple):
    masked: jax.Array  # [m, B, P+G] bool: positions fed as the mask token
    loss_mask: jax.Array  # [m, B, G] bool: masked completion tokens that count in the bound (M·C)
    t_hat: jax.Array  # [m, B] float32: empirical mask ratio Σ C·M / L over the completion
    block: jax.Array  # [m, B] int32: the partly-masked block


def block_random_masks(
    key: jax.Array,
    prompt_len: int,
    completion_mask_BG: jax.Array,
    *,
    block_length: int,
    num_samples: int,
    p_mask_clean: float = 0.15,
    min_t: float = 0.0,
    max_t: float = 1.0,
) -> BlockMasks:
    """SPG's block-wise masking (`forward_type='block_random'`, dllm_rl.md §5.3) for m = num_samples draws.

    completion_mask_BG: [B, G] bool, completion tokens up to and including the first EOS.
    Per row and draw: a block b among the nb = ⌈len/block_length⌉ blocks holding completion tokens is chosen as
    `randperm(num_blocks) % nb` (its first m entries); earlier blocks stay clean, later blocks and every
    position past the completion are masked; inside b, n ~ U{max(⌊ml·min_t⌋,1) .. min(⌊ml·max_t⌋,ml)} of its
    ml valid tokens are masked; then the prompt and earlier clean blocks are masked w.p. `p_mask_clean`.
    """
    B, G = completion_mask_BG.shape
    if G % block_length:
        raise ValueError(f"completion length {G} is not a multiple of block_length={block_length}")
    num_blocks = G // block_length
    if num_samples > num_blocks:
        raise ValueError(f"num_samples={num_samples} exceeds the number of blocks {num_blocks}")
    comp = completion_mask_BG.astype(bool)
    length = jnp.sum(comp, axis=1).astype(jnp.int32)  # [B]
    nb = jnp.maximum((length + block_length - 1) // block_length, 1)
    k_perm, k_n, k_sub, k_clean = jax.random.split(key, 4)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_blocks))(jax.random.split(k_perm, B))  # [B, nb]
    block = (perms[:, :num_samples] % nb[:, None]).T.astype(jnp.int32)  # [m, B]
    pos = jnp.arange(G, dtype=jnp.int32)
    pos_block = pos // block_length  # [G]
    ml = jnp.clip(length[None] - block * block_length, 0, block_length)  # [m, B]
    lo = jnp.maximum(jnp.floor(ml * min_t).astype(jnp.int32), 1)
    hi = jnp.minimum(jnp.floor(ml * max_t).astype(jnp.int32), ml)
    n_mask = jax.random.randint(k_n, (num_samples, B), lo, jnp.maximum(hi, lo) + 1)
    in_block = pos_block[None, None] == block[..., None]  # [m, B, G]
    eligible = in_block & comp[None]
    sub_keys = jax.random.split(k_sub, num_samples)
    chosen = jax.vmap(_random_subset)(sub_keys, eligible, n_mask)  # [m, B, G]
    later = pos_block[None, None] > block[..., None]
    gen_masked = chosen | later | ~comp[None]
    earlier = pos_block[None, None] < block[..., None]
    clean = jnp.concatenate([jnp.ones((num_samples, B, prompt_len), bool), earlier & ~gen_masked], axis=-1)
    noise = jax.random.uniform(k_clean, clean.shape) < p_mask_clean
    masked = jnp.concatenate([jnp.zeros((num_samples, B, prompt_len), bool), gen_masked], axis=-1) | (clean & noise)
    loss_mask = masked[..., prompt_len:] & comp[None]
    t_hat = jnp.sum(loss_mask, axis=-1) / jnp.maximum(length[None], 1).astype(jnp.float32)
    return BlockMasks(masked, loss_mask, t_hat.astype(jnp.float32), block)


def elbo_block(
    model: ModelFn,
    params: Any,
    key: jax.Array,
    tokens_BL: jax.Array,
    prompt_len: int,
    completion_mask_BG: jax.Array,
    mask_id: int,
    *,
    block_length: int,
    num_samples: int = 2,
    p_mask_clean: float = 0.15,
    attention_mask: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
) -> jax.Array:
    """SPG's per-sequence ELBO with block-wise masks (SPGTrainer._get_per_seq_logps, dllm_rl.md §5.2):

        elbo_j = (1/m) Σ_τ Σ_i C_i M_τi log p_τi / Σ_i C_i M_τi          (= the 1/t̂-weighted ELBO divided by L)

    Returns [B] (length-normalised: multiply by L_j for a log-likelihood scale). A draw masking no completion
    token contributes 0 (SPG clamps the denominator to 1e-8).
    """
    bm = block_random_masks(key, prompt_len, completion_mask_BG, block_length=block_length,
                            num_samples=num_samples, p_mask_clean=p_mask_clean)
    logp = _draw_log_probs(model, params, tokens_BL, bm.masked, mask_id, attention_mask,
                           positions)[..., prompt_len:]
    num = jnp.sum(jnp.where(bm.loss_mask, logp, 0.0), axis=-1)
    den = jnp.maximum(jnp.sum(bm.loss_mask, axis=-1).astype(jnp.float32), 1e-8)
    return jnp.mean(num / den, axis=0)
