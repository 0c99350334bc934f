"""Masked-diffusion SFT rows and Task (`jaxllm.train.sft`) and the dLLM tag vocabulary (`TagVocab`)."""

from __future__ import annotations

import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.data.tokenizers import TAGS, TagVocab
from jaxllm.models import Model, get_preset
from jaxllm.rewards import sudoku_reward
from jaxllm.train.sft import masked_sft_task, pack_sft_rows


def test_rows_are_left_padded_prompts_then_answer_then_eos():
    rows = pack_sft_rows([[7, 8], [9]], [[4], [5, 6]], prompt_len=3, gen_length=4, pad_id=0, eos_id=1)
    np.testing.assert_array_equal(rows, [[0, 7, 8, 4, 1, 1, 1], [0, 0, 9, 5, 6, 1, 1]])
    assert rows.dtype == np.int32


@pytest.mark.parametrize("prompts, answers, needle", [
    ([[1, 2, 3, 4]], [[5]], "row 0: prompt of 4 tokens exceeds prompt_len=3"),
    ([[1], [2]], [[5], [5, 5, 5, 5]], "row 1: answer of 4 tokens does not fit gen_length=4"),
    ([[1]], [], "1 prompts but 0 answers"),
])
def test_rows_that_do_not_fit_are_named(prompts, answers, needle):
    with pytest.raises(ConfigError, match=needle):
        pack_sft_rows(prompts, answers, prompt_len=3, gen_length=4, pad_id=0, eos_id=1)


def test_sft_task_refuses_a_causal_model_and_out_of_vocabulary_rows():
    rows = np.zeros((4, 8), np.int32)
    with pytest.raises(ConfigError, match="bidirectional"):
        masked_sft_task(Model(get_preset("tiny_llama")), rows, 3, optax.sgd(0.1), batch_size=2)
    rows[0, 5] = 64  # tiny_llada has 64 ids
    with pytest.raises(ConfigError, match=r"ids in \[0, 64\] outside the vocabulary \[0, 64\)"):
        masked_sft_task(Model(get_preset("tiny_llada")), rows, 3, optax.sgd(0.1), batch_size=2)


@pytest.mark.slow  # ~10 s idle, 38 s on a loaded 2-core machine
def test_sft_task_memorises_one_answer():
    """300 Adam steps on one (prompt, answer) pair: the masked-SFT loss at a fixed mask draw falls to under a tenth
    of its start, and greedy one-step unmasking of the fully masked answer then reproduces the answer."""
    import jax
    import jax.numpy as jnp

    model = Model(get_preset("tiny_llada", vocab_size=16, mask_token_id=15))
    rows = pack_sft_rows([[3, 4, 5]] * 4, [[6, 7, 8]] * 4, prompt_len=3, gen_length=4, pad_id=0, eos_id=1)
    task = masked_sft_task(model, rows, 3, optax.adam(3e-3), batch_size=4)
    params = task.init_params(jax.random.PRNGKey(0))
    opt = task.optimizer.init(params)

    @jax.jit
    def step(params, opt, key):
        (loss, _), g = jax.value_and_grad(task.loss_fn, has_aux=True)(params, None, key)
        up, opt = task.optimizer.update(g, opt, params)
        return optax.apply_updates(params, up), opt, loss

    fixed_key = jax.random.PRNGKey(12345)
    before = float(task.loss_fn(params, None, fixed_key)[0])
    for i in range(300):
        params, opt, _ = step(params, opt, jax.random.PRNGKey(i))
    after = float(task.loss_fn(params, None, fixed_key)[0])
    assert after < before / 10, (before, after)
    masked = jnp.asarray([[3, 4, 5, 15, 15, 15, 15]])
    assert np.asarray(jnp.argmax(model(params, masked), -1))[0, 3:].tolist() == [6, 7, 8, 1]


def test_tag_vocab_layout_and_xml_rendering():
    vocab = TagVocab("0123456789")
    assert (vocab.pad, vocab.eos, vocab.mask) == (0, 1, 2)
    assert [vocab.ids[t] for t in TAGS] == [3, 4, 5, 6]
    ids = vocab.encode(["<answer>", "12", "</answer>"])
    assert ids == [5, vocab.ids["1"], vocab.ids["2"], 6]
    # rendered as the reference's XML format, each tag on its own line; decoding stops at EOS
    assert vocab.decode(ids + [vocab.eos, vocab.ids["9"]]) == "<answer>\n12\n</answer>"
    grid = "1234341221434321"
    text = vocab.decode(vocab.encode(["<answer>", grid, "</answer>"]))
    assert sudoku_reward(text, "1030300020004001", grid) == 1.0
