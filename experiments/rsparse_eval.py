"""R-Sparse quality: perplexity of a trained decoder at 40-70% sparsity: dense, TEAL (as its reference does it),
R-Sparse uniform / searched α, at equal budgets.

The paper's claim checked here (arXiv 2504.19449): at 50% model-level sparsity R-Sparse stays close to dense and
beats plain (TEAL) thresholding. The model is a byte-level Llama-flavour decoder with grouped-query attention
trained in this library on Python standard-library source text (files split into train / held-out by index), or a
real checkpoint from a local directory (`checkpoint_path=...`, loaded with `jaxllm.hf.load_pretrained`).

Methods at sparsity s (every one reads (1 − s) of the decoder projections' weights per token):
  TEAL uniform (`jaxllm.sparse.teal`: thresholds from calibration histograms, the reference's icdf(0.5 + s/2)),
  TEAL greedy (the reference's block-wise greedy allocation, weighted mean s per block, fitted on the first
  `teal_greedy_windows` search windows), TEAL uniform with this library's |x| histograms (icdf(s), no symmetry
  presumed, so the budget is met), TEAL exact quantile (the
  older `rsparsify(method="teal")`: the exact s-quantile of |x| per projection), R-Sparse α = 1, R-Sparse uniform
  α, R-Sparse α searched per layer (greedy on layer error; evolutionary on KL).
  Pairs compared like for like: TEAL uniform vs R-Sparse uniform α; TEAL greedy vs R-Sparse searched α.

Protocol: per window seed e (`window_seeds`), thresholds and histograms come from `calib_windows` training windows,
α search and TEAL's greedy allocation from `search_windows` other training windows, perplexity from `eval_windows`
held-out windows. Per evaluation mode f in `sparse_fractions` the last ⌈f·T⌉ tokens of each window go through the
sparse path (the first ones dense, as a prefill) and perplexity is taken over those sparse tokens only:
f = 1 is every token sparse (= teacher-forced decoding with every decode step sparse, the strictest setting);
f = 0.1 is the R-Sparse reference's evaluation (`--prefill_ratio 0.1`: the last 10% sparse). (TEAL's own
`ppl_test` sparsifies the last half of each 2560-token window and scores its last 512 tokens, all of them sparse.)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import sysconfig
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.train import trainer as trainer_lib
from jaxllm.train.run import prepare_run_dir, save_figure, write_summary


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the small decoder is trained (in its own sub-run-dir `train/`, checked together with `model`, so
    evaluation settings can change without invalidating the trained checkpoint). seq_len: training and evaluation
    windows."""

    seq_len: int = 128
    batch_size: int = 16
    optim: build.OptimizerConfig = build.AdamWConfig(learning_rate=3e-3, weight_decay=0.1, grad_clip=1.0,
                                                     schedule="cosine", warmup_steps=100, min_lr_ratio=0.0)
    trainer: trainer_lib.TrainerConfig = trainer_lib.TrainerConfig(
        steps=2500, log_every=100, checkpoint_every=500, progress=False)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """What the checkpoint in `train/` depends on (its config.json)."""

    model: tfm.TransformerConfig
    train: TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    # byte-level Llama-flavour decoder; GQA, so k/v projections have their true (narrower) shapes in the budget rule
    model: tfm.TransformerConfig = tfm.TransformerConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4,
                                                         n_kv_heads=2, d_ff=384, max_seq_len=128, tie_embeddings=False)
    train: TrainConfig = TrainConfig()
    checkpoint_path: str = ""  # a local HF checkpoint directory instead of training the small model
    seed: int = 0
    sparsities: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7)
    uniform_alpha: float = 0.95  # the paper's uniform baseline ("rho = 0.95 uniformly across all layers")
    search: str = "evolutionary"  # or "greedy"
    search_generations: int = 6
    search_population: int = 12
    calib_windows: int = 8
    search_windows: int = 8
    eval_windows: int = 96
    window_seeds: tuple[int, ...] = (0, 1, 2)  # calibration / search / eval windows drawn per seed
    sparse_fractions: tuple[float, ...] = (1.0, 0.1)  # evaluation modes: fraction of each window's tokens sparse
    teal_greedy_windows: int = 4  # search windows the TEAL greedy allocation fits on (the most expensive step)

    def __post_init__(self):
        from jaxllm.config import check, check_choice

        check_choice("search", self.search, ("evolutionary", "greedy"))
        for s in self.sparsities:
            check(0.0 <= s <= 1.0, f"sparsity {s} outside [0, 1]")
        check(0.0 <= self.uniform_alpha <= 1.0, f"uniform_alpha={self.uniform_alpha} outside [0, 1]")
        check(len(self.window_seeds) >= 1 and len(set(self.window_seeds)) == len(self.window_seeds),
              f"window_seeds={self.window_seeds} must be distinct, at least one")
        check(self.teal_greedy_windows >= 1, f"teal_greedy_windows={self.teal_greedy_windows} must be >= 1")
        check(len(self.sparse_fractions) >= 1 and all(0.0 < f <= 1.0 for f in self.sparse_fractions),
              f"sparse_fractions={self.sparse_fractions}: each in (0, 1]")
        if not self.checkpoint_path:  # the trained model reads bytes
            check(self.model.vocab_size == 256, f"model.vocab_size={self.model.vocab_size}: the corpus is bytes (256)")
            check(self.model.max_seq_len >= self.train.seq_len,
                  f"model.max_seq_len={self.model.max_seq_len} is shorter than train.seq_len={self.train.seq_len}")


# ----------------------------------------------------------------------------------------------------------
# Data: bytes of the Python standard library's top-level modules; every 8th file is held out.


def corpus(split: str) -> np.ndarray:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    chosen = [f for i, f in enumerate(files) if (i % 8 == 7) == (split == "heldout")]
    data = b"".join(Path(f).read_bytes() for f in chosen)
    return np.frombuffer(data, np.uint8).astype(np.int32)


class WindowSampler:
    """Random windows [batch, seq_len + 1] of a token array; state = number of batches drawn (exact resume)."""

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int, seed: int):
        self.tokens, self.batch, self.seq_len, self.seed, self.n = tokens, batch, seq_len, seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.n])
        self.n += 1
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, self.batch)
        return jnp.asarray(np.stack([self.tokens[s: s + self.seq_len + 1] for s in starts]))

    def get_state(self):
        return {"n": self.n}

    def set_state(self, state):
        self.n = int(state["n"])


def fixed_windows(tokens: np.ndarray, n: int, seq_len: int, seed: int) -> np.ndarray:
    """n windows [n, seq_len + 1] at evenly spread, seed-jittered offsets (deterministic)."""
    rng = np.random.default_rng(seed)
    starts = np.linspace(0, len(tokens) - seq_len - 2, n).astype(int)
    starts = np.minimum(starts + rng.integers(0, seq_len, n), len(tokens) - seq_len - 1)
    return np.stack([tokens[s: s + seq_len + 1] for s in starts])


def nll(model: Model, params, windows) -> jax.Array:
    """Mean next-token negative log-likelihood of windows [B, S + 1]."""
    logits = model(params, windows[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1))


def train_model(config: Config, run_dir: str):
    """Train (or resume) the small decoder in `run_dir/train`; returns (TransformerConfig, params)."""
    m = config.train
    cfg = config.model
    sub = os.path.join(run_dir, "train")
    prepare_run_dir(sub, TrainedModel(cfg, m))
    heldout = jnp.asarray(fixed_windows(corpus("heldout"), 32, m.seq_len, seed=1))
    model = Model(cfg)
    task = trainer_lib.Task(
        init_params=lambda key: tfm.init_params(cfg, key),
        loss_fn=lambda p, batch, rng: (lambda loss: (loss, {"loss": loss}))(nll(model, p, batch)),
        optimizer=m.optim.build(m.trainer.steps),
        batches=WindowSampler(corpus("train"), m.batch_size, m.seq_len, config.seed),
        eval_fn=lambda p: {"loss": float(jax.jit(lambda q: nll(model, q, heldout))(p))},
    )
    result = trainer_lib.train(m.trainer, task, sub, seed=config.seed)
    return cfg, result.state.params


def load_checkpoint(path: str, seq_len: int):
    """A real decoder from a local HF directory (config + safetensors + tokenizer.json), no network."""
    from tokenizers import Tokenizer

    from jaxllm.hf import load_pretrained

    cfg, params = load_pretrained(path, dtype="float32")
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))

    def encode(split):
        files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
        chosen = [f for i, f in enumerate(files) if (i % 8 == 7) == (split == "heldout")][:12]
        return np.asarray(sum((tok.encode(Path(f).read_text(errors="replace")).ids for f in chosen), []), np.int32)

    return cfg, params, encode


def perplexity(model: Model, params, windows: np.ndarray, batch: int = 16) -> float:
    fn = jax.jit(lambda p, w: nll(model, p, w))
    losses = [float(fn(params, jnp.asarray(windows[i: i + batch]))) * len(windows[i: i + batch])
              for i in range(0, len(windows), batch)]
    return float(math.exp(sum(losses) / len(windows)))


def sparse_positions(model: Model, seq: int) -> int:
    """Index of the first token that the model's linear sends through the sparse path (0 for dense models)."""
    lin = model.linear
    return min(lin.dense_tokens(seq), seq - 1) if hasattr(lin, "dense_tokens") else 0


class Evaluator:
    """Perplexity over the sparse tokens of windows [N, S + 1], with one compiled function per model (the
    trees of one kind share shapes: R-Sparse trees keep the largest rank, switched off by `rank_mask`)."""

    def __init__(self, windows: np.ndarray, batch: int = 16):
        self.windows, self.batch, self.fns = windows, batch, {}

    def __call__(self, model: Model, params, start: int) -> float:
        key = (model, start)
        if key not in self.fns:
            def tail_nll(p, w):
                logp = jax.nn.log_softmax(model(p, w[:, :-1])[:, start:], axis=-1)
                return -jnp.mean(jnp.take_along_axis(logp, w[:, start + 1:, None], axis=-1))
            self.fns[key] = jax.jit(tail_nll)
        fn, w = self.fns[key], self.windows
        losses = [float(fn(params, jnp.asarray(w[i: i + self.batch]))) * len(w[i: i + self.batch])
                  for i in range(0, len(w), self.batch)]
        return float(math.exp(sum(losses) / len(w)))


def mean_layer_error(params, tree, inputs) -> float:
    """Mean relative output error per projection on activations `inputs` (R-Sparse or TEAL entries)."""
    from jaxllm.sparse import rsparse as rs

    errs = []
    for name, p in rs.projections(params).items():
        lname, group, pname = name.split("/")
        w2 = rs.kernel_matrix(name, p["kernel"])
        errs.append(rs.relative_error(inputs[name], w2, _entry_2d(tree[lname][group][pname], w2.shape[0])))
    return float(np.mean(errs))


def read_fraction(params, tree, inputs) -> float:
    """Fraction of the decoder projections' weights read per token on activations `inputs`: kept channels ×
    d_out (+ rank r × (d_in + d_out) for an R-Sparse low-rank path), summed, over Σ d_in·d_out."""
    from jaxllm.sparse import rsparse as rs

    read = total = 0.0
    for name, p in rs.projections(params).items():
        lname, group, pname = name.split("/")
        w2 = rs.kernel_matrix(name, p["kernel"])
        d_in, d_out = w2.shape
        entry = _entry_2d(tree[lname][group][pname], d_in)
        kept = rs.kept_fraction(inputs[name], entry)
        rank = 0
        if "a" in entry:
            rank = int(np.sum(np.asarray(entry["rank_mask"]))) if "rank_mask" in entry else entry["a"].shape[1]
        read += kept * d_in * d_out + rank * (d_in + d_out)
        total += d_in * d_out
    return float(read / total)


def _entry_2d(p, d_in: int) -> dict:
    if "rsparse" in p:
        return p["rsparse"]
    return {"scale": jnp.ones((d_in,), jnp.float32), "tau": p["teal"]["tau"]}


def method_trees(cfg, params, factors, calib_in, search_in, search_tokens, teal_parts, s, config, pad, log):
    """{method: tree} at sparsity s (see METHOD_NAMES), and the searched α recipes."""
    from jaxllm.sparse import rsparse as rs
    from jaxllm.sparse import teal

    trees, recipes = {}, {}
    trees["teal"] = rs.rsparsify(cfg, params, None, s, method="teal", factors=factors, inputs=calib_in)[0]
    for variant, (hists, alloc) in teal_parts.items():  # "" = the reference's signed histograms, "abs" = |x|
        trees[f"teal{variant}_hist_uniform"] = teal.tealify(params, hists, s)
        if alloc is not None:
            trees[f"teal{variant}_greedy"] = teal.tealify(params, hists, alloc[s])
    common = dict(factors=factors, inputs=calib_in, pad_rank=pad)
    trees["rsparse_alpha1"] = rs.rsparsify(cfg, params, None, s, 1.0, **common)[0]
    trees["rsparse_uniform"] = rs.rsparsify(cfg, params, None, s, config.uniform_alpha, **common)[0]
    greedy, _ = rs.greedy_alpha_search(params, factors, calib_in, search_in, s)
    trees["rsparse_greedy"] = rs.rsparsify(cfg, params, None, s, greedy, **common)[0]
    recipes["greedy"] = greedy
    if config.search == "evolutionary":
        evo, _, _ = rs.evolutionary_alpha_search(
            cfg, params, factors, calib_in, search_tokens, s, init=greedy, generations=config.search_generations,
            population=config.search_population, seed=config.seed, log=log)
        trees["rsparse_evolutionary"] = rs.rsparsify(cfg, params, None, s, evo, **common)[0]
        recipes["evolutionary"] = evo
    return trees, recipes


def run(config: Config) -> dict:
    from jaxllm.sparse import rsparse as rs
    from jaxllm.sparse import teal

    run_dir = config.run_dir
    prepare_run_dir(run_dir, config)
    t0 = time.time()
    seq = config.train.seq_len
    if config.checkpoint_path:
        cfg, params, encode = load_checkpoint(config.checkpoint_path, seq)
        train_tokens, heldout_tokens = encode("train"), encode("heldout")
        source = f"checkpoint {config.checkpoint_path}"
    else:
        cfg, params = train_model(config, run_dir)
        train_tokens, heldout_tokens = corpus("train"), corpus("heldout")
        source = (f"byte-level decoder trained here: d_model={cfg.d_model}, layers={cfg.n_layers}, heads={cfg.n_heads}, "
                  f"kv_heads={cfg.num_heads_kv}, d_ff={cfg.d_ff}, {config.train.trainer.steps} steps")
    factors = rs.compute_factors(params)
    names = list(rs.projections(params))
    shapes = {n: rs.kernel_matrix(n, p["kernel"]).shape for n, p in rs.projections(params).items()}
    pad = {n: rs.layer_budget(n, *shapes[n], min(config.sparsities), 0.0).rank for n in names}
    dense = Model(cfg)
    models = {("rsparse", f): rs.rsparse_model(cfg, f) for f in config.sparse_fractions}
    models.update({("teal", f): teal.teal_model(cfg, f) for f in config.sparse_fractions})
    rows, dense_rows, recipes = [], [], {}
    for e in config.window_seeds:
        t_seed = time.time()
        calib = fixed_windows(train_tokens, config.calib_windows, seq, seed=10 + 100 * e)
        search = fixed_windows(train_tokens, config.search_windows, seq, seed=11 + 100 * e)
        evaluate = Evaluator(fixed_windows(heldout_tokens, config.eval_windows, seq, seed=12 + 100 * e))
        calib_in = rs.collect_inputs(cfg, params, calib[:, :-1])
        search_in = rs.collect_inputs(cfg, params, search[:, :-1])
        teal_parts = {}
        for variant, magnitude in (("", False), ("_abs", True)):  # greedy only with the reference's thresholds
            hists = teal.projection_histograms(calib_in, magnitude=magnitude)
            alloc = None
            if not magnitude:
                alloc, _ = teal.greedy_allocation(cfg, params, hists, search[: config.teal_greedy_windows, :-1],
                                                  config.sparsities, log=print)
            teal_parts[variant] = (hists, alloc)
        for f in config.sparse_fractions:
            start = sparse_positions(models[("rsparse", f)], seq)
            ppl = evaluate(dense, params, start)
            dense_rows.append({"seed": e, "sparse_fraction": f, "ppl": ppl})
            print(f"seed {e} f={f}: dense perplexity {ppl:.4f} on tokens {start}..{seq - 1}", flush=True)
        for s in config.sparsities:
            trees, rec = method_trees(cfg, params, factors, calib_in, search_in, search[:, :-1], teal_parts, s,
                                      config, pad, print)
            for k, v in rec.items():
                recipes[f"{k}_{s}_seed{e}"] = v
            for variant, (_, alloc) in teal_parts.items():
                if alloc is not None:
                    recipes[f"teal{variant}_greedy_{s}_seed{e}"] = alloc[s]
            for method, tree in trees.items():
                kind = "teal" if method in TEAL_TREES else "rsparse"
                err = mean_layer_error(params, tree, search_in)
                readf = read_fraction(params, tree, search_in)
                calib_readf = read_fraction(params, tree, calib_in)
                for f in config.sparse_fractions:
                    model = models[(kind, f)]
                    ppl = evaluate(model, tree, sparse_positions(model, seq))
                    rows.append({"seed": e, "sparsity": s, "sparse_fraction": f, "method": method, "ppl": ppl,
                                 "mean_layer_rel_error": err, "read_fraction_heldout": readf,
                                 "read_fraction_calib": calib_readf})
                    print(f"seed {e} s={s} f={f} {method:22s} ppl {ppl:.4f}  layer err {err:.4f}  "
                          f"weights read {readf:.4f} (calib {calib_readf:.4f})", flush=True)
        print(f"seed {e}: {time.time() - t_seed:.0f} s", flush=True)
    (Path(run_dir) / "recipes.json").write_text(json.dumps(recipes, indent=1))
    (Path(run_dir) / "results.json").write_text(json.dumps({"dense": dense_rows, "rows": rows,
                                                            "dense_ppl": _dense_mean(dense_rows, 1.0)}, indent=1))
    _plots(run_dir, dense_rows, rows, recipes, config)
    summary = {"source": source, "dense_ppl": _dense_mean(dense_rows, max(config.sparse_fractions)),
               "eval_tokens": int(config.eval_windows * seq), "window_seeds": list(config.window_seeds),
               "sparse_fractions": list(config.sparse_fractions), "seconds": round(time.time() - t0, 1)}
    for (m, s, f), (mean, _sd, _n) in _increase_stats(dense_rows, rows).items():
        summary[f"ppl_increase_pct/{m}/s{s}/f{f}"] = round(mean, 3)
    write_summary(run_dir, summary, "R-Sparse quality")
    print(results_markdown(run_dir))
    return summary


def _dense_mean(dense_rows, f):
    vals = [r["ppl"] for r in dense_rows if r["sparse_fraction"] == f]
    return float(np.mean(vals)) if vals else float("nan")


def _increase_stats(dense_rows, rows):
    """(method, s, f) -> (mean, sample std, n) over window seeds of the perplexity increase over dense, in %."""
    dense = {(r["seed"], r["sparse_fraction"]): r["ppl"] for r in dense_rows}
    acc = {}
    for r in rows:
        inc = 100 * (r["ppl"] / dense[(r["seed"], r["sparse_fraction"])] - 1)
        acc.setdefault((r["method"], r["sparsity"], r["sparse_fraction"]), []).append(inc)
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), len(v))
            for k, v in acc.items()}


METHOD_NAMES = {
    "teal": "TEAL uniform, exact s-quantile of \\|x\\| (old baseline)",
    "teal_hist_uniform": "TEAL uniform (reference: histogram thresholds)",
    "teal_greedy": "TEAL greedy allocation (reference)",
    "teal_abs_hist_uniform": "TEAL uniform, \\|x\\| histogram (icdf(s))",
    "rsparse_alpha1": "R-Sparse α = 1 (\\|x·c\\| > τ, no low rank)",
    "rsparse_uniform": "R-Sparse uniform α",
    "rsparse_greedy": "R-Sparse searched α (greedy, per layer)",
    "rsparse_evolutionary": "R-Sparse searched α (evolutionary)",
}

TEAL_TREES = ("teal_hist_uniform", "teal_greedy", "teal_abs_hist_uniform")  # trees run by TEALLinear (the others by RSparseLinear)

# like-for-like pairs: (TEAL method, R-Sparse method)
PAIRS = (("teal_hist_uniform", "rsparse_uniform"), ("teal_abs_hist_uniform", "rsparse_uniform"),
         ("teal_greedy", "rsparse_greedy"), ("teal_greedy", "rsparse_evolutionary"))


def results_markdown(run_dir: str) -> str:
    """The quality tables of a finished run: per evaluation mode, the perplexity increase over dense (mean ± std
    over window seeds), the like-for-like paired differences, and the weights actually read."""
    res = json.loads((Path(run_dir) / "results.json").read_text())
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    dense_rows, rows = res["dense"], res["rows"]
    stats = _increase_stats(dense_rows, rows)
    sps = sorted({r["sparsity"] for r in rows})
    fs = sorted({r["sparse_fraction"] for r in rows}, reverse=True)
    seeds = sorted({r["seed"] for r in rows})
    methods = [m for m in METHOD_NAMES if any(r["method"] == m for r in rows)]
    ppl = {(r["method"], r["sparsity"], r["sparse_fraction"], r["seed"]): r["ppl"] for r in rows}
    dense = {(r["sparse_fraction"], r["seed"]): r["ppl"] for r in dense_rows}
    lines = [f"Window seeds {seeds} (n = {len(seeds)}); uniform α = {cfg['uniform_alpha']}. Cells: perplexity "
             "increase over dense on the sparse tokens, mean ± sample std over the seeds.", ""]
    for f in fs:
        d = [dense[(f, e)] for e in seeds]
        what = "every token sparse" if f == 1.0 else f"last {100 * f:g}% of each window sparse, scored on those"
        lines += [f"**f = {f}** ({what}); dense perplexity on those tokens {np.mean(d):.4f} "
                  f"(seeds: {', '.join(f'{v:.4f}' for v in d)}).", "",
                  "| method | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
        for m in methods:
            cells = []
            for s in sps:
                mean, sd, _ = stats[(m, s, f)]
                cells.append(f"{mean:+.2f} ± {sd:.2f}%" if not math.isnan(sd) else f"{mean:+.2f}%")
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
        lines += ["", f"Like-for-like, f = {f}: R-Sparse minus TEAL perplexity increase (percentage points, mean ± "
                  "std over seeds, paired: same windows); wins = seeds where R-Sparse is lower.", "",
                  "| pair | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
        for tm, rm in PAIRS:
            if tm not in methods or rm not in methods:
                continue
            cells = []
            for s in sps:
                diffs = [100 * (ppl[(rm, s, f, e)] - ppl[(tm, s, f, e)]) / dense[(f, e)] for e in seeds]
                wins = sum(v < 0 for v in diffs)
                sd = f" ± {np.std(diffs, ddof=1):.2f}" if len(diffs) > 1 else ""
                cells.append(f"{np.mean(diffs):+.2f}{sd} ({wins}/{len(diffs)})")
            lines.append(f"| {METHOD_NAMES[rm]} − {METHOD_NAMES[tm]} | " + " | ".join(cells) + " |")
        lines.append("")
    f0 = fs[0]
    lines += ["Fraction of the decoder projections' weights read per token, on the held-out search activations "
              "(calibration activations in brackets), mean over seeds; the budget is 1 − s:", "",
              "| method | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
    for m in methods:
        cells = []
        for s in sps:
            sel = [r for r in rows if r["method"] == m and r["sparsity"] == s and r["sparse_fraction"] == f0]
            cells.append(f"{np.mean([r['read_fraction_heldout'] for r in sel]):.3f} "
                         f"({np.mean([r['read_fraction_calib'] for r in sel]):.3f})")
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Mean relative output error per linear layer on the held-out search activations (mean over seeds):",
              "", "| method | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
    for m in methods:
        cells = [f"{np.mean([r['mean_layer_rel_error'] for r in rows if r['method'] == m and r['sparsity'] == s and r['sparse_fraction'] == f0]):.4f}"
                 for s in sps]
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(run_dir, dense_rows, rows, recipes, config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = _increase_stats(dense_rows, rows)
    fs = sorted({r["sparse_fraction"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(fs), figsize=(6 * len(fs), 4), squeeze=False)
    for ax, f in zip(axes[0], fs):
        for m in METHOD_NAMES:
            pts = sorted((s, *stats[(m, s, f)][:2]) for (mm, s, ff) in stats if mm == m and ff == f)
            if pts:
                xs, ys, sds = zip(*pts)
                ax.errorbar(xs, ys, yerr=[0 if math.isnan(v) else v for v in sds], marker="o", capsize=3,
                            label=m)
        ax.set_xlabel("model-level sparsity s")
        ax.set_ylabel("perplexity increase over dense (%)")
        ax.set_yscale("log")
        ax.set_title(f"sparse fraction f = {f} (mean ± std over seeds)")
        ax.legend(fontsize=7)
    save_figure(fig, run_dir, "rsparse_ppl")
    e0 = config.window_seeds[0]
    key = next((k for k in (f"evolutionary_0.5_seed{e0}", f"greedy_0.5_seed{e0}") if k in recipes), None)
    if key:
        fig, ax = plt.subplots(figsize=(7, 3))
        names = list(recipes[key])
        ax.bar(range(len(names)), [recipes[key][n] for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("layer_", "L").replace("/attn/", ".").replace("/mlp/", ".") for n in names],
                           rotation=90, fontsize=6)
        ax.set_ylabel("α")
        ax.set_title(f"searched α per layer at s = 0.5 ({key.split('_')[0]}, seed {e0})")
        save_figure(fig, run_dir, "rsparse_alpha_s0.5")
