"""MobileLLM-R1 data-mixture method on generated sources: leave-one-out influence -> resampling weights.

Sources (jaxllm.data.synthetic): arithmetic (worked traces), copy, reverse (useful), noise (useless) and
wrong_answers (harmful: copy prompts answered with the reversal and vice versa). The capability probe set is
held-out arithmetic + copy + reverse (like the paper's union of domain probe sets D^P_c).

1. θ: train on all sources, each sampled with equal probability (the paper's LOO protocol).
2. θ_{−j}: the same run without source j, for every j. ΔL_j = probe loss(θ_{−j}) − probe loss(θ) (Eq. 1).
3. Weights: per capability c, w_{c,j} ∝ max(ΔL_{c,j}, 0) normalised over sources (as Eq. 6 normalises
   positive impacts); averaged uniformly over capabilities (Eq. 5's α is uniform over c); optional floor.
4. Re-mixed run with w vs the uniform run, both evaluated on a *separate* held-out test set drawn from the
   same capability tasks (different seed than the probe set used to choose the weights), over `seeds`.

    python -m experiments mobilellm_data_mixture                   # ~8-12 min on 2 busy CPU cores
    python -m experiments mobilellm_data_mixture steps=100 seeds=1  # quick look
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from experiments import mobilellm_tiny_pretrain as pre
from jaxllm.config import check, comma_list
from jaxllm.data import mixture, pipeline, synthetic
from jaxllm.data.tokenizers import CharTokenizer
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, write_summary


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    sources: str = "arithmetic,copy,reverse,noise,wrong_answers"
    probe_sources: str = "arithmetic,copy,reverse"  # the capability probe / test tasks
    docs_per_source: int = 2000
    probe_docs_per_source: int = 100
    model: tfm.TransformerConfig = dataclasses.replace(pre.Config().model, d_model=64, n_layers=2, d_ff=192)
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 400
    # every run: the tiny pretraining recipe with warmup over 10% of the steps
    optim: build.OptimizerConfig = dataclasses.replace(pre.Config().optim, warmup_steps=0, warmup_fraction=0.1)
    floor: float = 0.0  # uniform share kept in the re-mixed weights
    seeds: int = 2  # seeds for the final uniform-vs-remix comparison (the LOO runs use seed 0)
    accuracy_problems: int = 64

    def __post_init__(self):
        for n in self.source_names + self.probe_names:
            check(n in synthetic.SOURCES, f"unknown source {n!r}; known: {', '.join(synthetic.SOURCES)}")
        check(len(self.source_names) >= 2, "need at least two sources for leave-one-out")
        check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")

    @property
    def source_names(self) -> list[str]:
        return comma_list(self.sources)

    @property
    def probe_names(self) -> list[str]:
        return comma_list(self.probe_sources)


def _base(c: Config, sources: list[str], seed: int) -> pre.Config:
    return pre.Config(sources=",".join(sources), docs_per_source=c.docs_per_source, model=c.model,
                      seq_len=c.seq_len, batch_size=c.batch_size, optim=c.optim, seed=seed, accuracy_problems=0,
                      trainer=TrainerConfig(steps=c.steps, log_every=50, eval_every=0, checkpoint_every=c.steps,
                                            progress=False))


def _eval_sets(c: Config, tok, seed: int) -> dict[str, list[dict]]:
    """Capability probe {task: batches}: held-out problems of each probe task, loss on the answers only
    (bos + prompt carry no loss; response + eos do), so the irreducible randomness of prompts does not
    dilute it. The capability score is the mean over tasks (capabilities weighted equally, as Eq. 5's α
    is uniform over capabilities)."""
    sets = {}
    for n in c.probe_names:
        examples = []
        for p in synthetic.generate_sft(n, c.probe_docs_per_source, seed):
            prompt = tok.encode(p["prompt"], add_bos=True)
            resp = tok.encode(p["response"], add_eos=True)
            examples.append((np.asarray(prompt + resp, np.int32),
                             np.r_[np.zeros(len(prompt)), np.ones(len(resp))].astype(np.float32)))
        rows, _ = pipeline.pack_examples(examples, c.seq_len, tok.pad_id, truncate=False)
        sets[n] = pipeline.fixed_batches(rows, 64)
    return sets


def _run(c: Config, name: str, sources: list[str], seed: int, weights, evals, accuracy: bool = False) -> dict:
    """One training run in its own sub-run-dir (resumable); returns its final eval losses (cached)."""
    out_dir = os.path.join(c.run_dir, name)
    done = os.path.join(out_dir, "result.json")
    if os.path.exists(done):
        return json.loads(open(done).read())
    t0 = time.perf_counter()
    cfg, params, tok, res = pre.train_tiny_decoder(_base(c, sources, seed), out_dir, weights, evals)
    last = res.history[-1]
    result = {k[len("eval/"):]: v for k, v in last.items() if k.startswith("eval/")}
    for split in ("probe", "test"):  # capability score: mean over tasks
        result[split] = float(np.mean([v for k, v in result.items() if k.startswith(split + "_")]))
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if accuracy and c.accuracy_problems:
        result["arithmetic_exact_match"] = pre.arithmetic_accuracy(cfg, params, tok, c.accuracy_problems)
    with open(done, "w") as fh:
        json.dump(result, fh)
    print(f"  run {name}: {result}", flush=True)
    return result


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    tok = CharTokenizer()
    names = c.source_names
    evals = {f"{split}_{task}": batches for split, seed in (("probe", 5000), ("test", 7000))
             for task, batches in _eval_sets(c, tok, seed).items()}

    # 1-2: full uniform run and leave-one-out runs (seed 0), probe loss -> ΔL_j (Eq. 1)
    full = _run(c, "uniform_seed0", names, 0, None, evals, accuracy=True)
    loo = {j: _run(c, f"loo_without_{j}", [n for n in names if n != j], 0, None, evals) for j in names}
    deltas = mixture.loo_deltas(full["probe"], {j: r["probe"] for j, r in loo.items()})  # on the mean probe
    cap_deltas = {t: mixture.loo_deltas(full[f"probe_{t}"], {j: r[f"probe_{t}"] for j, r in loo.items()})
                  for t in c.probe_names}
    # 3: weights from positive impact, normalised per capability then averaged over capabilities
    weights = mixture.weights_from_capability_deltas(cap_deltas, c.floor)
    # 4: re-mixed vs uniform on the separate test set, over seeds
    uniform_test, remix_test, uniform_acc, remix_acc, per_task_u, per_task_r = [], [], [], [], [], []
    for seed in range(c.seeds):
        u = full if seed == 0 else _run(c, f"uniform_seed{seed}", names, seed, None, evals, accuracy=True)
        r = _run(c, f"remix_seed{seed}", names, seed, weights, evals, accuracy=True)
        uniform_test.append(u["test"])
        remix_test.append(r["test"])
        per_task_u.append({t: round(u[f"test_{t}"], 4) for t in c.probe_names})
        per_task_r.append({t: round(r[f"test_{t}"], 4) for t in c.probe_names})
        uniform_acc.append(u.get("arithmetic_exact_match", float("nan")))
        remix_acc.append(r.get("arithmetic_exact_match", float("nan")))

    summary = {
        **{f"delta_L/{j}": round(v, 4) for j, v in deltas.items()},
        **{f"delta_L/{t}/{j}": round(v, 4) for t, d in cap_deltas.items() for j, v in d.items()},
        **{f"weight/{j}": round(v, 4) for j, v in weights.items()},
        "probe_loss_uniform": round(full["probe"], 4),
        "test_loss_uniform": [round(x, 4) for x in uniform_test],
        "test_loss_remix": [round(x, 4) for x in remix_test],
        "test_loss_uniform_mean": float(np.mean(uniform_test)),
        "test_loss_remix_mean": float(np.mean(remix_test)),
        "test_loss_per_task_uniform": per_task_u,
        "test_loss_per_task_remix": per_task_r,
        "remix_beats_uniform_every_seed": bool(all(r < u for r, u in zip(remix_test, uniform_test))),
        "arithmetic_exact_match_uniform": uniform_acc,
        "arithmetic_exact_match_remix": remix_acc,
        "steps_per_run": c.steps,
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].bar(names, [deltas[n] for n in names])
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_title("LOO impact ΔL_j = L(θ_-j) − L(θ) on probe set")
    axes[1].bar(names, [weights[n] for n in names], color="tab:green")
    axes[1].set_title("resampling weights")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
    x = np.arange(c.seeds)
    axes[2].bar(x - 0.2, uniform_test, 0.4, label="uniform")
    axes[2].bar(x + 0.2, remix_test, 0.4, label="re-mixed")
    axes[2].set_xticks(x, [f"seed {s}" for s in range(c.seeds)])
    axes[2].set_ylim(min(remix_test + uniform_test) * 0.9, max(remix_test + uniform_test) * 1.05)
    axes[2].set_title("held-out test loss (capability tasks)")
    axes[2].legend()
    save_figure(fig, c.run_dir, "mixture")
    write_summary(c.run_dir, summary, "mobilellm_data_mixture")
    return summary
