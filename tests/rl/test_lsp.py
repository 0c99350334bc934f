"""Language Self-Play (jaxllm.rl.lsp, jaxllm.rewards.judge) against deepconf_lsp.md D2's oracles: hand-computed
advantages, closed-form gradients on tabular policies (exact enumeration), the KL-regularised Gibbs optimum, and
masks / hostile inputs on the tiny decoder."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxllm.config import ConfigError
from jaxllm.models import Model, get_preset, init_params
from jaxllm.rewards.judge import arithmetic_rubric, judge_prompt, parse_integer, parse_score, score_or_zero
from jaxllm.rl.lsp import (
    LSPConfig,
    LSPFormat,
    LSPSource,
    lsp_advantages,
    lsp_loss_fn,
    model_judge,
    policy_loss,
    sequence_token_logps,
    sg_ratio,
)
from jaxllm.sampling.autoregressive import SamplingConfig, generate, pad_prompts
from jaxllm.train import TrainState

# ---------------------------------------------------------------------------------------------- advantages


def test_advantages_are_centred_and_constant_groups_give_zero():
    """D2.1: Σ_j A_Sol(q_i, ·) = 0 for every query, Σ_i A_Ch = 0, and a constant-reward group has A_Sol ≡ 0."""
    r = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    r[2] = 0.7
    adv = lsp_advantages(r)
    np.testing.assert_allclose(np.asarray(adv.solver).sum(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(adv.challenger)), 0.0, atol=1e-6)
    assert np.all(np.asarray(adv.solver)[2] == 0.0)
    # no division by a std: scaling R scales the advantages linearly
    np.testing.assert_allclose(np.asarray(lsp_advantages(3 * r).solver), 3 * np.asarray(adv.solver), rtol=1e-5)


def test_zero_sum_two_by_two_hand_example():
    """D2.2: rewards [[1,0],[1,1]] → V = (0.5, 1), V̄ = 0.75, A_Ch = (+0.25, −0.25), A_Sol = [[0.5,−0.5],[0,0]]."""
    adv = lsp_advantages(np.array([[1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(np.asarray(adv.values), [0.5, 1.0])
    np.testing.assert_allclose(np.asarray(adv.challenger), [0.25, -0.25])
    np.testing.assert_allclose(np.asarray(adv.solver), [[0.5, -0.5], [0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(adv.self_values), [0.0, 0.0])


def test_self_reward_bookkeeping():
    """D2.3: a constant R_Q changes no advantage; a varying R_Q gives A_Ch = (V_Q − mean V_Q) − (V − V̄) and
    A_Sol = centred R + R_Q."""
    rng = np.random.default_rng(1)
    r, rq = rng.random((4, 3)), rng.integers(0, 8, (4, 3)).astype(float)
    zero, const = lsp_advantages(r), lsp_advantages(r, np.full((4, 3), 5.0))
    np.testing.assert_allclose(np.asarray(const.solver), np.asarray(zero.solver), atol=1e-6)
    np.testing.assert_allclose(np.asarray(const.challenger), np.asarray(zero.challenger), atol=1e-6)
    adv = lsp_advantages(r, rq)
    v, vq = r.mean(1), rq.mean(1)
    np.testing.assert_allclose(np.asarray(adv.challenger), (vq - vq.mean()) - (v - v.mean()), atol=1e-5)
    s = r + rq
    np.testing.assert_allclose(np.asarray(adv.solver), s - s.mean(1, keepdims=True), atol=1e-5)


def test_advantage_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        lsp_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="self-rewards"):
        lsp_advantages(np.zeros((2, 2)), np.zeros((2, 3)))


def test_config_rejects_unknown_estimator():
    with pytest.raises(ConfigError, match="kl_estimator"):
        LSPConfig(kl_estimator="k2")


# ---------------------------------------------------------------------------------------------- losses, tabular


def _logp(theta):
    return jax.nn.log_softmax(theta)[:, None]  # [K, 1]: K one-token "sequences"


def test_stop_gradient_ratio_value_and_gradient():
    """D2.4: π/⊥π has value 1 and gradient ∇log π; the surrogate's value is −Σ w·A and jax.grad of it is
    exactly −Σ_b w_b A_b ∇log π(b), on a tabular softmax policy."""
    theta = jnp.asarray([0.3, -1.0, 0.5, 2.0])
    np.testing.assert_allclose(np.asarray(sg_ratio(jnp.log(jax.nn.softmax(theta)))), 1.0, rtol=1e-6)
    a, w = jnp.asarray([1.0, -2.0, 0.5, 0.0]), jnp.asarray([0.1, 0.2, 0.3, 0.4])
    ones = jnp.ones((4, 1))

    def loss(t):
        return policy_loss(_logp(t), _logp(t), ones, a, w, 0.0).loss

    np.testing.assert_allclose(float(jax.jit(loss)(theta)), -float(jnp.sum(w * a)), rtol=1e-6)
    jac = jax.jit(jax.jacobian(jax.nn.log_softmax))(theta)  # [K, K]: ∇ log π(b)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(theta)), -np.asarray((w * a) @ jac), atol=1e-6)


@pytest.mark.parametrize("estimator", ["k1_reward", "k3_token", "literal"])
def test_kl_is_zero_at_initialisation(estimator):
    """D2.5: with θ = θ_Ref the log-ratio is 0, the KL value is 0, and with zero advantages the KL part of the
    gradient is 0 (k1_reward, k3_token; the literal term's gradient β Σ w ∇log π is 0 only in expectation,
    so it is checked with w = π, the exact expectation)."""
    theta = jnp.asarray([0.3, -1.0, 0.5, 2.0])
    w = jax.nn.softmax(theta)
    zeros, ones = jnp.zeros(4), jnp.ones((4, 1))
    out = policy_loss(_logp(theta), _logp(theta), ones, zeros, w, 0.5, estimator)
    np.testing.assert_allclose(np.asarray(out.kl), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(out.loss), 0.0, atol=1e-7)
    g = jax.grad(lambda t: policy_loss(_logp(t), _logp(theta), ones, zeros, jax.lax.stop_gradient(w), 0.5,
                                       estimator).loss)(theta)
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)


def test_literal_kl_has_zero_expected_gradient_and_k1_reward_gives_the_kl_gradient():
    """D2.6, the fact that decides the default estimator: on a categorical policy with exact enumeration
    (row weights = π), E_a[∇(β·log(π_θ(a)/π_Ref(a)))] = 0 for the literal reading, although π_θ ≠ π_Ref and each
    single-sample gradient is not 0; `k1_reward` gives β∇KL(π_θ‖π_Ref) and `k3_token` β∇KL(π_Ref‖π_θ)
    (closed forms differentiated by jax)."""
    rng = np.random.default_rng(3)
    theta, theta_ref = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=6))
    beta, zeros, ones = 0.3, jnp.zeros(6), jnp.ones((6, 1))
    ref = _logp(theta_ref)

    def expected_grad(estimator):
        w = jax.lax.stop_gradient(jax.nn.softmax(theta))
        grad = jax.jit(jax.grad(lambda t: policy_loss(_logp(t), ref, ones, zeros, w, beta, estimator).loss))
        return np.asarray(grad(theta))

    def kl(p_logits, q_logits):
        p = jax.nn.softmax(p_logits)
        return jnp.sum(p * (jax.nn.log_softmax(p_logits) - jax.nn.log_softmax(q_logits)))

    np.testing.assert_allclose(expected_grad("literal"), 0.0, atol=1e-6)
    one_hot = jnp.zeros(6).at[2].set(1.0)  # one sample: its literal gradient β∇log π(a) is not zero
    single = jax.grad(lambda t: policy_loss(_logp(t), ref, ones, zeros, one_hot, beta, "literal").loss)(theta)
    assert float(jnp.max(jnp.abs(single))) > 0.05
    want_k1 = beta * np.asarray(jax.grad(lambda t: kl(t, theta_ref))(theta))
    want_k3 = beta * np.asarray(jax.grad(lambda t: kl(theta_ref, t))(theta))
    assert np.max(np.abs(want_k1)) > 0.05
    np.testing.assert_allclose(expected_grad("k1_reward"), want_k1, atol=1e-6)
    np.testing.assert_allclose(expected_grad("k3_token"), want_k3, atol=1e-6)


@pytest.mark.parametrize("beta", [0.05, 0.5, 100.0])
def test_tabular_challenger_converges_to_the_gibbs_fixed_point(beta):
    """D2.7: with the Solver fixed (success probabilities s_q), a tabular Challenger trained by exact expected
    gradients of L_Ch (reward −s_q, mean baseline, k1_reward) converges to π*(q) ∝ π_Ref(q)·exp(−s_q/β); small β
    concentrates on the hardest query type, large β stays at π_Ref."""
    s = jnp.asarray([0.9, 0.6, 0.3, 0.1])  # query type 3 is the hardest
    theta_ref = jnp.asarray([1.0, 0.5, 0.0, -0.5])
    ref = _logp(theta_ref)
    ones = jnp.ones((4, 1))

    def loss(t):
        p = jax.lax.stop_gradient(jax.nn.softmax(t))
        adv = -s - jnp.sum(p * -s)  # A_Ch = r − mean, r = −V(q) = −s_q
        return policy_loss(_logp(t), ref, ones, adv, p, beta, "k1_reward").loss

    lr = min(1.0, 0.5 / beta)

    @jax.jit
    def run(t):
        return jax.lax.fori_loop(0, 20_000, lambda _, t: t - lr * jax.grad(loss)(t), t)

    pi = np.asarray(jax.nn.softmax(run(theta_ref)))
    target = np.asarray(jax.nn.softmax(jnp.log(jax.nn.softmax(theta_ref)) - s / beta))
    np.testing.assert_allclose(pi, target, atol=2e-3)
    if beta == 0.05:
        assert pi.argmax() == 3 and pi[3] > 0.9
    if beta == 100.0:
        np.testing.assert_allclose(pi, np.asarray(jax.nn.softmax(theta_ref)), atol=5e-3)


# ---------------------------------------------------------------------------------------------- the decoder

VOCAB, EOS, PAD, CP, Q, A = 24, 1, 0, 2, 3, 4


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny_llama", vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16,
                     d_ff=64, max_seq_len=32)
    model = Model(cfg)
    return model, init_params(cfg, jax.random.PRNGKey(0))


FMT = LSPFormat(challenger_prompt=(CP, Q), solver_prefix=(Q,), solver_suffix=(A,), eos_id=EOS, pad_id=PAD,
                max_query_tokens=6, max_answer_tokens=4)


def test_masks_leave_prompt_and_padding_out_of_every_sum(tiny):
    """D2.8: the sequence log-prob of a row counts its generated tokens only: it equals the sampler's own sum of
    per-token log-probs (left-padded prompts there, right-padded rows here), and neither the padding tokens after
    the end token nor the reference log-probs at prompt / padding positions change the loss or its gradient."""
    model, params = tiny
    prompts = [[Q, 7, 8, A], [Q, 9, A], [Q, 5, 6, 7, 8, A]]
    tok, lengths = pad_prompts(prompts, PAD)
    out = generate(model, params, tok, jax.random.PRNGKey(1), FMT.sampling(5), lengths=lengths)
    gen, n = np.asarray(out.tokens), np.asarray(out.lengths)
    rows = [p + list(gen[i, : n[i]]) for i, p in enumerate(prompts)]
    T = 12
    tokens = np.full((3, T), PAD, np.int32)
    mask = np.zeros((3, T), np.float32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
        mask[i, len(prompts[i]): len(r)] = 1.0
    batch = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask)}
    logp, m = jax.jit(sequence_token_logps, static_argnums=0)(model, params, batch)
    np.testing.assert_allclose(np.asarray(jnp.sum(logp * m, 1)), np.asarray(out.logprobs).sum(1), atol=1e-4)
    assert float(jnp.sum(m)) == float(n.sum())

    ref = np.asarray(logp) - 0.1
    full = {**batch, "ref_logps": jnp.asarray(ref), "advantages": jnp.asarray([1.0, -0.5, 0.3]),
            "row_weight": jnp.full(3, 1 / 3), "is_challenger": jnp.zeros(3)}
    fn = lsp_loss_fn(model, LSPConfig(kl_estimator="k3_token", kl_beta=0.2))
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: fn(p, b, None)[0]))
    base_loss, base_grad = value_and_grad(params, full)
    pad_pos = np.asarray(m) == 0
    other = dict(full)
    t2 = tokens.copy()
    for i, r in enumerate(rows):
        t2[i, len(r):] = 13  # change the padding after the end token only
    other["tokens"] = jnp.asarray(t2)
    other["ref_logps"] = jnp.asarray(np.where(pad_pos, 1e6, ref))  # absurd reference values where nothing counts
    loss2, grad2 = value_and_grad(params, other)
    np.testing.assert_allclose(float(loss2), float(base_loss), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), base_grad, grad2)


def _state(params):
    return TrainState(params, None, jnp.int32(0), jax.random.PRNGKey(0))


def _reward(q, a):
    return float(len(a) == 1 and len(q) > 0 and int(a[0]) == int(q[0]))


@pytest.mark.slow  # ~35 s on the loaded 2-core box (two sampler compilations and the loss)
def test_source_scores_invalid_queries_and_masks_the_challenger_prompt(tiny):
    """A random model writes garbage queries (no end token, special tokens inside): they are scored, not
    crashes; challenger rows put <cp> <q> outside the loss mask and their query (with its end token) inside;
    solver rows mask the query they condition on; advantages are centred per role; KL is 0 against itself; a
    judge that raises scores 0 for the batch and is counted."""
    model, params = tiny
    cfg = LSPConfig(n_queries=3, group_size=2, self_reward=True)

    def bad_judge(ro):
        raise RuntimeError("judge down")

    src = LSPSource(model, cfg, FMT, _reward, params, judge=bad_judge)
    with pytest.warns(RuntimeWarning, match="judge raised"):
        sb = src(_state(params), jax.random.PRNGKey(5))
    b, mtr = sb.batch, sb.metrics
    tok, mask = np.asarray(b["tokens"]), np.asarray(b["loss_mask"])
    assert tok.shape == (3 + 6, FMT.row_len) and mask.shape == tok.shape
    assert np.all(mask[:3, :2] == 0) and np.all(tok[:3, :2] == [CP, Q])
    for i in range(3):
        n = int(mask[i].sum())
        assert n >= 1 and np.all(mask[i, 2: 2 + n] == 1) and np.all(mask[i, 2 + n:] == 0)
    for r in range(3, 9):  # solver rows: Q + query + A are prompt
        plen = int(np.flatnonzero(tok[r] == A)[0]) + 1 if (tok[r] == A).any() else None
        assert plen is not None and np.all(mask[r, :plen] == 0)
    adv = np.asarray(b["advantages"])
    np.testing.assert_allclose(adv[:3].sum(), 0.0, atol=1e-6)
    np.testing.assert_allclose(adv[3:].reshape(3, 2).sum(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(b["row_weight"]), [1 / 3] * 3 + [1 / 6] * 6, rtol=1e-6)
    assert src.judge_errors == 6 and mtr["lsp/RQ_mean"] == 0.0
    _, lm = jax.jit(lambda p, b: lsp_loss_fn(model, cfg)(p, b, None))(params, b)
    np.testing.assert_allclose([float(lm["lsp/kl_ch"]), float(lm["lsp/kl_sol"])], 0.0, atol=1e-5)
    assert src.get_state() == {"batches": 1, "reward_errors": 0, "judge_errors": 6}


@pytest.mark.slow
def test_failing_rewards_are_counted_and_data_mode_has_no_challenger_rows(tiny):
    """A reward that raises counts as 0 with a warning (loop.safe_rewards); with data_queries the source is
    solver-only GRPO: N·G rows, all solver, drawn from the data."""
    model, params = tiny

    def raising(q, a):
        raise ValueError("boom")

    src = LSPSource(model, LSPConfig(n_queries=2, group_size=2, self_reward=False), FMT, raising, params,
                    data_queries=[np.array([7, 8]), np.array([9]), np.array([5, 6, 7])])
    with pytest.warns(RuntimeWarning, match="rewards failed"):
        sb = src(_state(params), jax.random.PRNGKey(0))
    assert src.reward_errors == 4 and sb.metrics["lsp/reward_mean"] == 0.0
    assert sb.batch["tokens"].shape[0] == 4 and float(jnp.sum(sb.batch["is_challenger"])) == 0


def test_lsp_without_a_judge_is_an_error(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="needs a judge"):
        LSPSource(model, LSPConfig(self_reward=True), FMT, _reward, params)


@pytest.mark.slow
def test_model_judge_on_a_random_model_counts_malformed_outputs(tiny):
    """The paper's judge path with a real (random) decoder: prompts from JUDGE_PROMPT, strict <Score> parsing;
    garbage output scores 0 and every such judgement is counted, nothing raises."""
    cfg = get_preset("tiny_llama", vocab_size=256, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8,
                     d_ff=32, max_seq_len=1400)
    model = Model(cfg)
    params = init_params(cfg, jax.random.PRNGKey(0))
    judge = model_judge(model, params, lambda s: list(s.encode()[:1300]), lambda ids: bytes(int(i) for i in ids).decode("latin-1"),
                        lambda q: "1+2", lambda a: "3", SamplingConfig(max_new_tokens=8, temperature=1.0),
                        jax.random.PRNGKey(0))
    from jaxllm.rl.lsp import Rollout

    ro = Rollout(np.zeros((2, 3), np.int32), np.ones((2, 3), bool), np.ones(2, bool), np.zeros((4, 2), np.int32),
                 np.ones((4, 2), bool), np.ones(4, bool), [np.array([5]), np.array([6])])
    scores, bad = judge(ro)
    assert scores.shape == (4,) and np.all(scores == 0) and bad == 4


# ---------------------------------------------------------------------------------------------- judge text

HOSTILE = ["", "<Score>", "</Score>", "<Score></Score>", "<Score>8</Score>", "<Score>-1</Score>", "<Score>3.5</Score>",
           "<Score>٣</Score>", "<Score>1e3</Score>", "<Score>" + "9" * 100_000 + "</Score>", "<Score>" * 50_000,
           "<Score><Score>5</Score>", "x" * 30_000, "\x00<Score>\x00</Score>", "<score>5</score>", None, 5, b"<Score>5</Score>"]


def test_score_parser_reads_the_last_valid_score():
    assert parse_score("justification <Calculation>1+1+1</Calculation> <Score>3</Score>") == 3
    assert parse_score("<Score>2</Score> then <Score> 6 </Score>") == 6
    assert parse_score("<Score>7</Score>") == 7 and parse_score("<Score>0</Score>") == 0
    assert parse_score("<Score>5</Score> ... <Score>9</Score>") is None  # the final word is out of range
    assert score_or_zero("no score here") == (0, True) and score_or_zero("<Score>4</Score>") == (4, False)


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_score_parser_on_hostile_output_is_none_fast(text):
    """Malformed or hostile judge output: None (scored 0 and counted by the caller), never an exception, in
    bounded time; only '<Score><Score>5</Score>' holds a well-formed final tag."""
    t0 = time.perf_counter()
    k = parse_score(text)
    assert time.perf_counter() - t0 < 0.5
    assert k == (5 if text == "<Score><Score>5</Score>" else None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("<>/Score0123456789 -.x\n")), max_size=200))
def test_score_parser_never_raises(text):
    k = parse_score(text)
    assert k is None or 0 <= k <= 7


def test_rubric_scores_invalid_queries_lower_and_never_raises():
    """The toy's R_Q: a valid, terminated query with a well-formed answer scores 7; an unparseable one loses
    the three query points and the plausibility point; out-of-range values and duplicates lose theirs; any
    input type is scored, not raised on."""
    kw = dict(query_terminated=True, answer_terminated=True, duplicate=False, max_chars=16, max_abs_value=99)
    assert arithmetic_rubric("3+4*2", "11", **kw) == 7
    assert arithmetic_rubric("3+4*2", "9999", **kw) == 6  # implausibly long answer
    assert arithmetic_rubric("3+*", "11", **{**kw, "query_terminated": False}) == 3
    assert arithmetic_rubric("9*9*9", "11", **kw) == 5  # parses, but |729| > 99: no value, no plausibility
    assert arithmetic_rubric("3+4", "7", **{**kw, "duplicate": True}) == 6
    assert arithmetic_rubric("3+4", "seven", **kw) == 5
    for q, a in [(None, None), ("(" * 100, ")" * 100), ("1/0", "0"), ("9" * 50, "-"), (3, 4)]:
        assert 0 <= arithmetic_rubric(q, a, **kw) <= 7
    assert parse_integer(" -12 ") == -12 and parse_integer("1.0") is None and parse_integer("٣") is None
    assert "3+4" in judge_prompt("3+4", "7") and "<Score>" in judge_prompt(None, None)
