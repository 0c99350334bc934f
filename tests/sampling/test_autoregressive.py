"""KV-cache sampler: equals the full forward, equals transformers' greedy generate, reproducible, strict."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import hf
from jaxllm.models import Model, get_preset, init_params
from jaxllm.models import transformer as tfm
from jaxllm.sampling.autoregressive import SamplingConfig, filter_logits, generate

CFG = get_preset("tiny_mobilellm", vocab_size=64, max_seq_len=64)
MODEL = Model(CFG)
PROMPTS = [[1, 5, 9, 11, 3], [1, 7], [4, 4, 8]]


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def test_cached_decode_matches_full_forward_at_every_step(params):
    s = SamplingConfig(max_new_tokens=6, return_top_logprobs=3)
    out = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(0), s)
    full = jax.jit(lambda t: tfm.forward(CFG, params, t).logits)
    for b, p in enumerate(PROMPTS):
        seq = np.asarray(p + out.tokens[b].tolist())
        logp = np.asarray(jax.nn.log_softmax(full(jnp.asarray(seq[None, :-1]))[0], -1))[len(p) - 1:]
        np.testing.assert_array_equal(out.tokens[b], logp.argmax(-1))  # greedy = argmax of the full forward
        np.testing.assert_allclose(out.logprobs[b], logp.max(-1), atol=2e-5)
        np.testing.assert_allclose(out.top_logprobs[b], -np.sort(-logp, -1)[:, :3], atol=2e-5)
    np.testing.assert_array_equal(out.lengths, [6, 6, 6])


def test_greedy_equals_transformers_generate(tmp_path, params):
    import torch
    from transformers import AutoModelForCausalLM

    hf.save_pretrained(tmp_path, CFG, jax.tree.map(np.asarray, params))
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval().float()
    out = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(0), SamplingConfig(max_new_tokens=8))
    for b, p in enumerate(PROMPTS):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        np.testing.assert_array_equal(out.tokens[b], ref[0, len(p):].numpy())


def test_stop_tokens_end_rows_and_pad_the_rest(params):
    first = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(0), SamplingConfig(max_new_tokens=6))
    stop = int(first.tokens[0, 2])  # row 0 emits this at step 2
    out = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=6, stop_tokens=(stop,), pad_id=63))
    t = out.tokens[0]
    assert int(out.lengths[0]) == list(first.tokens[0]).index(stop) + 1
    n = int(out.lengths[0])
    assert (np.asarray(t[n:]) == 63).all() and (np.asarray(out.logprobs[0, n:]) == 0).all()


def test_sampling_is_reproducible_with_a_key_and_varies_across_keys(params):
    s = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9)
    a = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(1), s)
    b = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(1), s)
    c = generate(MODEL, params, PROMPTS, jax.random.PRNGKey(2), s)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_filter_logits_top_k_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda x: np.asarray(x > -1e30)  # noqa: E731
    np.testing.assert_array_equal(keep(filter_logits(logits, 1.0, 2, 1.0)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(keep(filter_logits(logits, 1.0, 0, 0.8)), [[1, 1, 0, 0]])
    np.testing.assert_array_equal(keep(filter_logits(logits, 1.0, 0, 0.81)), [[1, 1, 1, 0]])
    np.testing.assert_array_equal(keep(filter_logits(logits, 1.0, 0, 0.1)), [[1, 0, 0, 0]])


def test_bad_prompts_fail_before_tracing(params):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 64\): \(row, id\) \[\(1, 64\)\]"):
        generate(MODEL, params, [[1, 2], [64]], jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="exceeds max_seq_len=64"):
        generate(MODEL, params, [[1] * 60], jax.random.PRNGKey(0), SamplingConfig(max_new_tokens=5))
    with pytest.raises(ValueError, match="empty"):
        generate(MODEL, params, [[1], []], jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"needs a jaxllm.models.Model \(e.g. Model\(cfg\)\), got TransformerConfig"):
        generate(CFG, params, [[1, 2]], jax.random.PRNGKey(0))
