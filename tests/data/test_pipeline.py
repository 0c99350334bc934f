"""Reading, packing, SFT masks and weighted mixing of LM data."""


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxllm.data import pipeline as P
from jaxllm.data.tokenizers import CharTokenizer


def test_read_jsonl_bad_rows_raise_or_are_counted(tmp_path, caplog):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ab"}\nnot json\n{"txt": "x"}\n{"text": 3}\n\n{"text": "cd"}\n')
    with pytest.raises(P.DataError, match=r"d.jsonl:2: not valid JSON"):
        P.read_jsonl(f)
    rows, bad = P.read_jsonl(f, on_error="skip")
    assert rows == [{"text": "ab"}, {"text": "cd"}] and bad == 3
    assert "skipped 3 bad rows" in caplog.text


def test_read_parquet_checks_columns_and_nulls(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "response": ["x", "y", "z"]}), f)
    rows, bad = P.read_documents(f, fields=("prompt", "response"), on_error="skip")
    assert rows == [{"prompt": "a", "response": "x"}, {"prompt": "c", "response": "z"}] and bad == 1
    with pytest.raises(P.DataError, match="row 1: field 'prompt' must be a string"):
        P.read_parquet(f, fields=("prompt", "response"))
    with pytest.raises(P.DataError, match=r"missing column\(s\) \['text'\]"):
        P.read_parquet(f)


def test_pack_stream_keeps_every_token_in_order_with_segments_and_positions():
    docs = [np.arange(1, 6), np.arange(10, 13), np.arange(20, 29)]  # 5 + 3 + 9 = 17 tokens
    out = P.pack_stream(docs, seq_len=6, pad_id=0)
    assert out["tokens"].shape == (2, 6)  # 17 // 6 rows, remainder dropped
    np.testing.assert_array_equal(out["tokens"].reshape(-1), np.concatenate(docs)[:12])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 1, 1, 2], [1, 1, 2, 2, 2, 2]])  # ids restart per row
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0], [0, 1, 0, 1, 2, 3]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 1, 1, 1, 1, 0], [0, 1, 0, 1, 1, 1]])


def test_sft_mask_puts_no_loss_on_the_prompt():
    tok = CharTokenizer()
    tokens, mask = P.sft_example(tok, "2+2=", " 4.")
    text = tok.decode(tokens[mask == 0], skip_special=False)
    assert text == "<bos>User: 2+2=\nAssistant:"
    assert tok.decode(tokens[mask == 1], skip_special=False) == " 4.<eos>"


def test_pack_examples_first_fit_never_splits_an_example():
    ex = [(np.full(n, n, np.int32), np.ones(n, np.float32)) for n in (4, 3, 2, 5, 1)]
    out, n_trunc = P.pack_examples(ex, seq_len=6, pad_id=0)
    assert n_trunc == 0
    np.testing.assert_array_equal(out["tokens"], [[4, 4, 4, 4, 2, 2], [3, 3, 3, 1, 0, 0], [5, 5, 5, 5, 5, 0]])
    np.testing.assert_array_equal(out["segment_ids"][1], [1, 1, 1, 2, 0, 0])
    np.testing.assert_array_equal(out["loss_mask"][1], [0, 1, 1, 0, 0, 0])
    with pytest.raises(P.DataError, match="example 0 has 4 tokens > seq_len=3"):
        P.pack_examples(ex, seq_len=3, truncate=False)


def _source(value, rows=4, seq=5):
    return {"tokens": np.full((rows, seq), value, np.int32), "loss_mask": np.ones((rows, seq), np.float32),
            "segment_ids": np.ones((rows, seq), np.int32), "positions": np.tile(np.arange(seq), (rows, 1))}


def test_mixture_frequencies_follow_weights_and_resume_is_exact():
    sources = {"a": _source(1), "b": _source(2), "c": _source(3)}
    ds = P.mixed_batches(sources, batch_size=50, weights={"a": 0.6, "b": 0.3, "c": 0.1}, seed=7)
    it = iter(ds)
    firsts = np.concatenate([next(it)["tokens"][:, 0] for _ in range(40)])  # 2000 rows
    freq = np.bincount(firsts, minlength=4)[1:] / len(firsts)
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)  # ~4 sigma for n=2000
    state = it.get_state()
    nxt = next(it)["tokens"]
    it2 = iter(P.mixed_batches(sources, batch_size=50, weights={"a": 0.6, "b": 0.3, "c": 0.1}, seed=7))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["tokens"], nxt)
    other = iter(P.mixed_batches(sources, batch_size=50, weights={"a": 0.6, "b": 0.3, "c": 0.1}, seed=8))
    assert not np.array_equal(next(other)["tokens"], firsts[:50])


def test_mixture_rejects_bad_weights():
    with pytest.raises(P.DataError, match="unknown sources"):
        P.MixedRows({"a": _source(1)}, {"z": 1.0})
    with pytest.raises(P.DataError, match="not all 0"):
        P.MixedRows({"a": _source(1)}, {"a": 0.0})
    rows = P.MixedRows({"a": _source(1), "b": _source(2)}, {"a": 1.0, "b": 0.0})
    assert all(rows[i]["tokens"][0] == 1 for i in range(200))
