"""GaLore pretraining comparison: AdamW vs GaLore (exact SVD) vs GaLore 2 (randomized) vs Muon, plus ablations.

A small Llama-style decoder is pretrained from scratch on the generated corpus of `jaxllm.data.synthetic`
(arithmetic traces, copy, reverse, sorting; character tokens, packed rows) through the one trainer, once per
optimizer, with the same steps, initialisation, data order and seed. GaLore follows the paper's recipe:
attention/MLP matrices get GaLore with scale alpha and their own learning rate (`galore_lr`, the paper's 0.01
with alpha 0.25), embeddings / head / norms get AdamW at `lr`. Ablations (GaLore, exact SVD): rank, update
gap T, moment handling at a refresh. Each run has its own sub-run-dir (resumable).

    python -m jaxllm.train galore_pretrain                      # all runs (a few minutes on CPU)
    python -m jaxllm.train galore_pretrain ablations=false steps=200
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxllm.config import check
from jaxllm.data import pipeline, synthetic
from jaxllm.data.tokenizers import CharTokenizer
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import lm_task

SOURCES = ("arithmetic", "copy", "reverse", "sorting")


@dataclasses.dataclass(frozen=True)
class Config:
    d_model: int = 96
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 300
    docs_per_source: int = 2000
    eval_docs_per_source: int = 100
    lr: float = 3e-3  # AdamW (and the AdamW part of GaLore / Muon runs)
    galore_lr: float = 1e-2  # projected matrices; effective step galore_lr * scale (paper: 0.01, 0.25)
    galore_scale: float = 0.25
    rank: int = 32
    update_proj_gap: int = 50
    oversample: int = 8
    power_iters: int = 2
    muon_lr: float = 0.02
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1  # linear warmup then cosine to 10% of peak (the paper's schedule)
    adamw_lr_sweep: tuple[float, ...] = ()  # extra AdamW runs at these learning rates (baseline tuning)
    ablations: bool = True
    ablation_ranks: tuple[int, ...] = (8, 64)
    ablation_gaps: tuple[int, ...] = (10, 150)
    ablation_moments: tuple[str, ...] = ("reset", "rotate")
    seed: int = 0
    run_dir: str = ""
    trainer: TrainerConfig = TrainerConfig(steps=0, log_every=10, checkpoint_every=1000, progress=False)

    def __post_init__(self):
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(1 <= self.rank <= self.d_model // 2, f"rank must be in [1, d_model/2={self.d_model // 2}], got {self.rank}")
        check(0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for m in self.ablation_moments:
            check(m in ("keep", "reset", "rotate"), f"ablation_moments: {m!r} not in keep/reset/rotate")


def model_config(config: Config, vocab: int) -> tfm.TransformerConfig:
    return tfm.TransformerConfig(vocab_size=vocab, d_model=config.d_model, n_layers=config.n_layers,
                                 n_heads=config.n_heads, d_ff=config.d_ff, max_seq_len=config.seq_len,
                                 tie_embeddings=False, flavour="llama")


def runs(config: Config) -> dict[str, build.OptimizerConfig]:
    """name -> optimizer config; every run shares the schedule shape and the seed."""
    warm = int(config.warmup_fraction * config.steps)
    base = build.OptimizerConfig(learning_rate=config.lr, warmup_steps=warm, decay_steps=config.steps - warm,
                                 weight_decay=config.weight_decay, eps=1e-8, seed=config.seed)
    galore = dataclasses.replace(base, name="galore_adamw", rank=config.rank, update_proj_gap=config.update_proj_gap,
                                 galore_scale=config.galore_scale, galore_learning_rate=config.galore_lr,
                                 eps=1e-6, oversample=config.oversample, power_iters=config.power_iters)
    out = {
        "adamw": base,
        "galore_svd": galore,
        "galore2_randomized": dataclasses.replace(galore, projector="randomized"),
        "muon": dataclasses.replace(base, name="muon", muon_learning_rate=config.muon_lr),
    }
    for lr in config.adamw_lr_sweep:
        out[f"adamw_lr{lr:g}"] = dataclasses.replace(base, learning_rate=lr)
    if config.ablations:
        for r in config.ablation_ranks:
            out[f"galore_rank{r}"] = dataclasses.replace(galore, rank=r)
        for t in config.ablation_gaps:
            out[f"galore_T{t}"] = dataclasses.replace(galore, update_proj_gap=t)
        for m in config.ablation_moments:
            out[f"galore_moments_{m}"] = dataclasses.replace(galore, moments=m)
    return out


def corpus(config: Config, tok: CharTokenizer):
    """Packed training rows per source and a held-out eval set (different generator seed)."""
    train_rows = {s: pipeline.pack_documents(synthetic.generate(s, config.docs_per_source, config.seed), tok,
                                             config.seq_len + 1) for s in SOURCES}
    eval_docs = [d for s in SOURCES for d in synthetic.generate(s, config.eval_docs_per_source, config.seed + 1000)]
    eval_rows = pipeline.pack_documents(eval_docs, tok, config.seq_len + 1)
    return train_rows, pipeline.fixed_batches(eval_rows, 64)


def state_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    tok = CharTokenizer()
    mcfg = model_config(config, tok.vocab_size)
    train_rows, eval_batches = corpus(config, tok)
    trainer_cfg = dataclasses.replace(config.trainer, steps=config.steps)
    results = {}
    for name, ocfg in runs(config).items():
        opt = build.build_optimizer(ocfg)
        batches = pipeline.mixed_batches(train_rows, config.batch_size, seed=config.seed)
        task = lm_task(mcfg, opt, batches, eval_batches)
        t0 = time.perf_counter()
        res = train(trainer_cfg, task, f"{config.run_dir}/{name}", seed=config.seed)
        wall = time.perf_counter() - t0
        curve = [(r["step"], r["loss"]) for r in res.history if "loss" in r]
        final_eval = [r["eval/loss"] for r in res.history if "eval/loss" in r][-1]
        results[name] = {"curve": curve, "eval_loss": final_eval, "wall_s": wall,
                         "opt_state_bytes": state_bytes(res.state.opt_state)}
        print(f"{name}: eval loss {final_eval:.4f}  ({wall:.0f} s)", flush=True)

    ref = results["adamw"]["eval_loss"]
    best_adamw = min((k for k in results if k.startswith("adamw")), key=lambda k: results[k]["eval_loss"])
    summary = {"model": f"d_model={config.d_model} layers={config.n_layers} d_ff={config.d_ff} "
                        f"vocab={tok.vocab_size} params={tfm.count_params(jax.eval_shape(lambda: tfm.init_params(mcfg, jax.random.PRNGKey(0))))}",
               "steps": config.steps, "tokens_per_step": config.batch_size * config.seq_len}
    for name, r in results.items():
        summary[f"{name}/eval_loss"] = round(r["eval_loss"], 4)
        summary[f"{name}/vs_adamw"] = f"{100 * (r['eval_loss'] / ref - 1):+.2f}%"
        if best_adamw != "adamw":
            best = results[best_adamw]["eval_loss"]
            summary[f"{name}/vs_best_adamw({best_adamw})"] = f"{100 * (r['eval_loss'] / best - 1):+.2f}%"
        summary[f"{name}/opt_state_bytes"] = r["opt_state_bytes"]
        summary[f"{name}/wall_s"] = round(r["wall_s"], 1)
    plot(config.run_dir, results)
    write_summary(config.run_dir, summary, title="GaLore pretraining comparison")
    return summary


def plot(run_dir: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [k for k in results if k.startswith("adamw") or k in ("galore_svd", "galore2_randomized", "muon")]
    abl = [k for k in results if k not in main]
    fig, axes = plt.subplots(1, 2 if abl else 1, figsize=(13 if abl else 7, 4.5), squeeze=False)
    for ax, names, title in ((axes[0, 0], main, "optimizers"), *(((axes[0, 1], ["galore_svd", *abl], "GaLore ablations"),) if abl else ())):
        for n in names:
            steps, losses = zip(*results[n]["curve"])
            ax.plot(steps, losses, label=f"{n} (eval {results[n]['eval_loss']:.3f})")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=8)
    save_figure(fig, run_dir, "loss_curves")

