"""GaLore pretraining comparison: AdamW vs GaLore (exact SVD) vs GaLore 2 (randomized) vs Muon, plus ablations.

A small Llama-style decoder is pretrained from scratch on the generated corpus of `jaxllm.data.synthetic`
(arithmetic traces, copy, reverse, sorting; character tokens, packed rows) through the one trainer, once per
optimizer, with the same steps, initialisation, data order and seed. GaLore follows the paper's recipe:
attention/MLP matrices get GaLore with scale alpha and their own learning rate (`galore.galore_learning_rate`,
the paper's 0.01 with alpha 0.25), embeddings / head / norms get AdamW at `galore.learning_rate`. Ablations
(GaLore, exact SVD): rank, update gap T, moment handling at a refresh. Each run has its own sub-run-dir
(resumable). The model is `model` (`model=<preset>` and `model.<field>=...`), each run's optimizer its own
config (`adamw.*`, `galore.*`, `muon.*`).

    python -m experiments galore_pretrain                      # all runs (a few minutes on CPU)
    python -m experiments galore_pretrain ablations=false steps=200
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

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
    model: tfm.TransformerConfig = tfm.TransformerConfig(
        vocab_size=CharTokenizer().vocab_size, d_model=96, n_layers=2, n_heads=4, d_ff=256, max_seq_len=64,
        tie_embeddings=False, flavour="llama")
    seq_len: int = 64
    batch_size: int = 16
    docs_per_source: int = 2000
    eval_docs_per_source: int = 100
    # One optimizer config per compared run, the same peak lr 3e-3 for AdamW and the AdamW part of GaLore / Muon,
    # linear warmup over 10% of the steps then cosine to 10% of peak (the paper's schedule). GaLore (exact SVD):
    # matrices at galore_learning_rate x scale (the paper's 0.01 x 0.25); galore2_randomized and the ablations
    # are this config with one field changed.
    adamw: build.AdamWConfig = build.AdamWConfig(learning_rate=3e-3, schedule="cosine", warmup_fraction=0.1)
    galore: build.GaLoreAdamWConfig = build.GaLoreAdamWConfig(
        learning_rate=3e-3, schedule="cosine", warmup_fraction=0.1, galore_learning_rate=1e-2, scale=0.25, rank=32,
        update_proj_gap=50)
    muon: build.MuonConfig = build.MuonConfig(learning_rate=3e-3, schedule="cosine", warmup_fraction=0.1,
                                              muon_learning_rate=0.02)
    adamw_lr_sweep: tuple[float, ...] = ()  # extra AdamW runs at these learning rates (baseline tuning)
    ablations: bool = True
    ablation_ranks: tuple[int, ...] = (8, 64)
    ablation_gaps: tuple[int, ...] = (10, 150)
    ablation_moments: tuple[str, ...] = ("reset", "rotate")
    seed: int = 0
    run_dir: str = ""
    trainer: TrainerConfig = TrainerConfig(steps=300, log_every=10, checkpoint_every=1000, progress=False)

    ALIASES: ClassVar[dict] = {"steps": "trainer.steps"}

    def __post_init__(self):
        check(self.trainer.steps >= 1, f"trainer.steps must be >= 1, got {self.trainer.steps}")
        vocab = CharTokenizer().vocab_size
        check(self.model.vocab_size == vocab,
              f"model.vocab_size={self.model.vocab_size}, but the character tokenizer has {vocab} tokens")
        check(self.model.max_seq_len >= self.seq_len,
              f"model.max_seq_len={self.model.max_seq_len} is shorter than seq_len={self.seq_len}")
        d = self.model.d_model
        check(self.galore.rank <= d // 2, f"galore.rank must be in [1, model.d_model/2={d // 2}], got {self.galore.rank}")
        check(self.galore.projector == "svd", "galore is the exact-SVD run (galore.projector=svd); "
              "galore2_randomized is the same config with projector=randomized")
        for m in self.ablation_moments:
            check(m in ("keep", "reset", "rotate"), f"ablation_moments: {m!r} not in keep/reset/rotate")


def runs(config: Config) -> dict[str, build.OptimizerConfig]:
    """name -> optimizer config of each run (same steps, initialisation, data order and seed)."""
    galore = config.galore
    out = {
        "adamw": config.adamw,
        "galore_svd": galore,
        "galore2_randomized": dataclasses.replace(galore, projector="randomized"),
        "muon": config.muon,
    }
    for lr in config.adamw_lr_sweep:
        out[f"adamw_lr{lr:g}"] = dataclasses.replace(config.adamw, learning_rate=lr)
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
    mcfg = config.model
    train_rows, eval_batches = corpus(config, tok)
    results = {}
    for name, ocfg in runs(config).items():
        opt = ocfg.build(config.trainer.steps)
        batches = pipeline.mixed_batches(train_rows, config.batch_size, seed=config.seed)
        task = lm_task(mcfg, opt, batches, eval_batches)
        t0 = time.perf_counter()
        res = train(config.trainer, task, f"{config.run_dir}/{name}", seed=config.seed)
        wall = time.perf_counter() - t0
        curve = [(r["step"], r["loss"]) for r in res.history if "loss" in r]
        final_eval = [r["eval/loss"] for r in res.history if "eval/loss" in r][-1]
        results[name] = {"curve": curve, "eval_loss": final_eval, "wall_s": wall,
                         "opt_state_bytes": state_bytes(res.state.opt_state)}
        print(f"{name}: eval loss {final_eval:.4f}  ({wall:.0f} s)", flush=True)

    ref = results["adamw"]["eval_loss"]
    best_adamw = min((k for k in results if k.startswith("adamw")), key=lambda k: results[k]["eval_loss"])
    summary = {"model": f"d_model={mcfg.d_model} layers={mcfg.n_layers} d_ff={mcfg.d_ff} "
                        f"vocab={tok.vocab_size} params={tfm.count_params(jax.eval_shape(lambda: tfm.init_params(mcfg, jax.random.PRNGKey(0))))}",
               "steps": config.trainer.steps, "tokens_per_step": config.batch_size * config.seq_len}
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

