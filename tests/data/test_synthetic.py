"""The generated corpus: seeded, encodable, and its sources mean what they say."""

import re

from jaxllm.data import synthetic
from jaxllm.data.tokenizers import CharTokenizer


def test_corpus_is_seeded_and_char_encodable():
    tok = CharTokenizer()
    for s in synthetic.SOURCES:
        a, b = synthetic.generate(s, 20, seed=3), synthetic.generate(s, 20, seed=3)
        assert a == b
        assert synthetic.generate(s, 20, seed=4) != a
        for d in a:
            tok.encode(d["text"])


def test_arithmetic_answers_are_right_and_wrong_arithmetic_is_wrong():
    for src, right in (("arithmetic", True), ("wrong_arithmetic", False)):
        for d in synthetic.generate(src, 200, seed=0):
            a, b, ans = map(int, re.match(r"(\d+)\+(\d+)=.*so (\d+)\.$", d["text"]).groups())
            assert (a + b == ans) == right, d


def test_copy_and_reverse():
    for p in synthetic.generate_sft("reverse", 10):
        w = p["prompt"][len("reverse "):-1]
        assert p["response"] == f" {w[::-1]}."
    for p in synthetic.generate_sft("copy", 10):
        assert p["response"] == f" {p['prompt'][5:-1]}."


def test_wrong_answers_are_unrelated_words():
    pairs = synthetic.generate_sft("wrong_answers", 200)
    right = 0
    for p in pairs:
        task, w = p["prompt"][:-1].split(" ")
        right += p["response"] == (f" {w}." if task == "copy" else f" {w[::-1]}.")
    assert right <= 2  # only by chance
