"""The jitted trace sampler (alive mask, ring buffer, refilled slots) against a plain host-side loop that decodes
one trace at a time with the same per-trace keys and applies the same stopping rule in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.inference import deepconf as dc
from jaxllm.inference.online import deepconf_online
from jaxllm.models import Model, get_preset, init_params
from jaxllm.models import transformer as tfm
from jaxllm.sampling.autoregressive import (
    LOW_CONFIDENCE,
    MAX_LENGTH,
    STOP_TOKEN,
    SamplingConfig,
    TraceSamplingConfig,
    filter_logits,
    generate_traces,
)

CFG = get_preset("tiny_mobilellm", vocab_size=40, max_seq_len=64)
MODEL = Model(CFG)
PROMPT = np.asarray([1, 5, 9, 11, 3], np.int32)
EOS, N, W, K = 3, 20, 4, 20  # token 3 is frequent under this model: many traces end early
SAMPLING = SamplingConfig(max_new_tokens=N, temperature=1.0, top_k=30, stop_tokens=(EOS,))


@pytest.fixture(scope="module")
def params():
    p = init_params(CFG, jax.random.PRNGKey(0))
    # A random model's next-token distributions are all near uniform; sharpen them so confidences vary.
    return {**p, "embed": p["embed"] * 3.0}


def host_traces(params, key, n, threshold, first=0):
    """Trace i = first.. first+n-1 decoded alone: batch 1, its own KV cache, key fold_in(fold_in(key, i), t)."""
    P = len(PROMPT)
    step = jax.jit(lambda p, tok, cache, i: MODEL.forward(p, tok, cache=cache, cache_index=i))
    pre = MODEL.forward(params, jnp.asarray(PROMPT)[None], cache=tfm.init_cache(CFG, 1, P + N), cache_index=0)
    out = []
    for i in range(first, first + n):
        logits, cache, toks, confs, reason = pre.logits[0, -1], pre.cache, [], [], None
        ki = jax.random.fold_in(key, i)
        for t in range(N):
            x = filter_logits(logits[None], SAMPLING.temperature, SAMPLING.top_k, SAMPLING.top_p)[0]
            tok = int(jax.random.categorical(jax.random.fold_in(ki, t), x))
            z = np.asarray(logits, np.float64)
            logp = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
            confs.append(-np.sort(logp)[::-1][:20].mean())
            toks.append(tok)
            if tok == EOS:
                reason = STOP_TOKEN
            elif len(confs) >= W and np.mean(confs[-W:]) < threshold:
                reason = LOW_CONFIDENCE
            elif len(toks) == N:
                reason = MAX_LENGTH
            if reason is not None:
                break
            o = step(params, jnp.asarray([[tok]]), cache, P + t)
            logits, cache = o.logits[0, 0], o.cache
        out.append((toks, np.asarray(confs), reason))
    return out


@pytest.fixture(scope="module")
def reference(params):
    key = jax.random.PRNGKey(7)
    free = host_traces(params, key, K, -np.inf)
    means = np.sort(np.concatenate([np.convolve(c, np.ones(W) / W, "valid") for _, c, _ in free]))
    # A threshold in the middle of the widest gap near the median of all window means: float32 (sampler) and
    # float64 (host) window means can then never fall on different sides of it.
    lo, hi = len(means) // 3, 2 * len(means) // 3
    g = lo + int(np.argmax(np.diff(means[lo:hi])))
    s = float(means[g] + means[g + 1]) / 2
    assert means[g + 1] - means[g] > 1e-5
    return key, s, host_traces(params, key, K, s)


@pytest.mark.parametrize("slots,refill", [pytest.param(K, False, marks=pytest.mark.slow), (6, True),
                                          pytest.param(1, True, marks=pytest.mark.slow)])
def test_jitted_sampler_equals_host_simulation_token_for_token(params, reference, slots, refill):
    key, s, want = reference
    st = generate_traces(MODEL, params, PROMPT, key, TraceSamplingConfig(
        SAMPLING, slots=slots, max_traces=K, window=W, confidence_k=20, refill=refill), threshold=s,
        num_traces=K if refill else slots)
    reasons = [r for _, _, r in want]
    assert {STOP_TOKEN, LOW_CONFIDENCE} <= set(reasons)  # the case exercises both kinds of early end
    for i, (toks, confs, reason) in enumerate(want):
        n = len(toks)
        assert int(st.lengths[i]) == n and int(st.reason[i]) == reason, i
        np.testing.assert_array_equal(st.tokens[i, :n], toks)
        assert (np.asarray(st.tokens[i, n:]) == SAMPLING.pad_id).all()
        np.testing.assert_allclose(st.confidence[i, :n], confs, rtol=2e-6)
    assert int(st.finished) == K and int(st.generated) == sum(len(t) for t, _, _ in want)
    assert sorted(np.asarray(st.finish_order).tolist()) == list(range(K))
    if slots == 1:  # one slot: traces run in id order
        np.testing.assert_array_equal(st.finish_order, np.arange(K))


@pytest.fixture(scope="module")
def free_pool(params, reference):
    return generate_traces(MODEL, params, PROMPT, reference[0], TraceSamplingConfig(SAMPLING, slots=K, max_traces=K,
                                                                                    window=W))


def test_sampler_confidence_and_logprobs_equal_the_full_forward(params, free_pool):
    st = free_pool
    seq = jnp.asarray(np.concatenate([np.broadcast_to(PROMPT, (K, len(PROMPT))), np.asarray(st.tokens)], 1))
    logits = MODEL(params, seq[:, :-1])[:, len(PROMPT) - 1:]  # causal: padding after a trace's end changes nothing
    logp = jax.nn.log_softmax(logits, -1)
    conf = dc.token_confidence(logits, 20)
    chosen = jnp.take_along_axis(logp, st.tokens[..., None], -1)[..., 0]
    for i in range(K):
        n = int(st.lengths[i])
        np.testing.assert_allclose(st.confidence[i, :n], conf[i, :n], rtol=1e-5)  # KV cache vs full forward
        np.testing.assert_allclose(st.logprobs[i, :n], chosen[i, :n], rtol=1e-4, atol=1e-5)
        assert (np.asarray(st.confidence[i, n:]) == 0).all() and (np.asarray(st.logprobs[i, n:]) == 0).all()


def test_online_stop_on_the_free_pool_predicts_the_sampler_cut(reference, free_pool):
    key, s, want = reference
    free = free_pool
    mask = np.arange(N)[None] < np.asarray(free.lengths)[:, None]
    cut, stopped = dc.online_stop(free.confidence, jnp.asarray(mask), W, s)
    np.testing.assert_array_equal(cut, [len(t) for t, _, _ in want])
    np.testing.assert_array_equal(stopped, [r == LOW_CONFIDENCE for _, _, r in want])


@pytest.mark.slow
def test_online_driver_with_one_slot_equals_the_pool_simulation(params):
    """With one slot and a look after every trace, the real run is the sequential process the paper simulates."""
    key, budget = jax.random.PRNGKey(3), 24
    decode = lambda toks: "\\boxed{" + str(int(toks[0]) % 3) + "}"  # a 3-way "answer" from the first token
    tc = TraceSamplingConfig(SAMPLING, slots=budget, max_traces=budget, window=W)
    pool = generate_traces(MODEL, params, PROMPT, key, tc)
    texts = [decode(np.asarray(pool.tokens[i, :int(pool.lengths[i])])) for i in range(budget)]
    ids, valid, keys, _ = dc.answer_ids(texts)
    mask = jnp.asarray(np.arange(N)[None] < np.asarray(pool.lengths)[:, None])
    for keep, tau in [(0.1, 0.95), (0.9, 0.7), (0.9, 2.0)]:
        c = dc.DeepConfConfig(window=W, tail=W, warmup=6, keep_fraction=keep, tau=tau)
        sim = dc.online_deepconf(pool.confidence, mask, jnp.asarray(ids), jnp.asarray(valid), c, len(keys))
        run = deepconf_online(MODEL, params, PROMPT, key, c, TraceSamplingConfig(SAMPLING, slots=1, window=W),
                              budget, decode)
        assert run.threshold == pytest.approx(float(sim.threshold), rel=1e-6)
        assert run.traces_started == int(sim.traces) and run.tokens == int(sim.tokens), (keep, tau)
        assert keys.index(run.answer) == int(sim.winner)
        for r in run.traces:  # every trace of the run is the pool's trace, cut where online_stop says
            np.testing.assert_array_equal(r["tokens"], np.asarray(pool.tokens[r["id"], :r["length"]]))


def test_bad_calls_name_the_problem(params):
    tc = TraceSamplingConfig(SAMPLING, slots=2, max_traces=2, window=W)
    with pytest.raises(TypeError, match="Model"):
        generate_traces(CFG, params, PROMPT, jax.random.PRNGKey(0), tc)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate_traces(MODEL, params, np.asarray([1, 99]), jax.random.PRNGKey(0), tc)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate_traces(MODEL, params, np.ones(50, np.int32), jax.random.PRNGKey(0), tc)
    with pytest.raises(ValueError, match="num_traces"):
        generate_traces(MODEL, params, PROMPT, jax.random.PRNGKey(0), tc, num_traces=3)
