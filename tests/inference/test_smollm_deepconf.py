"""smollm_deepconf's host-side pieces, without the model (the run itself is the SMALL CLI run of
tests/test_every_experiment_runs.py): questions and their references, answer extraction from free-text replies,
and the scoring of questions that no trace answered right."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import deepconf_arith as toy
from experiments import smollm_deepconf as sd
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.inference import deepconf as dc
from jaxllm.inference.deepconf import answer_key, extract_answer


def test_questions_have_the_closed_form_answer_and_the_kind_digit_counts():
    """Each question's reference (rewards' parser) equals Python integer arithmetic on its operands; operand
    digit counts follow the kind; subtraction never goes negative."""
    c = apply_overrides(sd.Config(), ["categories=1+1,2-2,2*1,1*2", "questions_per_category=25"])
    qs = sd.make_questions(c)
    assert len(qs) == 100 and c.problems == 100
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for q in qs:
        assert q["answer"] == str(ops[q["op"]](q["a"], q["b"])), q
        da, db = int(q["kind"][0]), int(q["kind"][2])
        assert len(str(q["a"])) == da and len(str(q["b"])) == db, q
        assert q["text"].startswith(f"What is {q['a']} {q['op']} {q['b']}?")
        if q["op"] == "-":
            assert q["a"] >= q["b"]
    assert sd.make_questions(c) == qs  # fixed by question_seed


def test_bad_categories_are_config_errors():
    with pytest.raises(ConfigError, match="categories"):
        apply_overrides(sd.Config(), ["categories=3+1"])
    with pytest.raises(ConfigError, match="budgets"):
        apply_overrides(sd.Config(), ["budgets=64"])  # above the pool (16)


@pytest.mark.parametrize("text, want", [
    ("7 + 5 = 12.", "12"), ("The answer is 1,234.", "1234"), ("9 - 14 = -5", "-5"),
    ("no digits here", None), ("47 + 38 = 85, so the sum is 85", "85"), ("1" * 30_000, None),
])
def test_last_integer(text, want):
    assert sd.last_integer(text) == want


class _Tok:
    """Stand-in tokenizer: one character per token, eos = 0."""
    eos_id = 0

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def _ids(text, finished=True):
    return [ord(ch) for ch in text] + ([0] if finished else [])


def test_reply_answer_is_the_last_integer_of_a_finished_reply_only():
    """A finished reply's answer is its last integer; a reply cut before <|im_end|> has none, even when it
    writes a `\\boxed{}` of its own."""
    tok = _Tok()
    assert extract_answer(sd.reply_answer_text(tok, _ids("8 * 7 = 56."))) == "56"
    assert extract_answer(sd.reply_answer_text(tok, _ids("8 * 7 = 56.", finished=False))) is None
    assert extract_answer(sd.reply_answer_text(tok, _ids("\\boxed{56} and", finished=False))) is None
    assert extract_answer(sd.reply_answer_text(tok, _ids("I do not know."))) is None
    assert answer_key(extract_answer(sd.reply_answer_text(tok, _ids("it is 1,024")))) == answer_key("1024")


def test_a_question_nobody_answered_scores_zero_not_one():
    """A question whose reference no trace gave (here: no trace answered at all) counts as wrong for every
    offline and online method: `answer_ids` gives such a reference an id that no vote can win (an empty vote's
    winner is -1; the reference id used to be -1 as well, which scored "nobody voted" as right)."""
    ids, valid, keys, ref = dc.answer_ids(["no answer", "still none"], reference="3")
    assert keys == [] and ref == 0 and not valid.any()
    assert int(dc.majority_vote(jnp.asarray(ids), jnp.asarray(valid), 1).winner) == -1 != ref
    c = apply_overrides(sd.Config(), ["categories=1+1", "questions_per_category=2", "pool=4", "slots=4",
                                      "budgets=4", "warmup=2", "repeats=2", "online_check_problems=1"])
    P, M, N = 2, 4, 6
    pool = dict(tokens=np.zeros((P, M, N), np.int32), conf=np.ones((P, M, N), np.float32),
                logprobs=np.zeros((P, M, N), np.float32), lengths=np.full((P, M), N, np.int32),
                ids=np.zeros((P, M), np.int32), valid=np.zeros((P, M), bool), ref=np.full(P, ref, np.int32),
                n_answers=np.zeros(P, np.int32))
    pool = sd.finish_pool(pool)
    off = toy.offline_table(c, pool, toy.pool_statistics(c, pool))
    on = toy.online_table(c, pool)
    assert all(v[4] == 0.0 for v in off.values()), off
    assert on["deepconf_low"][4]["acc"] == 0.0 and on["deepconf_high"][4]["acc"] == 0.0
    assert not pool["correct"].any()
