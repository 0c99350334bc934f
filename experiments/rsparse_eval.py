"""R-Sparse quality: perplexity of a trained decoder at 40-70% sparsity (dense, TEAL, R-Sparse uniform / searched α).

The paper's claim checked here (arXiv 2504.19449): at 50% model-level sparsity R-Sparse stays close to dense and
beats plain (TEAL-style) thresholding. The model is a byte-level Llama-flavour decoder with grouped-query attention
trained in this library on Python standard-library source text (files split into train / held-out by index), or a
real checkpoint from a local directory (`checkpoint_path=...`, loaded with `jaxllm.hf.load_pretrained`).

Protocol: thresholds are calibrated on `calib_windows` windows of training text, α is searched on a separate set of
`search_windows` training windows, perplexity is measured on held-out files. Every token of the evaluated
windows goes through the sparse path (`sparse_fraction=1`): linears are per-token, so this equals teacher-forced
decoding with every decode step sparse, the strictest setting (the reference code sparsifies only the last 10%).
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
    sparse_fraction: float = 1.0

    def __post_init__(self):
        from jaxllm.config import check, check_choice

        check_choice("search", self.search, ("evolutionary", "greedy"))
        for s in self.sparsities:
            check(0.0 <= s <= 1.0, f"sparsity {s} outside [0, 1]")
        check(0.0 <= self.uniform_alpha <= 1.0, f"uniform_alpha={self.uniform_alpha} outside [0, 1]")
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


def mean_layer_error(params, tree, inputs) -> float:
    from jaxllm.sparse import rsparse as rs

    errs = []
    for name, p in rs.projections(params).items():
        lname, group, pname = name.split("/")
        errs.append(rs.relative_error(inputs[name], rs.kernel_matrix(name, p["kernel"]),
                                      tree[lname][group][pname]["rsparse"]))
    return float(np.mean(errs))


def run(config: Config) -> dict:
    from jaxllm.sparse import rsparse as rs

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
    calib = fixed_windows(train_tokens, config.calib_windows, seq, seed=10)
    search = fixed_windows(train_tokens, config.search_windows, seq, seed=11)
    evalw = fixed_windows(heldout_tokens, config.eval_windows, seq, seed=12)
    factors = rs.compute_factors(params)
    calib_in = rs.collect_inputs(cfg, params, calib[:, :-1])
    search_in = rs.collect_inputs(cfg, params, search[:, :-1])
    f = config.sparse_fraction
    sparse_model = rs.rsparse_model(cfg, f)
    dense_ppl = perplexity(Model(cfg), params, evalw)
    print(f"dense perplexity {dense_ppl:.4f}", flush=True)
    rows, recipes = [], {}
    for s in config.sparsities:
        methods = {}
        tree, _ = rs.rsparsify(cfg, params, None, s, method="teal", factors=factors, inputs=calib_in)
        methods["teal"] = tree
        tree, _ = rs.rsparsify(cfg, params, None, s, 1.0, factors=factors, inputs=calib_in)
        methods["rsparse_alpha1"] = tree
        tree, _ = rs.rsparsify(cfg, params, None, s, config.uniform_alpha, factors=factors, inputs=calib_in)
        methods["rsparse_uniform"] = tree
        greedy, _ = rs.greedy_alpha_search(params, factors, calib_in, search_in, s)
        tree, _ = rs.rsparsify(cfg, params, None, s, greedy, factors=factors, inputs=calib_in)
        methods["rsparse_greedy"] = tree
        recipes[f"greedy_{s}"] = greedy
        if config.search == "evolutionary":
            evo, kl, hist = rs.evolutionary_alpha_search(
                cfg, params, factors, calib_in, search[:, :-1], s, init=greedy,
                generations=config.search_generations, population=config.search_population, seed=config.seed,
                log=print)
            tree, _ = rs.rsparsify(cfg, params, None, s, evo, factors=factors, inputs=calib_in)
            methods["rsparse_evolutionary"] = tree
            recipes[f"evolutionary_{s}"] = evo
        for name, tree in methods.items():
            ppl = perplexity(sparse_model, tree, evalw)
            err = mean_layer_error(params, tree, search_in)
            rows.append({"sparsity": s, "method": name, "ppl": ppl, "mean_layer_rel_error": err})
            print(f"s={s} {name:22s} ppl {ppl:.4f}  mean layer rel. error {err:.4f}", flush=True)
    (Path(run_dir) / "recipes.json").write_text(json.dumps(recipes, indent=1))
    (Path(run_dir) / "results.json").write_text(json.dumps({"dense_ppl": dense_ppl, "rows": rows}, indent=1))
    _plots(run_dir, dense_ppl, rows, recipes, config)
    summary = {"source": source, "dense_ppl": dense_ppl, "eval_tokens": int(evalw.shape[0] * seq),
               "sparse_fraction": f, "seconds": round(time.time() - t0, 1)}
    for r in rows:
        summary[f"ppl/{r['method']}/s{r['sparsity']}"] = r["ppl"]
    write_summary(run_dir, summary, "R-Sparse quality")
    print(results_markdown(run_dir))
    return summary


METHOD_NAMES = {
    "teal": "TEAL (\\|x\\| > τ)",
    "rsparse_alpha1": "R-Sparse α = 1 (\\|x·c\\| > τ, no low rank)",
    "rsparse_uniform": "R-Sparse uniform α",
    "rsparse_greedy": "R-Sparse searched α (greedy, per layer)",
    "rsparse_evolutionary": "R-Sparse searched α (evolutionary)",
}


def results_markdown(run_dir: str) -> str:
    """The quality table of a finished run as markdown (perplexity and its increase over dense)."""
    res = json.loads((Path(run_dir) / "results.json").read_text())
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    dense = res["dense_ppl"]
    sps = sorted({r["sparsity"] for r in res["rows"]})
    methods = [m for m in METHOD_NAMES if any(r["method"] == m for r in res["rows"])]
    lines = [f"Dense perplexity: **{dense:.4f}**. Cells: perplexity (increase over dense); uniform α = "
             f"{cfg['uniform_alpha']}.", "",
             "| method | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
    for m in methods:
        cells = []
        for s in sps:
            r = next(r for r in res["rows"] if r["method"] == m and r["sparsity"] == s)
            cells.append(f"{r['ppl']:.4f} (+{100 * (r['ppl'] / dense - 1):.1f}%)")
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Mean relative output error per linear layer on held-out (search) activations:", "",
              "| method | " + " | ".join(f"s = {s}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
    for m in methods:
        cells = [f"{next(r for r in res['rows'] if r['method'] == m and r['sparsity'] == s)['mean_layer_rel_error']:.4f}"
                 for s in sps]
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(run_dir, dense_ppl, rows, recipes, config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in sorted({r["method"] for r in rows}):
        pts = [(r["sparsity"], r["ppl"]) for r in rows if r["method"] == m]
        ax.plot(*zip(*pts), marker="o", label=m)
    ax.axhline(dense_ppl, color="k", ls="--", label="dense")
    ax.set_xlabel("model-level sparsity s")
    ax.set_ylabel("held-out perplexity (bytes)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("R-Sparse vs TEAL, every token sparse")
    save_figure(fig, run_dir, "rsparse_ppl")
    key = "evolutionary_0.5" if "evolutionary_0.5" in recipes else "greedy_0.5"
    if key in recipes:
        fig, ax = plt.subplots(figsize=(7, 3))
        names = list(recipes[key])
        ax.bar(range(len(names)), [recipes[key][n] for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("layer_", "L").replace("/attn/", ".").replace("/mlp/", ".") for n in names],
                           rotation=90, fontsize=6)
        ax.set_ylabel("α")
        ax.set_title(f"searched α per layer at s = 0.5 ({key.split('_')[0]})")
        save_figure(fig, run_dir, "rsparse_alpha_s0.5")
