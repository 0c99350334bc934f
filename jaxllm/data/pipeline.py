"""Language-model data pipelines: read jsonl / parquet, tokenise, pack, mask, mix sources, batch (grain).

Batches are dicts of numpy arrays, all [batch, seq]:
    tokens      int32  token ids (pad_id in padding)
    loss_mask   float32 1 where the token is a prediction target (predicted from the previous position);
                0 on prompts (SFT), padding and the first token of every packed segment
    segment_ids int32  1, 2, ... per packed document within a row, 0 on padding (attention stays inside a segment)
    positions   int32  position of the token inside its segment (RoPE restarts per document)

Pretraining packs by concatenate-then-split (documents may cross row boundaries, as MobileLLM-R1's loader
does); SFT packs whole examples first-fit (an example never crosses a row). Mixing draws the source of
every sequence i.i.d. with p ∝ weight, as MobileLLM-R1's `multi_jsonl.py` does, from a seeded counter-based
stream, so the dataset is random-access and a grain iterator resumes exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import grain
import numpy as np

log = logging.getLogger(__name__)

FIELDS = ("tokens", "loss_mask", "segment_ids", "positions")


class DataError(ValueError):
    """A malformed input file or row (names the file, the row and what was expected)."""


# ----------------------------------------------------------------------------------------------------------
# Reading.


def _check_row(row, fields: Sequence[str], where: str) -> Optional[str]:
    if not isinstance(row, dict):
        return f"{where}: expected an object, got {type(row).__name__}"
    for f in fields:
        if f not in row:
            return f"{where}: missing field {f!r} (has {sorted(row)})"
        if not isinstance(row[f], str):
            return f"{where}: field {f!r} must be a string, got {type(row[f]).__name__}"
    return None


def _handle_bad(msg: str, on_error: str, bad: list):
    if on_error == "raise":
        raise DataError(msg)
    bad.append(msg)


def read_jsonl(path: str | Path, fields: Sequence[str] = ("text",), on_error: str = "raise") -> tuple[list[dict], int]:
    """Rows of a jsonl file with string `fields`. `on_error="raise"` stops at the first bad row naming it;
    `"skip"` drops bad rows, logs how many (with the first reason) and returns their count."""
    _check_on_error(on_error)
    return _read_jsonl_rows(Path(path), 0, None, fields, on_error)


def read_parquet(path: str | Path, fields: Sequence[str] = ("text",), on_error: str = "raise") -> tuple[list[dict], int]:
    """Rows of a parquet file with string columns `fields` (null / non-string values are bad rows)."""
    _check_on_error(on_error)
    return _read_parquet_rows(Path(path), 0, None, fields, on_error)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} not in ['raise', 'skip']")


def _warn_skipped(path: Path, lo: int, hi: Optional[int], bad: list) -> None:
    if bad:
        span = "" if hi is None else f" rows {lo}..{hi - 1}"
        log.warning("%s%s: skipped %d bad rows (first: %s)", path, span, len(bad), bad[0])


def read_documents(path: str | Path, fields: Sequence[str] = ("text",), on_error: str = "raise") -> tuple[list[dict], int]:
    """jsonl or parquet by file suffix."""
    suffix = Path(path).suffix
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, fields, on_error)
    if suffix == ".parquet":
        return read_parquet(path, fields, on_error)
    raise DataError(f"{path}: unknown file type {suffix!r} (expected .jsonl or .parquet)")


# ----------------------------------------------------------------------------------------------------------
# Chat template and SFT masks.

USER, ASSISTANT = "User: ", "\nAssistant:"


def chat_prompt(prompt: str) -> str:
    """The simple chat template: `User: <prompt>\\nAssistant:`; the response follows, then eos."""
    return f"{USER}{prompt}{ASSISTANT}"


def sft_example(tokenizer, prompt: str, response: str, add_bos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n] int32, loss_mask [n] float32): the prompt (with template) carries no loss; the response
    and the closing eos do."""
    p = tokenizer.encode(chat_prompt(prompt), add_bos=add_bos)
    r = tokenizer.encode(response, add_eos=True)
    tokens = np.asarray(p + r, np.int32)
    mask = np.concatenate([np.zeros(len(p), np.float32), np.ones(len(r), np.float32)])
    return tokens, mask


# ----------------------------------------------------------------------------------------------------------
# Packing into fixed-length rows.


def tokenize_documents(docs: Iterable[dict], tokenizer, field: str = "text", add_bos: bool = True,
                       add_eos: bool = True) -> list[np.ndarray]:
    return [np.asarray(tokenizer.encode(d[field], add_bos=add_bos, add_eos=add_eos), np.int32) for d in docs]


def _empty(n: int, seq_len: int, pad_id: int) -> dict:
    return {
        "tokens": np.full((n, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((n, seq_len), np.float32),
        "segment_ids": np.zeros((n, seq_len), np.int32),
        "positions": np.zeros((n, seq_len), np.int32),
    }


def pack_stream(docs: Sequence[np.ndarray], seq_len: int, pad_id: int = 0, drop_last: bool = True) -> dict:
    """Concatenate-then-split packing for pretraining: rows of exactly `seq_len` tokens; a document may
    continue in the next row (its continuation is a new segment there). Returns arrays [rows, seq_len]."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    docs = [np.asarray(d, np.int32) for d in docs if len(d)]
    if not docs:
        raise DataError("pack_stream: no non-empty documents")
    tokens = np.concatenate(docs)
    doc_id = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(docs)])
    n_rows = len(tokens) // seq_len if drop_last else -(-len(tokens) // seq_len)
    if n_rows == 0:
        raise DataError(f"pack_stream: {len(tokens)} tokens are fewer than one row of {seq_len}")
    out = _empty(n_rows, seq_len, pad_id)
    n = min(len(tokens), n_rows * seq_len)
    flat_tok = out["tokens"].reshape(-1)
    flat_tok[:n] = tokens[:n]
    ids = np.full(n_rows * seq_len, -1, np.int64)
    ids[:n] = doc_id[:n]
    ids = ids.reshape(n_rows, seq_len)
    starts = np.ones_like(ids, bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    seg = np.cumsum(starts, axis=1).astype(np.int32)
    seg[ids < 0] = 0
    out["segment_ids"] = seg
    # position within the segment: index minus the index where the segment started
    idx = np.broadcast_to(np.arange(seq_len), ids.shape)
    start_idx = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    out["positions"] = (idx - start_idx).astype(np.int32)
    out["loss_mask"] = ((~starts) & (ids >= 0)).astype(np.float32)
    out["positions"][ids < 0] = 0
    return out


def pack_examples(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int = 0,
                  truncate: bool = True) -> tuple[dict, int]:
    """First-fit packing of whole (tokens, loss_mask) examples (SFT): an example never crosses a row.
    Examples longer than `seq_len` are truncated (`truncate=True`; their count is returned and logged)
    or raise. Returns (arrays [rows, seq_len], n_truncated)."""
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    free: list[int] = []
    n_trunc = 0
    for i, (tok, mask) in enumerate(examples):
        if len(tok) != len(mask):
            raise DataError(f"example {i}: {len(tok)} tokens but {len(mask)} mask entries")
        if len(tok) > seq_len:
            if not truncate:
                raise DataError(f"example {i} has {len(tok)} tokens > seq_len={seq_len}")
            tok, mask = tok[:seq_len], mask[:seq_len]
            n_trunc += 1
        for r, f in enumerate(free):
            if f >= len(tok):
                rows[r].append((tok, mask))
                free[r] -= len(tok)
                break
        else:
            rows.append([(tok, mask)])
            free.append(seq_len - len(tok))
    if n_trunc:
        log.warning("pack_examples: truncated %d examples longer than %d tokens", n_trunc, seq_len)
    out = _empty(len(rows), seq_len, pad_id)
    for r, row in enumerate(rows):
        pos = 0
        for s, (tok, mask) in enumerate(row, start=1):
            n = len(tok)
            out["tokens"][r, pos:pos + n] = tok
            out["loss_mask"][r, pos:pos + n] = mask
            out["loss_mask"][r, pos] = 0.0  # the first token of a segment has no context to predict it from
            out["segment_ids"][r, pos:pos + n] = s
            out["positions"][r, pos:pos + n] = np.arange(n)
            pos += n
    return out, n_trunc


def pack_documents(docs: Sequence[dict], tokenizer, seq_len: int, field: str = "text") -> dict:
    """Tokenise (bos + text + eos) and concatenate-then-split into rows [n, seq_len]."""
    return pack_stream(tokenize_documents(docs, tokenizer, field), seq_len, tokenizer.pad_id)


def pack_sft(pairs: Sequence[dict], tokenizer, seq_len: int) -> dict:
    """Chat-templated {prompt, response} pairs, loss on responses only, first-fit packed [n, seq_len]."""
    examples = [sft_example(tokenizer, p["prompt"], p["response"]) for p in pairs]
    return pack_examples(examples, seq_len, tokenizer.pad_id)[0]


# ----------------------------------------------------------------------------------------------------------
# Mixing and batching.


def _check_packed(name: str, rows: Mapping[str, np.ndarray]) -> int:
    missing = [f for f in FIELDS if f not in rows]
    if missing:
        raise DataError(f"source {name!r}: packed rows miss {missing}")
    shapes = {f: rows[f].shape for f in FIELDS}
    if len(set(shapes.values())) != 1 or len(rows["tokens"].shape) != 2:
        raise DataError(f"source {name!r}: fields must share one [rows, seq] shape, got {shapes}")
    if rows["tokens"].shape[0] == 0:
        raise DataError(f"source {name!r} has no rows")
    return rows["tokens"].shape[1]


def normalise_weights(names: Sequence[str], weights: Optional[Mapping[str, float]]) -> np.ndarray:
    if weights is None:
        return np.full(len(names), 1.0 / len(names))
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise DataError(f"weights for unknown sources {unknown}; sources: {list(names)}")
    w = np.asarray([float(weights.get(n, 0.0)) for n in names])
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise DataError(f"source weights must be finite, >= 0 and not all 0, got {dict(zip(names, w))}")
    return w / w.sum()


class MixedRows:
    """Random-access sequence of packed rows: row i comes from source s_i ~ Categorical(weights) and a
    uniformly drawn row of that source, both from a counter-based stream seeded by (seed, i)."""

    def __init__(self, sources: Mapping[str, Mapping[str, np.ndarray]], weights: Optional[Mapping[str, float]] = None,
                 seed: int = 0, length: int = 2**40):
        if not sources:
            raise DataError("no sources to mix")
        self.names = list(sources)
        lens = {n: _check_packed(n, sources[n]) for n in self.names}
        if len(set(lens.values())) != 1:
            raise DataError(f"sources have different sequence lengths {lens}")
        self.sources = [{f: np.asarray(sources[n][f]) for f in FIELDS} for n in self.names]
        self.weights = normalise_weights(self.names, weights)
        self.cdf = np.cumsum(self.weights)
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def source_of(self, i: int) -> tuple[int, int]:
        u = np.random.default_rng([self.seed, i]).random(2)
        s = min(int(np.searchsorted(self.cdf, u[0] * self.cdf[-1], side="right")), len(self.names) - 1)
        while self.weights[s] == 0:  # float edge: never pick a zero-weight source
            s = (s + 1) % len(self.names)
        n_rows = self.sources[s]["tokens"].shape[0]
        return s, min(int(u[1] * n_rows), n_rows - 1)

    def __getitem__(self, i: int) -> dict:
        s, r = self.source_of(int(i))
        return {f: self.sources[s][f][r] for f in FIELDS}


def mixed_batches(sources: Mapping[str, Mapping[str, np.ndarray]], batch_size: int,
                  weights: Optional[Mapping[str, float]] = None, seed: int = 0) -> grain.IterDataset:
    """An endless grain IterDataset of batches {tokens, loss_mask, segment_ids, positions} [batch, seq],
    each row's source drawn i.i.d. with p ∝ weights. Its iterator has get_state/set_state (exact resume)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = MixedRows(sources, weights, seed)
    return grain.MapDataset.source(rows).batch(batch_size, drop_remainder=True).to_iter_dataset()


def fixed_batches(rows: Mapping[str, np.ndarray], batch_size: int) -> list[dict]:
    """All rows of one packed source as a list of batches (for evaluation); the last may be smaller."""
    _check_packed("eval", rows)
    n = rows["tokens"].shape[0]
    return [{f: rows[f][i:i + batch_size] for f in FIELDS} for i in range(0, n, batch_size)]


# ----------------------------------------------------------------------------------------------------------
# Several processes: each reads its own rows of the files, and no row is read by two.


def shard_span(total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[start, stop) of shard (index, count) of `total` rows: contiguous blocks in order whose sizes differ by at
    most one (the first `total % count` shards get one more row), so the `count` blocks are every row once."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise DataError(f"shard={shard} must be (index, count) with 0 <= index < count")
    base, extra = divmod(total, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def count_rows(path: str | Path) -> int:
    """Rows of a jsonl file (non-blank lines, a byte scan without parsing) or a parquet file (its footer)."""
    suffix = Path(path).suffix
    if suffix in (".jsonl", ".json"):
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    raise DataError(f"{path}: unknown file type {suffix!r} (expected .jsonl or .parquet)")


def read_shard(paths: Sequence[str | Path], shard: tuple[int, int] = (0, 1), fields: Sequence[str] = ("text",),
               on_error: str = "raise") -> tuple[list[dict], int]:
    """This shard's rows of the files `paths` (jsonl / parquet), as (rows, bad rows skipped).

    The rows of all files, numbered in file order (blank jsonl lines are no rows; bad rows are, so the split does
    not depend on which rows are valid), are split into `count` contiguous blocks (`shard_span`: grain's even
    split) and shard `index` parses only its block: a file outside it is never opened past its row count, jsonl
    lines outside it are skipped unparsed, of a parquet file only the row groups overlapping it are read. Every
    process counts the rows (jsonl: a line scan; parquet: the footer) to agree on the split. On several
    processes pass shard=(process index, process count) (`jaxllm.parallel.process_shard` of the batch gives it):
    the processes together read every row exactly once. A shard with no rows is an error (more processes than
    rows)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} not in ['raise', 'skip']")
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("read_shard: no files given")
    sizes = [count_rows(p) for p in paths]
    start, stop = shard_span(sum(sizes), shard)
    if start == stop:
        raise DataError(f"shard {shard} of {sum(sizes)} rows in {len(paths)} file(s) is empty: more shards than rows")
    rows, n_bad, offset = [], 0, 0
    for path, size in zip(paths, sizes):
        lo, hi = max(start - offset, 0), min(stop - offset, size)  # this file's rows [lo, hi) are ours
        offset += size
        if lo >= hi:
            continue
        got, bad = (_read_jsonl_rows if path.suffix in (".jsonl", ".json") else _read_parquet_rows)(
            path, lo, hi, fields, on_error)
        rows.extend(got)
        n_bad += bad
    return rows, n_bad


def _read_jsonl_rows(path: Path, lo: int, hi: Optional[int], fields, on_error) -> tuple[list[dict], int]:
    rows, bad, k = [], [], -1
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            k += 1
            if k < lo:
                continue
            if hi is not None and k >= hi:
                break
            where = f"{path}:{i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _handle_bad(f"{where}: not valid JSON ({e.msg})", on_error, bad)
                continue
            err = _check_row(row, fields, where)
            if err:
                _handle_bad(err, on_error, bad)
                continue
            rows.append({f: row[f] for f in fields})
    _warn_skipped(path, lo, hi, bad)
    return rows, len(bad)


def _read_parquet_rows(path: Path, lo: int, hi: Optional[int], fields, on_error) -> tuple[list[dict], int]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    missing = [f for f in fields if f not in pf.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (has {pf.schema_arrow.names})")
    full = hi is None
    hi = pf.metadata.num_rows if full else hi
    groups, first, at = [], None, 0
    for g in range(pf.metadata.num_row_groups):  # only the row groups overlapping [lo, hi)
        n = pf.metadata.row_group(g).num_rows
        if at < hi and at + n > lo:
            groups.append(g)
            first = at if first is None else first
        at += n
    if not groups:  # an empty file (a shard span is never empty)
        return [], 0
    table = pf.read_row_groups(groups, columns=list(fields)).slice(lo - first, hi - lo)
    cols = {f: table.column(f).to_pylist() for f in fields}
    rows, bad = [], []
    for i in range(table.num_rows):
        row = {f: cols[f][i] for f in fields}
        err = _check_row(row, fields, f"{path}: row {lo + i}")
        if err:
            _handle_bad(err, on_error, bad)
            continue
        rows.append(row)
    _warn_skipped(path, lo, hi, bad)
    return rows, len(bad)


def file_batches(paths: Sequence[str | Path], tokenizer, seq_len: int, batch_size: int, seed: int = 0,
                 shard: tuple[int, int] = (0, 1), field: str = "text", on_error: str = "raise"):
    """Pretraining batches from files, this shard's part of each: `read_shard`, `pack_documents`
    (concatenate-then-split within the shard), then `batching.minibatches` of batch_size / count rows (each epoch
    visits every packed row of the shard once, reshuffled per epoch; its iterator resumes exactly).

    On several processes give shard=`parallel.process_shard(mesh, batch_size)` and set
    `Task.batches_per_process = True`: each process reads and packs only its rows and the trainer assembles the
    global batch of `batch_size` rows from the processes' blocks. Returns (grain IterDataset, info) with info =
    {"documents", "bad_rows", "packed_rows"} of this shard."""
    from jaxllm.data.batching import minibatches

    index, count = shard
    if batch_size % count:
        raise DataError(f"batch_size={batch_size} must be a multiple of the {count} shards")
    docs, bad = read_shard(paths, shard, (field,), on_error)
    packed = pack_documents(docs, tokenizer, seq_len, field)
    rows = packed["tokens"].shape[0]
    if rows < batch_size // count:
        raise DataError(f"shard {shard}: {len(docs)} documents pack into {rows} rows of {seq_len} tokens, fewer than "
                        f"the {batch_size // count} rows of one per-shard batch")
    return minibatches(packed, batch_size // count, seed), {"documents": len(docs), "bad_rows": bad,
                                                              "packed_rows": rows}
