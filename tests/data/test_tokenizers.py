"""Char-level and HF tokenizers."""

import json

import pytest

from jaxllm.data.tokenizers import CharTokenizer, HFTokenizer


def test_char_tokenizer_round_trip_and_specials():
    tok = CharTokenizer("abc ")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 7
    ids = tok.encode("ab c", add_bos=True, add_eos=True)
    assert ids == [1, 3, 4, 6, 5, 2]
    assert tok.decode(ids) == "ab c"
    assert tok.decode(ids, skip_special=False) == "<bos>ab c<eos>"


def test_char_tokenizer_rejects_unknown_characters_and_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"\['z'\]"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([99])
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer("aab")


def _write_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "h": 5, "e": 6, "l": 7, "o": 8}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<s>", "</s>"])
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def test_hf_tokenizer_from_local_tokenizer_json(tmp_path):
    _write_tokenizer(tmp_path)
    tok = HFTokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # pad falls back to eos
    ids = tok.encode("hello world", add_bos=True, add_eos=True)
    assert ids == [1, 3, 4, 2]
    assert tok.decode(ids) == "hello world"
    assert tok.vocab_size == 9


def test_hf_tokenizer_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer(tmp_path)
    _write_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="eos_token '<eot>'"):
        HFTokenizer(tmp_path, eos_token="<eot>")
