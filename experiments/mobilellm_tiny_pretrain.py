"""Tiny MobileLLM-R1-style decoder pretrained on the library's generated corpus (held-out loss + arithmetic).

The model is the Llama4-text flavour of the one Transformer (interleaved RoPE, QK-norm, GQA, SwiGLU, tied
embeddings) at a tiny size; the data are the generated sources of `jaxllm.data.synthetic` (arithmetic with
worked traces, copy, reverse, sorting), character tokens, packed rows mixed i.i.d. per row with weights as
MobileLLM-R1's loader does. Optimizer as in the paper's pretraining: Adam(0.9, 0.95, 1e-8), weight decay
0.1, linear warmup then linear decay to 0.1x peak. Reports held-out loss before/after and greedy exact-match
accuracy on held-out addition problems (KV-cache sampler).

    python -m experiments mobilellm_tiny_pretrain                 # ~2-4 min on 2 CPU cores
    python -m experiments mobilellm_tiny_pretrain trainer.steps=100 sources=arithmetic,copy
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Optional

import jax
import numpy as np

from jaxllm.config import check, comma_list
from jaxllm.data import pipeline, synthetic
from jaxllm.data.tokenizers import CharTokenizer
from jaxllm.models import Model, get_preset
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.sampling.autoregressive import SamplingConfig, generate
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import eval_loss, lm_task


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    sources: str = "arithmetic,copy,reverse,sorting"  # comma-separated names from jaxllm.data.synthetic
    weights: str = ""  # comma-separated, same order as sources; empty = uniform
    docs_per_source: int = 3000
    eval_docs_per_source: int = 100
    # the Llama4-text flavour at a tiny size (`model=<preset>`, `model.<field>=...`)
    model: tfm.TransformerConfig = get_preset(
        "tiny_mobilellm", vocab_size=CharTokenizer().vocab_size, d_model=96, n_layers=3, n_heads=4, n_kv_heads=2,
        head_dim=None, d_ff=256, max_seq_len=256)  # head_dim None: d_model / n_heads
    seq_len: int = 96
    batch_size: int = 16
    # MobileLLM-R1 pretraining: Adam(0.9, 0.95, 1e-8), decoupled weight decay 0.1, linear warmup then linear
    # decay to 0.1x peak
    optim: build.OptimizerConfig = build.AdamWConfig(learning_rate=3e-3, b2=0.95, weight_decay=0.1,
                                                     schedule="linear", warmup_steps=30, min_lr_ratio=0.1)
    accuracy_problems: int = 64  # held-out additions decoded greedily (0 = skip)
    seed: int = 0
    trainer: TrainerConfig = TrainerConfig(steps=400, log_every=25, eval_every=100, checkpoint_every=200,
                                           progress=False)

    def __post_init__(self):
        names = self.source_names
        check(len(names) > 0, "sources must name at least one source")
        for n in names:
            check(n in synthetic.SOURCES, f"unknown source {n!r}; known: {', '.join(synthetic.SOURCES)}")
        if self.weights:
            check(len(self.weight_list) == len(names),
                  f"weights has {len(self.weight_list)} entries for {len(names)} sources")
        check(self.seq_len >= 8, f"seq_len must be >= 8, got {self.seq_len}")
        vocab = CharTokenizer().vocab_size
        check(self.model.vocab_size == vocab,
              f"model.vocab_size={self.model.vocab_size}, but the character tokenizer has {vocab} tokens")
        check(self.model.max_seq_len >= self.seq_len,
              f"model.max_seq_len={self.model.max_seq_len} is shorter than seq_len={self.seq_len}")

    @property
    def source_names(self) -> list[str]:
        return comma_list(self.sources)

    @property
    def weight_list(self) -> list[float]:
        return [float(w) for w in comma_list(self.weights)]


def packed_sources(names, tok, n_docs: int, seq_len: int, seed: int) -> dict:
    return {n: pipeline.pack_documents(synthetic.generate(n, n_docs, seed), tok, seq_len) for n in names}


def arithmetic_accuracy(cfg: tfm.TransformerConfig, params, tok, n: int, seed: int = 12345) -> float:
    """Greedy exact match of the final answer on `n` held-out addition prompts (`a+b=` -> `... so N.`)."""
    problems = synthetic.generate_sft("arithmetic", n, seed)
    prompts = [tok.encode(p["prompt"], add_bos=True) for p in problems]
    out = generate(Model(cfg), params, prompts, jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=60, stop_tokens=(tok.token_to_id("."),), pad_id=tok.pad_id))
    right = 0
    for p, row, n_gen in zip(problems, np.asarray(out.tokens), np.asarray(out.lengths)):
        text = tok.decode(row[:n_gen])
        got = re.search(r"so (\d+)\.$", text)
        a, b = map(int, p["prompt"][:-1].split("+"))
        right += bool(got) and int(got.group(1)) == a + b
    return right / max(n, 1)


def train_tiny_decoder(c: Config, run_dir: str, weights: Optional[dict] = None, eval_sets: Optional[dict] = None):
    """Train one tiny decoder on the configured sources. Returns (model cfg, params, tokenizer, TrainResult).

    Reusable by other experiments that need "a small decoder pretrained on a generated corpus".
    `eval_sets` {name: list of batches} are evaluated as eval/<name>; default: held-out docs of the sources.
    """
    tok = CharTokenizer()
    cfg = c.model
    names = c.source_names
    train_rows = packed_sources(names, tok, c.docs_per_source, c.seq_len, c.seed)
    if weights is None and c.weights:
        weights = dict(zip(names, c.weight_list))
    if eval_sets is None:
        held = packed_sources(names, tok, c.eval_docs_per_source, c.seq_len, c.seed + 1000)
        eval_sets = {"loss": [b for n in names for b in pipeline.fixed_batches(held[n], 64)]}
    batches = pipeline.mixed_batches(train_rows, c.batch_size, weights, seed=c.seed)
    task = lm_task(cfg, c.optim.build(c.trainer.steps), batches)

    def eval_fn(params):
        return {k: eval_loss(Model(cfg), params, v) for k, v in eval_sets.items()}

    task.eval_fn = eval_fn
    result = train(c.trainer, task, run_dir, seed=c.seed)
    return cfg, result.state.params, tok, result


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    t0 = time.perf_counter()
    cfg, params, tok, result = train_tiny_decoder(c, c.run_dir)
    wall = time.perf_counter() - t0
    evals = [(r["step"], r["eval/loss"]) for r in result.history if "eval/loss" in r]
    trains = [(r["step"], r["loss"]) for r in result.history if "loss" in r]
    summary = {
        "model_params": tfm.count_params(params),
        "steps": c.trainer.steps,
        "tokens_seen": c.trainer.steps * c.batch_size * c.seq_len,
        "held_out_loss_initial": evals[0][1],
        "held_out_loss_final": evals[-1][1],
        "held_out_loss_ratio": evals[-1][1] / evals[0][1],
        "wall_s": round(wall, 1),
    }
    if c.accuracy_problems and "arithmetic" in c.source_names:
        summary["arithmetic_exact_match"] = arithmetic_accuracy(cfg, params, tok, c.accuracy_problems)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*trains), label="train loss")
    ax.plot(*zip(*evals), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats/char)")
    ax.set_title("tiny MobileLLM-R1-style decoder on the generated corpus")
    ax.legend()
    save_figure(fig, c.run_dir, "loss")
    write_summary(c.run_dir, summary, "mobilellm_tiny_pretrain")
    return summary
