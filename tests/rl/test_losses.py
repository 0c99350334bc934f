"""SPG / d1 / wd1 losses: hand-computed values (numpy, from the estimators' own outputs on the same masks),
the properties the papers state, the inner-step mask keys, jit, and the errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import diffusion
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.rl import (
    LOSSES,
    RLLossConfig,
    group_advantages,
    inner_step_keys,
    make_loss,
    one_step_token_logps,
    rollout_logps,
    spg_bounds,
    wd1_weights,
)
from tests.rl import toy

MODEL = toy.TableModel(length=6, vocab=3)
MASK = MODEL.mask_id
P, G, GROUP = 2, 4, 3
KEY = jax.random.PRNGKey(11)


@pytest.fixture(scope="module")
def params():
    return jnp.asarray(toy.random_table(MODEL, seed=2), jnp.float32)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 3, size=(2 * GROUP, P + G)).astype(np.int32)
    lengths = np.array([4, 3, 2, 4, 1, 4])
    rewards = np.array([1.0, 0.0, 0.5, 2.0, 0.0, 0.0], np.float32)
    return {"tokens": jnp.asarray(tokens), "completion_mask": jnp.asarray(np.arange(G)[None] < lengths[:, None]),
            "advantages": group_advantages(jnp.asarray(rewards), GROUP)}


def cfg_for(loss, **kw):
    base = dict(mask_id=MASK, loss=loss, group_size=GROUP, num_mask_draws=2, block_length=2, beta=1.5)
    return RLLossConfig(**{**base, **kw})


def group_token_mean(values_B, weights_B, n):
    return np.mean((values_B * weights_B).reshape(n, -1).sum(1) / weights_B.reshape(n, -1).sum(1))


# ---- SPG ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["group", "batch"])
def test_spg_loss_uses_elbo_for_positive_and_mixture_for_negative_advantages(params, batch, reduction):
    """loss = Σ_j −A_j·bound_j·L_j / Σ_j L_j, bound = ELBO if A > 0 else ω·EUBO + (1−ω)·ELBO (SPG eq. 5, 8 and
    `compute_loss`), per group then averaged, or over the whole batch."""
    cfg = cfg_for("spg_mix", omega=0.3, reduction=reduction)
    loss, metrics = make_loss(MODEL, cfg)(params, batch, KEY)
    bounds, _ = spg_bounds(MODEL, params, batch, KEY, cfg)
    elbo, eubo = np.asarray(bounds.elbo), np.asarray(bounds.eubo)
    adv = np.asarray(batch["advantages"])
    length = np.asarray(batch["completion_mask"]).sum(1).astype(np.float64)
    bound = np.where(adv > 0, elbo, 0.3 * eubo + 0.7 * elbo)
    per_seq = -adv * bound
    want = group_token_mean(per_seq, length, 2) if reduction == "group" else (per_seq * length).sum() / length.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["elbo_mean"]), elbo.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["eubo_mean"]), eubo.mean(), rtol=1e-6)


def test_spg_with_omega_zero_is_elbo_policy_gradient(params, batch):
    """ω = 0: the loss and its gradient are those of −Σ A·ELBO·L / Σ L, the ELBO policy gradient (spg_elbo);
    ω > 0 changes them once some A < 0."""
    def elbo_pg(p):
        bounds, _ = spg_bounds(MODEL, p, batch, KEY, cfg_for("spg_elbo"))
        length = jnp.sum(batch["completion_mask"], axis=1).astype(jnp.float32)
        per = (-batch["advantages"] * bounds.elbo * length).reshape(2, GROUP)
        return jnp.mean(per.sum(1) / length.reshape(2, GROUP).sum(1))

    want, want_grad = jax.value_and_grad(elbo_pg)(params)
    for cfg in (cfg_for("spg_mix", omega=0.0), cfg_for("spg_elbo")):
        (loss, metrics), grad = jax.value_and_grad(make_loss(MODEL, cfg), has_aux=True)(params, batch, KEY)
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), atol=1e-7)
        assert "eubo_mean" not in metrics, "no EUBO computed when ω = 0"
    assert np.asarray(batch["advantages"]).min() < 0
    mix = make_loss(MODEL, cfg_for("spg_mix", omega=0.5))(params, batch, KEY)[0]
    assert abs(float(mix) - float(want)) > 1e-3


def test_inner_step_keys_give_fresh_reproducible_masks(params, batch):
    """Each inner update draws new masks from its own key (SPG/d1 `mask_seeds[step % μ]`); the same key gives
    the same loss, bit for bit."""
    keys = inner_step_keys(jax.random.PRNGKey(3), 4)
    assert keys.shape[0] == 4 and len({tuple(np.asarray(k).ravel()) for k in keys}) == 4
    np.testing.assert_array_equal(np.asarray(keys), np.asarray(inner_step_keys(jax.random.PRNGKey(3), 4)))
    loss_fn = make_loss(MODEL, cfg_for("spg_mix"))
    losses_k = [float(loss_fn(params, batch, k)[0]) for k in keys]
    assert losses_k[0] == float(loss_fn(params, batch, keys[0])[0])
    assert len(set(losses_k)) == 4


# ---- d1 ----------------------------------------------------------------------------------------------------

def test_d1_one_step_estimator_masks_the_completion_and_lightly_the_prompt(params, batch):
    """φ(o_k) = log π(o_k | prompt masked w.p. 0.15, whole completion masked), looked up in the model's table."""
    cfg = cfg_for("d1")
    phi = np.asarray(one_step_token_logps(MODEL, params, batch, KEY, cfg))
    tokens = np.asarray(batch["tokens"])
    B, L = tokens.shape
    is_prompt = np.arange(L)[None] < P
    mb = diffusion.forward_mask(KEY, batch["tokens"], MASK, maskable_BL=jnp.asarray(np.broadcast_to(is_prompt, (B, L))),
                                eps=0.0, t_B=jnp.full((B,), 0.15))
    noisy = np.where(np.asarray(mb.masked) | ~is_prompt, MASK, tokens)
    lp = toy.log_softmax(np.asarray(params))
    want = lp[MODEL.index(noisy)[:, None], np.arange(P, L)[None], tokens[:, P:]]
    np.testing.assert_allclose(phi, want, rtol=1e-5)
    # the prompt masking rate, on many rows
    big = jnp.zeros((4096, P + G), jnp.int32)
    many = diffusion.forward_mask(KEY, big, MASK, maskable_BL=jnp.broadcast_to(jnp.arange(P + G) < P, big.shape),
                                  eps=0.0, t_B=jnp.full((4096,), 0.15))
    assert abs(float(jnp.mean(many.masked[:, :P])) - 0.15) < 0.015 and not bool(jnp.any(many.masked[:, P:]))


def test_d1_clipped_ratio_and_k3_kl_match_hand_computation(params, batch):
    """ℓ = −min(ρA, clip(ρ, 1−ε, 1+ε)A) + β(e^(φ_ref−φ) − (φ_ref−φ) − 1), token mean per group (d1
    `compute_loss`), with ratios on both sides of the clip range for both signs of A."""
    cfg = cfg_for("d1", clip_eps=0.2, kl_beta=0.04)
    phi = np.asarray(one_step_token_logps(MODEL, params, batch, KEY, cfg), np.float64)
    log_ratio = np.log(np.array([0.5, 0.9, 1.1, 1.6]))[None] * np.ones((2 * GROUP, 1))
    ref_shift = np.linspace(-0.7, 0.7, 2 * GROUP * G).reshape(2 * GROUP, G)
    b = {**batch, "old_logps": jnp.asarray(phi - log_ratio, jnp.float32), "ref_logps": jnp.asarray(phi + ref_shift, jnp.float32)}
    loss, metrics = make_loss(MODEL, cfg)(params, b, KEY)
    adv = np.asarray(batch["advantages"], np.float64)[:, None]
    comp = np.asarray(batch["completion_mask"], np.float64)
    rho = np.exp(log_ratio)
    un, cl = rho * adv, np.clip(rho, 0.8, 1.2) * adv
    kl = np.exp(ref_shift) - ref_shift - 1
    per_token = -np.minimum(un, cl) + 0.04 * kl
    np.testing.assert_allclose(float(loss), group_token_mean(per_token, comp, 2), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), (kl * comp).sum() / comp.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), (rho * comp).sum() / comp.sum(), rtol=1e-5)
    clipped = (cl < un) & (adv != 0)
    np.testing.assert_allclose(float(metrics["clip_frac"]), (clipped * comp).sum() / comp.sum(), rtol=1e-6)
    assert 0 < float(metrics["clip_frac"]) < 1


def test_d1_clipped_tokens_get_no_gradient(params, batch):
    """PPO clip: with ρ > 1+ε where A > 0 and ρ < 1−ε where A < 0 (and no KL) the loss is flat in θ."""
    cfg = cfg_for("d1", clip_eps=0.2, kl_beta=0.0)
    phi = one_step_token_logps(MODEL, params, batch, KEY, cfg)
    adv = batch["advantages"][:, None]
    old = phi - jnp.where(adv > 0, jnp.log(1.5), jnp.log(0.5))
    grad = jax.grad(lambda p: make_loss(MODEL, cfg)(p, {**batch, "old_logps": old}, KEY)[0])(params)
    assert float(jnp.max(jnp.abs(grad))) == 0.0
    grad_free = jax.grad(lambda p: make_loss(MODEL, cfg)(p, batch, KEY)[0])(params)  # old = φ: ratio 1
    assert float(jnp.max(jnp.abs(grad_free))) > 1e-4


def test_rollout_logps_reproduce_each_inner_steps_masks(params, batch):
    """φ_old pre-computed at rollout time with inner_step_keys reproduces the loss's φ at the same step (ρ = 1,
    nothing clipped, KL 0), and differs at another step's masks."""
    cfg = cfg_for("d1", inner_steps=3)
    rollout_key = jax.random.PRNGKey(9)
    old = rollout_logps(MODEL, params, batch, rollout_key, cfg)
    assert old.shape == (3, 2 * GROUP, G)
    keys = inner_step_keys(rollout_key, 3)
    loss_fn = make_loss(MODEL, cfg)
    for k in range(3):
        _, m = loss_fn(params, {**batch, "old_logps": old[k], "ref_logps": old[k]}, keys[k])
        np.testing.assert_allclose(float(m["ratio_mean"]), 1.0, atol=1e-6)
        assert float(m["clip_frac"]) == 0.0 and abs(float(m["kl"])) < 1e-6
    _, m = loss_fn(params, {**batch, "old_logps": old[0], "ref_logps": old[0]}, keys[1])
    assert abs(float(m["ratio_mean"]) - 1.0) > 1e-3


# ---- wd1 ---------------------------------------------------------------------------------------------------

def test_wd1_weights_are_group_softmaxes_summing_to_one(batch):
    adv = np.asarray(batch["advantages"]).reshape(2, GROUP)
    w_pos, w_neg = (np.asarray(w).reshape(2, GROUP) for w in wd1_weights(batch["advantages"], GROUP, 2.0))
    np.testing.assert_allclose(w_pos.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w_neg.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w_pos, np.exp(2 * adv) / np.exp(2 * adv).sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(w_neg, np.exp(-2 * adv) / np.exp(-2 * adv).sum(1, keepdims=True), rtol=1e-6)


def test_wd1_loss_matches_hand_computation_and_is_flat_for_equal_advantages(params, batch):
    """loss = mean_groups Σ_i (w⁻_i − w⁺_i) Σ_k C_ik φ_ik (wd1 code); equal advantages in a group give w⁺ = w⁻ and
    an exactly zero gradient."""
    cfg = cfg_for("wd1", psi=1.0)
    loss_fn = make_loss(MODEL, cfg)
    loss, _ = loss_fn(params, batch, KEY)
    phi = np.asarray(one_step_token_logps(MODEL, params, batch, KEY, cfg), np.float64)
    seq = (phi * np.asarray(batch["completion_mask"])).sum(1).reshape(2, GROUP)
    adv = np.asarray(batch["advantages"], np.float64).reshape(2, GROUP)
    w_pos = np.exp(adv) / np.exp(adv).sum(1, keepdims=True)
    w_neg = np.exp(-adv) / np.exp(-adv).sum(1, keepdims=True)
    np.testing.assert_allclose(float(loss), np.mean(((w_neg - w_pos) * seq).sum(1)), rtol=1e-5)
    for value in (0.0, 0.7):
        equal = {**batch, "advantages": jnp.full((2 * GROUP,), value)}
        grad = jax.grad(lambda p, b: loss_fn(p, b, KEY)[0])(params, equal)
        assert float(jnp.max(jnp.abs(grad))) == 0.0
    assert float(jnp.max(jnp.abs(jax.grad(lambda p: loss_fn(p, batch, KEY)[0])(params)))) > 1e-4


# ---- every loss: jit, metrics, errors ----------------------------------------------------------------------

EXPECTED_METRICS = {"spg_mix": {"elbo_mean", "eubo_mean"}, "spg_eubo": {"eubo_mean"}, "spg_elbo": {"elbo_mean"},
                    "d1": {"ratio_mean", "clip_frac", "kl"}, "wd1": {"seq_logp_mean"},
                    "igpo": {"ratio_mean", "clip_frac", "kl", "token_weight_frac"},
                    "igpo_gspo": {"ratio_mean", "clip_frac", "kl", "token_weight_frac"},
                    "igpo_spg_mix": {"elbo_mean", "token_weight_frac"}}


def test_registry_lists_every_loss():
    assert set(LOSSES) == set(EXPECTED_METRICS)


@pytest.mark.parametrize("name", [n if n in ("spg_mix", "d1") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EXPECTED_METRICS])
def test_every_loss_is_pure_and_jittable(params, batch, name):
    """jit(loss_fn) equals the eager call; the gradient is finite and non-zero; the documented metrics exist."""
    cfg = cfg_for(name)
    b = ({**batch, "ref_logps": one_step_token_logps(MODEL, params, batch, KEY, cfg)}
         if name in ("d1", "igpo", "igpo_gspo") else batch)
    loss_fn = make_loss(MODEL, cfg)
    eager = loss_fn(params, b, KEY)
    (loss, metrics), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, b, KEY)
    np.testing.assert_allclose(float(loss), float(eager[0]), rtol=1e-5)
    assert EXPECTED_METRICS[name] | {"loss", "adv_abs_mean", "completion_len"} <= set(metrics)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0


def test_config_rejects_bad_values_by_name():
    with pytest.raises(ConfigError, match="beta=0.5.*beta ≥ 1"):
        cfg_for("spg_eubo", beta=0.5)
    with pytest.raises(ConfigError, match="beta=0.9"):
        cfg_for("spg_mix", beta=0.9)
    cfg_for("spg_mix", beta=0.5, omega=0.0)  # no EUBO: β unused
    cfg_for("d1", beta=0.5)
    with pytest.raises(ConfigError, match="loss='grpo' is not one of"):
        cfg_for("grpo")
    with pytest.raises(ConfigError, match="omega"):
        cfg_for("spg_mix", omega=1.5)
    cfg = apply_overrides(cfg_for("spg_mix"), ["loss=wd1", "psi=2.0", "reduction=batch"])
    assert (cfg.loss, cfg.psi, cfg.reduction) == ("wd1", 2.0, "batch")


def test_bad_batches_get_clear_errors(params, batch):
    with pytest.raises(ValueError, match="group_size=4 does not divide the batch size 6"):
        jax.jit(make_loss(MODEL, cfg_for("spg_mix", group_size=4)))(params, batch, KEY)
    with pytest.raises(ValueError, match="ref_logps"):
        make_loss(MODEL, cfg_for("d1", kl_beta=0.04))(params, batch, KEY)
    with pytest.raises(ValueError, match="advantages must be"):
        make_loss(MODEL, cfg_for("wd1"))(params, {**batch, "advantages": batch["advantages"][:4]}, KEY)
    with pytest.raises(ValueError, match="old_logps must be"):
        make_loss(MODEL, cfg_for("d1", kl_beta=0.0))(params, {**batch, "old_logps": jnp.zeros((6, 3))}, KEY)
    with pytest.raises(ValueError, match="not a multiple of block_length=3"):
        make_loss(MODEL, cfg_for("spg_mix", block_length=3))(params, batch, KEY)
    with pytest.raises(ValueError, match="num_samples=3 exceeds the number of blocks 2"):
        make_loss(MODEL, cfg_for("spg_mix", num_mask_draws=3))(params, batch, KEY)
    with pytest.raises(ValueError, match="lacks 'completion_mask'"):
        make_loss(MODEL, cfg_for("spg_mix"))(params, {"tokens": batch["tokens"], "advantages": batch["advantages"]}, KEY)


def _padded_batch(rows, prompt_lengths, comp, pad_to):
    """Left-pad each prompt to pad_to slots (pad id 14), with left_padding_layout's mask and positions."""
    from jaxllm.models import left_padding_layout

    tokens = np.full((len(rows), pad_to + comp.shape[1]), 14, np.int32)
    for b, (row, n) in enumerate(zip(rows, prompt_lengths)):
        tokens[b, pad_to - n:] = row
    attn, pos = left_padding_layout(jnp.asarray(prompt_lengths), pad_to, tokens.shape[1])
    return {"tokens": jnp.asarray(tokens), "completion_mask": jnp.asarray(comp), "attention_mask": attn,
            "positions": pos, "advantages": group_advantages(jnp.asarray([1.0, 0.0, 0.0, 2.0]), 2)}


@pytest.fixture(scope="module")
def transformer_case():
    from jaxllm.models import Model, get_preset, init_params

    cfg_m = get_preset("tiny_llada", vocab_size=16, mask_token_id=15, d_model=32, n_layers=1, d_ff=64)
    rng = np.random.default_rng(1)
    prompt_lengths, G_ = np.array([5, 3, 2, 4]), 4
    rows = [rng.integers(0, 14, size=n + G_).astype(np.int32) for n in prompt_lengths]
    comp = np.arange(G_)[None] < np.array([4, 2, 3, 1])[:, None]
    return Model(cfg_m), init_params(cfg_m, jax.random.PRNGKey(0)), rows, prompt_lengths, comp


def test_transformer_losses_pass_the_padding_layout_to_every_copy(transformer_case):
    """With `models.Model` and left-padded prompts (`left_padding_layout`), attention_mask and positions reach
    the model for every noisy copy: d1's φ of a row (no prompt masking, so the masks are deterministic) is the
    same whether its batch pads prompts to 5 or to 8 slots (fp32: 1e-5)."""
    model, params, rows, prompt_lengths, comp = transformer_case
    cfg = RLLossConfig(mask_id=15, loss="d1", group_size=2, p_mask_clean=0.0, kl_beta=0.0, block_length=2)
    phi = jax.jit(lambda b: one_step_token_logps(model, params, b, KEY, cfg))
    a = phi(_padded_batch(rows, prompt_lengths, comp, 5))
    b = phi(_padded_batch(rows, prompt_lengths, comp, 8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    unmasked = phi({k: v for k, v in _padded_batch(rows, prompt_lengths, comp, 8).items()
                    if k not in ("attention_mask", "positions")})
    assert float(jnp.max(jnp.abs(unmasked - b))) > 1e-3, "without the layout the padding changes φ"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spg_mix", "d1"])
def test_transformer_losses_differentiate_under_jit(transformer_case, name):
    model, params, rows, prompt_lengths, comp = transformer_case
    loss_fn = make_loss(model, RLLossConfig(mask_id=15, loss=name, group_size=2, block_length=2, kl_beta=0.0))
    (loss, _), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, _padded_batch(rows, prompt_lengths, comp, 5), KEY)
    leaves = jax.tree_util.tree_leaves(grad)
    assert bool(jnp.isfinite(loss)) and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert max(float(jnp.max(jnp.abs(g))) for g in leaves) > 0
