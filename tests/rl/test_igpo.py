"""IGPO (jaxllm.rl.igpo and the igpo losses): hint layout, replacement, advantages of the final group, entropy
filter, Theorem 1's ρ(1 − ρ) scaling, and the regroup hook of the one RL loop."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.rl import RLLossConfig, make_loss
from jaxllm.rl.igpo import (
    HintTrace,
    IGPOConfig,
    IGPORegrouper,
    diffusion_inpainter,
    entropy_filter,
    hint_layout,
    max_replacements,
    replacement_pairs,
)
from jaxllm.rl.loop import PromptSet, RolloutConfig, RolloutSource
from jaxllm.sampling.diffusion import DiffusionSamplerConfig

V, MASK = 8, 8  # real tokens 0..7, mask id 8
ANSWER_TOKEN = 7  # appears only in the answer span of the test traces


@dataclasses.dataclass(frozen=True)
class EmbedModel:
    """logits[b, i] = params["tok"][tokens[b, i]] + params["pos"][i]: a hashable toy policy over V + 1 ids
    (every masked position of a row sees the same logits up to its position term)."""

    def __call__(self, params, tokens, *, attention_mask=None, positions=None):
        return params["tok"][tokens] + params["pos"][None, : tokens.shape[1]]


def _params(seed, L):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"tok": jax.random.normal(k1, (V + 1, V + 1)), "pos": jax.random.normal(k2, (L, V + 1))}


def _trace(rng, n_reason, n_answer):
    return HintTrace(np.concatenate([rng.integers(0, ANSWER_TOKEN, n_reason), np.full(n_answer, ANSWER_TOKEN)]),
                     n_reason)


class _State:
    def __init__(self, params):
        self.params = params


def test_hint_positions_never_change_and_no_answer_token_is_revealed():
    """Over 200 random traces and hint ratios: (a) the default (paper) layout never fixes a token of the answer
    span (source index < answer_start, and the answer-only token never appears), nothing lies in the free tail,
    and the revealed share tracks η; (b) the diffusion sampler with those hints (τ = 1, random policy) returns
    every fixed token unchanged."""
    rng = np.random.default_rng(0)
    gen, P = 24, 3
    cfg = IGPOConfig(chunk_min=2, chunk_max=4, free_tail=4)
    layouts, prompts = [], []
    for _ in range(200):
        tr = _trace(rng, int(rng.integers(4, 16)), int(rng.integers(1, 5)))
        lay = hint_layout(tr, gen, float(rng.uniform(0.2, 0.6)), rng, cfg)
        assert not (lay.fixed_tokens[lay.fixed] == ANSWER_TOKEN).any()
        assert (lay.source[lay.fixed] < tr.answer_start).all() and (lay.source[~lay.fixed] == -1).all()
        np.testing.assert_array_equal(lay.fixed_tokens[lay.fixed], tr.tokens[lay.source[lay.fixed]])
        assert not lay.fixed[gen - cfg.free_tail:].any()
        layouts.append(lay)
        prompts.append(rng.integers(0, V, P))
    # the code's mode reveals the last chunk, which here holds answer tokens
    code = dataclasses.replace(cfg, reveal_answer=True)
    leaks = sum((hint_layout(_trace(rng, 6, 4), gen, 0.4, rng, code).fixed_tokens == ANSWER_TOKEN).any()
                for _ in range(50))
    assert leaks == 50
    model = EmbedModel()
    inpaint = diffusion_inpainter(model, DiffusionSamplerConfig(gen_length=gen, block_length=8, steps=12,
                                                                mask_id=MASK, temperature=1.0))
    ft = np.stack([lay.fixed_tokens for lay in layouts])
    fx = np.stack([lay.fixed for lay in layouts])
    assert fx.sum() > 500
    out = np.asarray(inpaint(_params(0, P + gen), jnp.asarray(np.stack(prompts)), jax.random.PRNGKey(1), None,
                             jnp.asarray(ft), jnp.asarray(fx)))
    np.testing.assert_array_equal(out[:, P:][fx], ft[fx])
    assert not (out[:, P:] == MASK).any()


def test_hint_ratio_follows_eta_and_spacing_stretches_gaps():
    """With chunks of exactly 2 tokens over a 10-token reasoning (5 chunks): η = 1 reveals all 10 tokens
    (int(5·0) = 0 masked), η = 0 none; with scale 1.5 (gen 40, free tail 10, trace 12 → clip(30/12) = 1.5)
    the first revealed chunk starting at s lands at int(1.5·s), and gaps are stretched."""
    tr = HintTrace(np.arange(12) % 7, 10)
    cfg = IGPOConfig(chunk_min=2, chunk_max=2, free_tail=10, max_scale=1.0)
    rng = np.random.default_rng(0)
    full = hint_layout(tr, 40, 1.0, rng, cfg)
    assert full.fixed.sum() == 10 and list(full.source[:10]) == list(range(10))
    assert hint_layout(tr, 40, 0.0, rng, cfg).fixed.sum() == 0
    stretched = hint_layout(tr, 40, 1.0, rng, dataclasses.replace(cfg, max_scale=1.5))
    pos = np.flatnonzero(stretched.fixed)
    assert list(pos) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # gaps of 0 stay 0 when every chunk is revealed
    for seed in range(20):  # with hidden chunks, each revealed chunk moves by ≥ its stretched gap
        lay = hint_layout(tr, 40, 0.4, np.random.default_rng(seed), dataclasses.replace(cfg, max_scale=1.5))
        src, p = lay.source[lay.fixed], np.flatnonzero(lay.fixed)
        assert (p >= src).all() and len(src) == 2 * (5 - int(5 * 0.6))


def test_replacement_count_bounds():
    """K = min(#correct inpainted, ⌊λG⌋) for every pattern of 6 binary inpainted rewards and λ ∈ {0, 1/3, 1/2, 1}:
    never above ⌊λG⌋, never above the number of correct samples, and only correct samples are used."""
    for lam in (0.0, 1 / 3, 0.5, 1.0):
        kmax = max_replacements(6, IGPOConfig(max_replace_frac=lam))
        assert kmax == math.floor(lam * 6 + 1e-9)
        for bits in range(64):
            r = np.array([(bits >> j) & 1 for j in range(6)], float)
            pairs = replacement_pairs(r, kmax, 1.0)
            assert len(pairs) == min(int(r.sum()), kmax)
            assert [s for s, _ in pairs] == list(range(len(pairs)))
            assert all(r[j] == 1.0 for _, j in pairs)


def test_entropy_filter_keeps_top_ceil_tau_n_and_every_self_generated_position():
    """Random entropies and hint masks: per row exactly ⌈τ·n⌉ hint positions are kept, they are the largest
    entropies among the hints (no dropped hint has a larger one), and every non-hint position is kept."""
    rng = np.random.default_rng(0)
    for tau in (0.2, 0.5, 1.0):
        ent = rng.normal(size=(50, 30))
        hint = rng.random((50, 30)) < rng.random((50, 1))
        keep = entropy_filter(ent, hint, tau)
        assert keep[~hint].all()
        for b in range(50):
            n = hint[b].sum()
            kept = keep[b] & hint[b]
            assert kept.sum() == math.ceil(round(tau * n, 9))
            if kept.any() and (hint[b] & ~keep[b]).any():
                assert ent[b][kept].min() >= ent[b][hint[b] & ~keep[b]].max()


def _fake_source(G, n_groups, inpaint_correct, *, lam=0.5, tau=0.5, loss="igpo"):
    """A RolloutSource whose sampler is always wrong (token 0 everywhere) and whose inpainter writes token 1 at
    the non-fixed positions of the rows listed in inpaint_correct (per group: the j's that come out correct);
    the reward is 1 iff the completion's last token is 1."""
    P, gen = 2, 8
    cfg = IGPOConfig(chunk_min=2, chunk_max=2, free_tail=2, max_replace_frac=lam, entropy_tau=tau, eta_low=0.6,
                     eta_high=0.6)
    model = EmbedModel()
    params = _params(0, P + gen)

    def sample(params, prompts, key, lengths=None):
        return jnp.concatenate([prompts, jnp.zeros((prompts.shape[0], gen), jnp.int32)], axis=1)

    def inpaint(params, prompts, key, lengths, ft, fx):
        b = prompts.shape[0]
        good = np.zeros((b, gen), bool)
        for a in range(b // G):
            for j in inpaint_correct:
                good[a * G + j] = True
        gen_tok = np.where(np.asarray(fx), np.asarray(ft), np.where(good, 1, 0))
        return jnp.concatenate([prompts, jnp.asarray(gen_tok, jnp.int32)], axis=1)

    def reward(i, comp):
        return float(comp[-1] == 1)

    traces = {i: HintTrace(np.array([3, 4, 5, 6, 3, 4, 7]), 6) for i in range(n_groups)}
    regroup = IGPORegrouper(cfg, model=model, mask_id=MASK, gen_length=gen, group_size=G, inpaint_fn=inpaint,
                            reward_fn=reward, hints=traces.get)
    lcfg = RLLossConfig(mask_id=MASK, loss=loss, group_size=G, kl_beta=0.0, inner_steps=1, block_length=gen,
                        num_mask_draws=1, p_mask_clean=0.0)
    prompts = PromptSet(np.arange(n_groups * P, dtype=np.int32).reshape(n_groups, P) % V)
    src = RolloutSource(sample, reward, prompts, RolloutConfig(batch_size=G * n_groups, group_size=G), lcfg,
                        model=model, log_bounds=False, regroup_fn=regroup)
    return src, _State(params), lcfg, model


@pytest.mark.parametrize("correct", [(), (1,), (0, 2, 4), (0, 1, 2, 3, 4, 5)])
def test_final_group_advantages_are_one_minus_rho_and_minus_rho(correct):
    """Through the loop's hook: all-wrong groups of G = 6 with the given correct inpainted samples; K =
    min(#correct, ⌊0.5·6⌋ = 3) rows are replaced, the advantages are 1 − ρ on them and −ρ elsewhere (ρ = K/6),
    the metrics count them, and token_weight is 1 off the hints and keeps ⌈τ·n⌉ hints per replaced row."""
    G = 6
    src, state, _, _ = _fake_source(G, 2, correct)
    state.step, state.rng = 0, jax.random.PRNGKey(0)
    out = src(state, jax.random.PRNGKey(3))
    K = min(len(correct), 3)
    rho = K / G
    adv = np.asarray(out.batch["advantages"]).reshape(2, G)
    expected = np.array([1 - rho] * K + [-rho] * (G - K))
    np.testing.assert_allclose(adv, np.stack([expected, expected]), atol=1e-6)
    assert out.metrics["igpo/all_wrong_share"] == 1.0
    assert out.metrics["igpo/replaced"] == 2 * K
    assert out.metrics["igpo/rescued_groups"] == (2.0 if K else 0.0)
    assert out.metrics["igpo/all_wrong_share_after"] == (0.0 if K else 1.0)
    w = np.asarray(out.batch["token_weight"])
    hint_rows = w.reshape(2, G, -1)[:, :K]
    assert (w.reshape(2, G, -1)[:, K:] == 1).all()
    if K:  # hints: η = 0.6 of 3 chunks → 3 − int(3·0.4) = 2 chunks = 4 tokens; τ = 0.5 keeps 2
        assert ((hint_rows == 0).sum(axis=-1) == 2).all()


@pytest.mark.slow
def test_igpo_loss_runs_on_the_regrouped_batch_and_the_filter_matters():
    """The igpo / igpo_gspo / igpo_spg_mix losses take the regrouped batch; the gradient changes when the
    filtered hint tokens are put back (token_weight = 1), so the weight reaches the loss."""
    src, state, lcfg, model = _fake_source(6, 2, (0, 1))
    state.step, state.rng = 0, jax.random.PRNGKey(0)
    batch = dict(src(state, jax.random.PRNGKey(3)).batch)
    for k in ("inner_keys", "old_logps_all"):
        batch.pop(k, None)
    assert (np.asarray(batch["token_weight"]) == 0).any()
    for loss in ("igpo", "igpo_gspo", "igpo_spg_mix"):
        fn = make_loss(model, dataclasses.replace(lcfg, loss=loss))
        g = jax.grad(lambda p, b, fn=fn: fn(p, b, jax.random.PRNGKey(0))[0])
        g_filtered = g(state.params, batch)["tok"]
        g_all = g(state.params, {**batch, "token_weight": jnp.ones_like(batch["token_weight"])})["tok"]
        assert np.isfinite(np.asarray(g_filtered)).all()
        assert float(jnp.max(jnp.abs(g_filtered - g_all))) > 1e-6, loss


@dataclasses.dataclass(frozen=True)
class SharedLogits:
    """logits [B, L, V] = params [L, V] for every row: φ_i = log softmax(params)[pos, o_i], ∇φ = e_o − p."""

    def __call__(self, params, tokens, *, attention_mask=None, positions=None):
        return jnp.broadcast_to(params[None], (*tokens.shape, params.shape[-1]))


def test_theorem_1_gradient_is_rho_one_minus_rho_times_the_difference():
    """Theorem 1 on a toy where it is exact: one completion token, shared logits, K correct samples (token 1)
    and G − K wrong ones (token 0) in a group of 8, binary rewards, A = r − mean(r), φ_old = φ (ratio 1). The
    igpo loss's gradient equals −ρ(1 − ρ)(∇φ_correct − ∇φ_wrong) with ∇φ_o = e_o − softmax (closed form), so its
    norm is ρ(1 − ρ)·‖e_1 − e_0‖ = √2·ρ(1 − ρ): zero at ρ ∈ {0, 1}, largest at ρ = ½."""
    from jaxllm.rl.advantages import group_advantages

    G, Vt, P = 8, 4, 1
    model = SharedLogits()
    params = jnp.asarray(np.random.default_rng(0).normal(size=(P + 1, Vt)), jnp.float32)
    cfg = RLLossConfig(mask_id=Vt - 1, loss="igpo", group_size=G, kl_beta=0.0, clip_eps=0.2, p_mask_clean=0.0)
    fn = make_loss(model, cfg)
    grad_fn = jax.jit(jax.grad(lambda p, b: fn(p, b, jax.random.PRNGKey(0))[0]))
    norms = []
    for K in range(G + 1):
        comp_tok = np.array([1] * K + [0] * (G - K))
        r = (comp_tok == 1).astype(np.float32)
        batch = {"tokens": jnp.asarray(np.stack([np.zeros(G), comp_tok], 1), jnp.int32),
                 "completion_mask": jnp.ones((G, 1), bool), "advantages": group_advantages(jnp.asarray(r), G)}
        grad = np.asarray(grad_fn(params, batch))
        rho = K / G
        e = np.eye(Vt)
        expected = np.zeros((P + 1, Vt))
        expected[P] = -rho * (1 - rho) * (e[1] - e[0])  # the softmax terms cancel: Σ_i A_i = 0
        np.testing.assert_allclose(grad, expected, atol=1e-6)
        norms.append(np.linalg.norm(grad))
    np.testing.assert_allclose(norms, [math.sqrt(2) * (k / G) * (1 - k / G) for k in range(G + 1)], atol=1e-6)
    assert int(np.argmax(norms)) == G // 2
