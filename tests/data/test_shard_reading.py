"""Process-sharded reading of jsonl / parquet files (`pipeline.read_shard`, `pipeline.file_batches`): the shards
of any count together read every row of the files exactly once (none twice, none lost), bad rows are counted by
the one shard that owns them, a parquet shard reads only the row groups it needs, and the split is grain's own
`even_split`. (The same reading under the launcher, 2 real processes feeding one trainer:
tests/multihost/test_multihost_training.py::test_file_data_is_read_once_across_processes.)"""

from __future__ import annotations

import collections
import json
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from grain._src.core.sharding import even_split  # the reference split (grain's ShardOptions semantics)
from grain.sharding import ShardOptions

from jaxllm.data import pipeline
from jaxllm.data.tokenizers import CharTokenizer


def _files(tmp_path):
    """Two jsonl files (blank lines, one bad row) and a parquet file of 4 row groups; row texts are unique."""
    a = tmp_path / "a.jsonl"
    a.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(7)) + "\n\n")
    b = tmp_path / "b.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(7, 12)]
    lines.insert(2, '{"text": 5}')  # a bad row (not a string): a row of the split all the same
    b.write_text("\n\n".join(lines) + "\n")
    c = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(12, 25)], "other": list(range(13))}), c,
                   row_group_size=4)
    return [a, b, c], [f"doc {i}" for i in range(25)]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 26])
def test_shards_read_every_row_exactly_once(tmp_path, count):
    """For 1, 2, 3, 5 and 26 shards (26 = every row its own shard, one shard per row plus the bad one), the rows
    the shards read are together each valid row exactly once, and the one bad row is counted exactly once."""
    paths, expected = _files(tmp_path)
    seen, bad = collections.Counter(), 0
    for index in range(count):
        rows, n_bad = pipeline.read_shard(paths, (index, count), on_error="skip")
        seen.update(r["text"] for r in rows)
        bad += n_bad
    assert sorted(seen) == sorted(expected) and set(seen.values()) == {1}
    assert bad == 1


def test_two_shards_are_contiguous_halves_and_raise_only_in_their_own_rows(tmp_path):
    paths, expected = _files(tmp_path)
    first, _ = pipeline.read_shard(paths, (0, 2), on_error="skip")
    assert [r["text"] for r in first] == expected[:12]  # rows 0..12 of 26: a.jsonl's 7, b.jsonl's 6 (one bad)
    with pytest.raises(pipeline.DataError, match=r"b.jsonl:5: field 'text' must be a string"):
        pipeline.read_shard(paths, (0, 2))  # the bad row is shard 0's: it raises there
    rows, bad = pipeline.read_shard(paths, (1, 2))  # shard 1 never parses it
    assert bad == 0 and [r["text"] for r in rows] == expected[12:]


def test_parquet_shard_reads_only_its_row_groups(tmp_path, monkeypatch):
    """Of the parquet file (rows 13..25 of all files, in groups of 4, 4, 4, 1), the last shard of 3 (rows 18..25)
    reads row groups 1..3 only."""
    paths, _ = _files(tmp_path)
    read = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, **kw: read.append(list(groups)) or original(self, groups, **kw))
    rows, _ = pipeline.read_shard(paths, (2, 3))
    assert read == [[1, 2, 3]]
    assert [r["text"] for r in rows] == [f"doc {i}" for i in range(17, 25)]


def test_split_is_graines_even_split():
    for total in range(0, 30):
        for count in range(1, 8):
            spans = [pipeline.shard_span(total, (i, count)) for i in range(count)]
            assert spans == [even_split(total, ShardOptions(i, count)) for i in range(count)]
    with pytest.raises(pipeline.DataError, match="shard"):
        pipeline.shard_span(10, (2, 2))


def test_empty_shard_and_missing_column_are_clear_errors(tmp_path):
    paths, _ = _files(tmp_path)
    with pytest.raises(pipeline.DataError, match="is empty: more shards than rows"):
        pipeline.read_shard(paths[:1], (7, 8))  # a.jsonl has 7 rows
    with pytest.raises(pipeline.DataError, match="missing column"):
        pipeline.read_shard(paths[2:], (0, 1), fields=("prompt",))


def test_file_batches_of_two_shards_cover_their_own_packed_rows_each_epoch(tmp_path):
    """file_batches with 2 shards and a global batch of 4: each shard yields batches of 2 rows packed only from
    its own documents (document i is its own letter 30 times: bos + 30 + eos = 2 rows of 16, so a row names its document),
    and one epoch of a shard visits each of its packed rows exactly once."""
    tok = CharTokenizer()
    letters = string.ascii_letters[:40]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": c * 30}) for c in letters) + "\n")
    for index in range(2):
        ds, info = pipeline.file_batches([path], tok, seq_len=16, batch_size=4, seed=0, shard=(index, 2))
        assert info["documents"] == 20 and info["bad_rows"] == 0
        n = info["packed_rows"]
        it = iter(ds)
        epoch = np.concatenate([next(it)["tokens"] for _ in range(n // 2)])
        assert epoch.shape == (n, 16)
        assert len({r.tobytes() for r in epoch}) == n  # every packed row once (each row is distinct)
        seen = {c for c in tok.decode(epoch.reshape(-1).tolist()) if c.isalpha()}
        assert seen == set(letters[20 * index:20 * index + 20])  # its own 20 documents, all of them
    with pytest.raises(pipeline.DataError, match="multiple of the 3 shards"):
        pipeline.file_batches([path], tok, 16, 4, shard=(0, 3))
