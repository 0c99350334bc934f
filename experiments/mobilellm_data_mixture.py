"""MobileLLM-R1's data recipe on generated sources: leave-one-out vs influence-based mixing, then the mid-training
data-model co-evolution, with RankMe beside (arXiv 2509.24945 §5-6, App. B; formulas in `jaxllm.data.mixture`).

Sources (jaxllm.data.synthetic): arithmetic (worked traces), copy, reverse (useful), noise (useless) and
wrong_answers (harmful: copy/reverse prompts answered with an unrelated word). The capabilities c, and the
domains, are the probe tasks arithmetic, copy and reverse; the probe set D^P_c is held-out problems of task c
(loss on the answers), and a second held-out set (another seed) is the test set every number is reported on.

1. LOO (Eq. 1), arm `loo`: θ on all sources sampled equally, θ_{−j} without source j (seed 0);
   ΔL_{c,j} = L_c(θ_{−j}) − L_c(θ); weights: per capability positive ΔL normalised, averaged over capabilities.
2. Influence (Eqs. 2-6), arm `influence`: one domain-specialised model θ_c per capability, trained on task c's
   corpus alone (seed 0), at T evenly spaced checkpoints θ_{c,t}. For `influence_samples` documents x_i of every
   source, I(x_i; θ_{c,t}) = η_t ∇L(D^P_c; θ_{c,t})·∇ℓ(x_i; θ_{c,t}) from per-sample gradients (vmap(grad),
   optionally a random projection to `projection_dim`): self-influence for the source of domain c, cross-
   influence for the others (Eqs. 3-4); joint with α_{c,t} ∝ t (Eq. 5); source weights w_g ∝ max(ρ_g, 0) (Eq. 6).
3. Pretraining with each arm's weights (uniform, loo, influence) over `seeds`, evaluated on the test set.
4. Mid-training co-evolution (Eqs. 7-8) from each seed's influence-weighted model θ_0, on a fresh pool D_raw:
   stage k computes I(x_i; θ_{k−1}) with the current model against every probe set (Eq. 5 with T = 1), keeps
   I > 0 (Eq. 7), re-weights the sources by Eq. 6 over the kept data and mid-trains θ_k (Eq. 8), for
   `mid_stages` stages. Control: the same stages on the unfiltered pool, uniformly mixed; its stage-2 influence
   is measured too, so a narrowing histogram can be told from the effect of training longer.
RankMe (App. B) of every final model: of its final hidden states on the test set, and of its tied embedding.

    python -m experiments mobilellm_data_mixture                      # every arm, 3 seeds (see docs/results/mobilellm.md)
    python -m experiments mobilellm_data_mixture arms=uniform,influence seeds=1 mid_stages=0   # quick look
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import numpy as np

from experiments import mobilellm_tiny_pretrain as pre
from jaxllm.config import check, check_choice, comma_list
from jaxllm.data import mixture, pipeline, synthetic
from jaxllm.data.tokenizers import CharTokenizer
from jaxllm.models import Model
from jaxllm.models import transformer as tfm
from jaxllm.optim import build
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import eval_loss, lm_task, next_token_loss, weighted_loss_sum

ARMS = ("uniform", "loo", "influence")
PROBE_SEED, TEST_SEED, MID_POOL_SEED, SKETCH_SEED = 5000, 7000, 9000, 1234


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    sources: str = "arithmetic,copy,reverse,noise,wrong_answers"
    probe_sources: str = "arithmetic,copy,reverse"  # the capabilities (probe / test tasks) and the domains
    arms: str = "uniform,loo,influence"  # pretraining mixtures compared over seeds
    docs_per_source: int = 2000
    probe_docs_per_source: int = 100
    model: tfm.TransformerConfig = dataclasses.replace(pre.Config().model, d_model=64, n_layers=2, d_ff=192)
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 400
    # every pretraining run: the tiny pretraining recipe with warmup over 10% of the steps
    optim: build.OptimizerConfig = dataclasses.replace(pre.Config().optim, warmup_steps=0, warmup_fraction=0.1)
    floor: float = 0.0  # uniform share kept in the LOO and influence weights
    seeds: int = 3  # seeds of the final comparison (the LOO runs and the domain models use seed 0)
    accuracy_problems: int = 64
    # influence (Eqs. 2-6)
    domain_steps: int = 0  # steps of each domain-specialised model; 0: `steps`
    checkpoints: int = 10  # T (paper: 10): at domain_steps // T, 2·domain_steps // T, ...
    influence_samples: int = 128  # scored documents x_i per source
    sample_len: int = 64  # one scored document: bos + text + eos, padded to this many tokens
    projection_dim: int = 0  # k > 0: gradients through a fixed random projection to k dimensions; 0: exact
    projection: str = "rademacher"
    projection_check_dim: int = 128  # with exact influence: also estimate it at this k at the last checkpoint
    grad_chunk: int = 32  # samples per vmap(grad) call
    # mid-training co-evolution (Eqs. 7-8), from each seed's influence-weighted model
    mid_stages: int = 2  # paper: "two stages suffice"; 0 skips mid-training
    mid_steps: int = 150  # per stage
    mid_pool_per_source: int = 400  # D_raw: fresh documents per source
    mid_lr: float = 1e-3  # peak, decaying linearly to 0 (paper: mid-training LR ~0.1x pretraining, decays to 0)

    def __post_init__(self):
        for n in self.source_names + self.probe_names:
            check(n in synthetic.SOURCES, f"unknown source {n!r}; known: {', '.join(synthetic.SOURCES)}")
        check(len(self.source_names) >= 2, "need at least two sources for leave-one-out")
        for a in self.arm_names:
            check_choice("arms", a, ARMS)
        check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        check(self.domain_steps >= 0, f"domain_steps must be >= 0, got {self.domain_steps}")
        check(self.checkpoints >= 1, f"checkpoints must be >= 1, got {self.checkpoints}")
        check(self.influence_samples >= 1, f"influence_samples must be >= 1, got {self.influence_samples}")
        check(2 <= self.sample_len <= self.model.max_seq_len,
              f"sample_len={self.sample_len} must lie in [2, model.max_seq_len={self.model.max_seq_len}]")
        check(self.projection_dim >= 0 and self.projection_check_dim >= 0, "projection dims must be >= 0")
        check_choice("projection", self.projection, mixture.SKETCHES)
        check(self.grad_chunk >= 1, f"grad_chunk must be >= 1, got {self.grad_chunk}")
        check(self.mid_stages >= 0 and self.mid_steps >= 1 and self.mid_pool_per_source >= 1 and self.mid_lr > 0,
              "mid_stages >= 0, mid_steps >= 1, mid_pool_per_source >= 1 and mid_lr > 0 are required")
        check(self.mid_stages == 0 or "influence" in self.arm_names,
              "mid-training starts from the influence-weighted model: add influence to arms or set mid_stages=0")

    @property
    def source_names(self) -> list[str]:
        return comma_list(self.sources)

    @property
    def probe_names(self) -> list[str]:
        return comma_list(self.probe_sources)

    @property
    def arm_names(self) -> list[str]:
        return comma_list(self.arms)

    @property
    def domain_train_steps(self) -> int:
        return self.domain_steps or self.steps

    @property
    def mid_optim(self) -> build.OptimizerConfig:
        return dataclasses.replace(self.optim, learning_rate=self.mid_lr, warmup_steps=0, warmup_fraction=0.0,
                                   min_lr_ratio=0.0)


# ----------------------------------------------------------------------------------------------------------
# Losses (hashable, so that every run and every influence pass shares one compilation per shape).


@dataclasses.dataclass(frozen=True)
class SequenceLoss:
    """ℓ(x_i; θ): mean next-token loss of one document {tokens [L], loss_mask [L]}."""

    cfg: tfm.TransformerConfig

    def __call__(self, params, sample):
        return next_token_loss(Model(self.cfg), params, {k: v[None] for k, v in sample.items()})[0]


@dataclasses.dataclass(frozen=True)
class ProbeLossSum:
    """(Σ masked token losses, Σ mask) of a probe batch: its mean over batches is L(D^P_c; θ)."""

    cfg: tfm.TransformerConfig

    def __call__(self, params, batch):
        return weighted_loss_sum(Model(self.cfg), params, batch)


@functools.lru_cache(maxsize=None)
def _task_parts(cfg: tfm.TransformerConfig, optim: build.OptimizerConfig, steps: int):
    """One loss, init and optimizer object per (model, optimizer, steps): the trainer's jitted step and init
    then compile once for the ~30 runs (each new closure would cost 10-25 s of compilation on this CPU)."""
    model = Model(cfg)

    def loss_fn(params, batch, rng):
        return next_token_loss(model, params, batch, None)

    return loss_fn, (lambda key: tfm.init_params(cfg, key)), optim.build(steps)


def _save_params(path: str, params) -> None:
    np.savez(path, *[np.asarray(x) for x in jax.tree.leaves(params)])


def _load_params(path: str, cfg: tfm.TransformerConfig):
    treedef = jax.tree.structure(jax.eval_shape(lambda k: tfm.init_params(cfg, k), jax.random.PRNGKey(0)))
    with np.load(path) as f:
        return jax.tree.unflatten(treedef, [f[f"arr_{i}"] for i in range(len(f.files))])


@functools.partial(jax.jit, static_argnums=0)
def _hidden(model: Model, params, batch):
    return model.forward(params, batch["tokens"][:, :-1], positions=batch["positions"][:, :-1],
                         segment_ids=batch["segment_ids"][:, :-1], compute_logits=False).hidden


def rankme_of(cfg: tfm.TransformerConfig, params, batches: list[dict]) -> dict[str, float]:
    """App. B's RankMe of the final hidden states at every real token of `batches`, and of the embedding."""
    z = [np.asarray(_hidden(Model(cfg), params, b))[np.asarray(b["segment_ids"])[:, :-1] > 0] for b in batches]
    return {"rankme_hidden": mixture.rankme(np.concatenate(z)), "rankme_embed": mixture.rankme(params["embed"])}


# ----------------------------------------------------------------------------------------------------------
# Data.


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


def scored_samples(docs: list[dict], tok, length: int) -> tuple[dict, np.ndarray]:
    """Documents as influence samples {tokens, loss_mask} [N, length] (bos + text + eos, padded, truncated if
    longer) and their lengths s_i (number of predicted tokens) [N]."""
    tokens = np.full((len(docs), length), tok.pad_id, np.int32)
    mask = np.zeros((len(docs), length), np.float32)
    for i, d in enumerate(docs):
        ids = tok.encode(d["text"], add_bos=True, add_eos=True)[:length]
        tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1.0
    return {"tokens": tokens, "loss_mask": mask}, mask.sum(1) - 1.0


def _by_source(values: np.ndarray, names: list[str], n_each: int) -> dict[str, np.ndarray]:
    return {n: values[i * n_each:(i + 1) * n_each] for i, n in enumerate(names)}


def _pack(c: Config, tok, docs: dict[str, list[dict]], weights) -> tuple[dict, dict]:
    """Packed rows of the sources with a positive weight and at least one row of tokens, weights restricted."""
    rows, kept = {}, {}
    for n, d in docs.items():
        if (weights is None or weights.get(n, 0.0) > 0) and d:
            try:
                rows[n] = pipeline.pack_documents(d, tok, c.seq_len)
            except pipeline.DataError:  # fewer tokens than one row survived the filter
                continue
            kept[n] = 1.0 if weights is None else weights[n]
    return rows, kept


# ----------------------------------------------------------------------------------------------------------
# Runs (each in its own sub-run-dir, resumable: result.json and params.npz mark it done).


def _run(c: Config, name: str, rows: dict, weights, seed: int, evals: dict, steps: int, optim, init=None,
         snapshot_every: int = 0, accuracy: bool = False) -> dict:
    out_dir = os.path.join(c.run_dir, name)
    done = os.path.join(out_dir, "result.json")
    if os.path.exists(done):
        return json.loads(open(done).read())
    t0 = time.perf_counter()
    cfg = c.model
    loss_fn, init_fn, opt = _task_parts(cfg, optim, steps)
    batches = pipeline.mixed_batches(rows, c.batch_size, weights, seed=seed)
    task = lm_task(cfg, opt, batches, init_params=init_fn if init is None else (lambda key: init))
    task.loss_fn = loss_fn
    task.eval_fn = lambda params: {k: eval_loss(Model(cfg), params, v) for k, v in evals.items()}
    if snapshot_every:  # θ_t at t·snapshot_every for the influence checkpoints (log steps call log_fn)
        os.makedirs(os.path.join(out_dir, "snapshots"), exist_ok=True)

        def snapshot(params, step):
            if step and step % snapshot_every == 0:
                _save_params(os.path.join(out_dir, "snapshots", f"step_{step}.npz"), params)
            return {}

        task.log_fn = snapshot
    trainer = TrainerConfig(steps=steps, log_every=snapshot_every or 50, eval_every=0, checkpoint_every=steps,
                            progress=False)
    res = train(trainer, task, out_dir, seed=seed)
    params = res.state.params
    result = {k[len("eval/"):]: v for k, v in res.history[-1].items() if k.startswith("eval/")}
    for split in ("probe", "test"):  # capability score: mean over tasks
        result[split] = float(np.mean([v for k, v in result.items() if k.startswith(split + "_")]))
    result.update(rankme_of(cfg, params, [b for k, v in evals.items() if k.startswith("test_") for b in v]))
    if accuracy and c.accuracy_problems:
        result["arithmetic_exact_match"] = pre.arithmetic_accuracy(cfg, params, CharTokenizer(), c.accuracy_problems)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    _save_params(os.path.join(out_dir, "params.npz"), params)
    with open(done, "w") as fh:
        json.dump(result, fh)
    print(f"  run {name}: {result}", flush=True)
    return result


def _sketch(c: Config, dim: int):
    template = jax.eval_shape(lambda k: tfm.init_params(c.model, k), jax.random.PRNGKey(0))
    return mixture.gradient_sketch(template, dim, jax.random.PRNGKey(SKETCH_SEED), c.projection)


def model_influence(c: Config, params, samples: dict, probe_sets: list[list[dict]], lr: float, sketch=None):
    """I(x_i, D^P_c; θ) [C, N] for every probe set c at one model θ (Eq. 2, first order)."""
    probe_CD = np.stack([mixture.mean_gradient(ProbeLossSum(c.model), params, p, sketch) for p in probe_sets])
    return mixture.influence_scores(SequenceLoss(c.model), params, samples, probe_CD, lr, sketch, c.grad_chunk)


def domain_influence(c: Config, tok, evals: dict, samples: dict) -> tuple[np.ndarray, dict]:
    """Eqs. 3-4: I(x_i; θ_{c,t}) [C, T, N] on the domain-specialised models' checkpoints (cached), and
    {"projection_check": Pearson r and sign agreement of the k-dim estimate with the exact value at the last
    checkpoint, "gradients_wall_s": seconds of the influence passes}."""
    path = os.path.join(c.run_dir, "domain_influence.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["influence"], json.loads(str(f["meta"]))
    steps = c.domain_train_steps
    every = max(steps // c.checkpoints, 1)
    ckpt_steps = list(range(every, steps + 1, every))[: c.checkpoints]
    schedule = c.optim.lr(c.optim.learning_rate, steps)
    sketch = _sketch(c, c.projection_dim) if c.projection_dim else None
    inf, check_r, grad_s = [], {}, 0.0
    for cap in c.probe_names:
        rows = pre.packed_sources([cap], tok, c.docs_per_source, c.seq_len, 0)
        _run(c, f"domain_{cap}", rows, None, 0, {f"test_{cap}": evals[f"test_{cap}"],
                                                  f"probe_{cap}": evals[f"probe_{cap}"]},
             steps, c.optim, snapshot_every=every)
        per_t, t0 = [], time.perf_counter()
        for s in ckpt_steps:
            params = _load_params(os.path.join(c.run_dir, f"domain_{cap}", "snapshots", f"step_{s}.npz"), c.model)
            lr = float(schedule(s)) if callable(schedule) else float(schedule)  # η_t, the step size at θ_t
            per_t.append(model_influence(c, params, samples, [evals[f"probe_{cap}"]], lr, sketch)[0])
        inf.append(per_t)
        grad_s += time.perf_counter() - t0
        if sketch is None and c.projection_check_dim:
            est = model_influence(c, params, samples, [evals[f"probe_{cap}"]], lr, _sketch(c, c.projection_check_dim))
            exact = per_t[-1]
            check_r[cap] = {"pearson": float(np.corrcoef(est[0], exact)[0, 1]),
                            "sign_agreement": float(np.mean(np.sign(est[0]) == np.sign(exact)))}
    inf, meta = np.asarray(inf), {"projection_check": check_r, "gradients_wall_s": round(grad_s, 1)}
    np.savez(path, influence=inf, meta=json.dumps(meta))
    return inf, meta


# ----------------------------------------------------------------------------------------------------------
# The experiment.


def _stats(xs) -> dict:
    return {"mean": float(np.mean(xs)), "min": float(np.min(xs)), "max": float(np.max(xs))}


def _hist_stats(values: np.ndarray) -> dict:
    q = [float(x) for x in np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])]
    return {"frac_positive": float(np.mean(values > 0)), "mean": float(values.mean()), "std": float(values.std()),
            "q05": q[0], "q25": q[1], "median": q[2], "q75": q[3], "q95": q[4]}


def midtrain(c: Config, tok, evals: dict, seed: int, theta0) -> dict:
    """Eqs. 7-8 for `mid_stages` stages from θ_0, and the unfiltered control; returns results and influences."""
    names, caps = c.source_names, c.probe_names
    pool = {n: synthetic.generate(n, c.mid_pool_per_source, MID_POOL_SEED + seed) for n in names}
    samples, lengths = scored_samples([d for n in names for d in pool[n]], tok, c.sample_len)
    lengths_g = _by_source(lengths, names, c.mid_pool_per_source)
    probe_sets = [evals[f"probe_{t}"] for t in caps]
    out = {"coevolved": [], "raw": [], "influence": {}, "kept": [], "weights": []}

    def stage_influence(tag: str, params) -> np.ndarray:
        path = os.path.join(c.run_dir, f"mid_influence_{tag}.npy")
        if not os.path.exists(path):  # Eq. 5 with the current model only (T = 1): uniform over capabilities
            inf = model_influence(c, params, samples, probe_sets, c.mid_lr)
            np.save(path, mixture.joint_influence(inf[:, None, :]))
        return np.load(path)

    theta = {"coevolved": theta0, "raw": theta0}
    raw_rows, _ = _pack(c, tok, pool, None)
    for k in range(1, c.mid_stages + 1):
        inf = stage_influence(f"seed{seed}_stage{k}", theta["coevolved"])
        out["influence"][f"stage{k}"] = inf
        keep, w = mixture.coevolution_stage(_by_source(inf, names, c.mid_pool_per_source), lengths_g, c.floor)
        rows, w = _pack(c, tok, {n: [d for d, m in zip(pool[n], keep[n]) if m] for n in names}, w)
        if not rows:
            raise ValueError(f"mid-training stage {k}, seed {seed}: the kept documents fill no row of seq_len="
                             f"{c.seq_len} tokens in any source; raise mid_pool_per_source={c.mid_pool_per_source}")
        out["kept"].append({n: float(keep[n].mean()) for n in names})
        out["weights"].append({n: round(w.get(n, 0.0) / sum(w.values()), 4) for n in names})
        if k > 1:  # the control's influence at the same stage: more training, no filtering
            out["influence"][f"stage{k}_raw"] = stage_influence(f"seed{seed}_stage{k}_raw", theta["raw"])
        for arm, r, ww in (("coevolved", rows, w), ("raw", raw_rows, None)):
            name = f"mid_{arm}_seed{seed}_stage{k}"
            out[arm].append(_run(c, name, r, ww, seed, evals, c.mid_steps, c.mid_optim, init=theta[arm],
                                 accuracy=k == c.mid_stages))
            theta[arm] = _load_params(os.path.join(c.run_dir, name, "params.npz"), c.model)
    return out


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    tok = CharTokenizer()
    names, caps = c.source_names, c.probe_names
    evals = {f"{split}_{task}": batches for split, seed in (("probe", PROBE_SEED), ("test", TEST_SEED))
             for task, batches in _eval_sets(c, tok, seed).items()}
    packed: dict[int, dict] = {}

    def rows_of(seed: int) -> dict:
        if seed not in packed:
            packed[seed] = pre.packed_sources(names, tok, c.docs_per_source, c.seq_len, seed)
        return packed[seed]

    pretrain = functools.partial(_run, c, evals=evals, steps=c.steps, optim=c.optim)
    summary, weights, cost = {"steps_per_run": c.steps}, {"uniform": None}, {}

    # 1. LOO (Eq. 1): full uniform run and leave-one-out runs (seed 0)
    if "loo" in c.arm_names:
        full = pretrain("uniform_seed0", rows_of(0), None, 0, accuracy=True)
        loo = {j: pretrain(f"loo_without_{j}", {n: r for n, r in rows_of(0).items() if n != j}, None, 0)
               for j in names}
        deltas = mixture.loo_deltas(full["probe"], {j: r["probe"] for j, r in loo.items()})
        cap_deltas = {t: mixture.loo_deltas(full[f"probe_{t}"], {j: r[f"probe_{t}"] for j, r in loo.items()})
                      for t in caps}
        weights["loo"] = mixture.weights_from_capability_deltas(cap_deltas, c.floor)
        cost["loo"] = round(full["wall_s"] + sum(r["wall_s"] for r in loo.values()), 1)  # 1 + |sources| runs
        summary.update({f"delta_L/{j}": round(v, 4) for j, v in deltas.items()})
        summary.update({f"delta_L/{t}/{j}": round(v, 4) for t, d in cap_deltas.items() for j, v in d.items()})
        summary.update({f"weight/{j}": round(v, 4) for j, v in weights["loo"].items()})

    # 2. influence (Eqs. 2-6): domain models, per-sample influence at T checkpoints, joint, Eq. 6 weights
    if "influence" in c.arm_names:
        docs = [d for n in names for d in synthetic.generate(n, c.influence_samples, 0)]  # = training docs
        samples, lengths = scored_samples(docs, tok, c.sample_len)
        inf_CTN, meta = domain_influence(c, tok, evals, samples)
        proj_check = meta["projection_check"]
        joint = mixture.joint_influence(inf_CTN)
        lengths_g = _by_source(lengths, names, c.influence_samples)
        weights["influence"] = mixture.group_weights(_by_source(joint, names, c.influence_samples), lengths_g,
                                                     {n: float(v.sum()) for n, v in lengths_g.items()}, c.floor)
        domain_runs = sum(json.load(open(os.path.join(c.run_dir, f"domain_{t}", "result.json")))["wall_s"]
                          for t in caps)
        cost["influence"] = round(domain_runs + meta["gradients_wall_s"], 1)  # |capabilities| runs + gradients
        t = np.arange(1, inf_CTN.shape[1] + 1)
        per_cap = np.einsum("t,ctn->cn", t / t.sum(), inf_CTN)  # α ∝ t within each capability
        for ci, cap in enumerate(caps):  # self- (source == domain) and cross-capability influence ρ_{c,g}
            for n, v in _by_source(per_cap[ci], names, c.influence_samples).items():
                summary[f"influence/{cap}/{n}"] = float(np.sum(v * lengths_g[n]) / lengths_g[n].sum())
        summary.update({f"influence_weight/{j}": round(v, 4) for j, v in weights["influence"].items()})
        summary["projection_check"] = {"k": c.projection_check_dim, **proj_check} if proj_check else {}
    summary["weights_wall_s"] = cost

    # 3. the pretraining arms over seeds
    arms = {a: [pretrain(f"{'remix' if a == 'loo' else a}_seed{s}", rows_of(s), weights[a], s, accuracy=True)
                for s in range(c.seeds)] for a in c.arm_names}

    # 4. mid-training co-evolution from each seed's influence-weighted model
    mids = []
    for s in range(c.seeds if c.mid_stages else 0):
        theta0 = _load_params(os.path.join(c.run_dir, f"influence_seed{s}", "params.npz"), c.model)
        mids.append(midtrain(c, tok, evals, s, theta0))
    if mids:
        arms["influence+mid_raw"] = [m["raw"][-1] for m in mids]
        arms["influence+mid_coevolved"] = [m["coevolved"][-1] for m in mids]
        for k in range(1, c.mid_stages + 1):
            for tag in (f"stage{k}", f"stage{k}_raw"):
                if tag in mids[0]["influence"]:
                    summary[f"mid_influence/{tag}"] = [_hist_stats(m["influence"][tag]) for m in mids]
            summary[f"mid_kept_fraction/stage{k}"] = [m["kept"][k - 1] for m in mids]
            summary[f"mid_weights/stage{k}"] = [m["weights"][k - 1] for m in mids]

    for a, results in arms.items():
        for t in caps:
            summary[f"test_ppl/{a}/{t}"] = _stats([np.exp(r[f"test_{t}"]) for r in results])
        summary[f"test_loss/{a}"] = _stats([r["test"] for r in results])
        for key in ("rankme_hidden", "rankme_embed", "arithmetic_exact_match"):
            summary[f"{key}/{a}"] = _stats([r.get(key, float("nan")) for r in results])
    summary["test_loss_uniform"] = [round(r["test"], 4) for r in arms.get("uniform", [])]
    summary["test_loss_remix"] = [round(r["test"], 4) for r in arms.get("loo", [])]
    summary["test_loss_influence"] = [round(r["test"], 4) for r in arms.get("influence", [])]
    everything = [r for results in arms.values() for r in results]
    ranks = [np.argsort(np.argsort(v)) for v in ([r["rankme_hidden"] for r in everything],
                                                  [r["test"] for r in everything])]
    summary["spearman_rankme_hidden_vs_test_loss"] = float(np.corrcoef(*ranks)[0, 1]) if len(everything) > 2 else None
    _plots(c, summary, weights, arms, mids)
    write_summary(c.run_dir, summary, "mobilellm_data_mixture")
    return summary


def _plots(c: Config, summary: dict, weights: dict, arms: dict, mids: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, caps = c.source_names, c.probe_names
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    methods = [m for m in ("loo", "influence") if m in weights]
    x = np.arange(len(names))
    for i, m in enumerate(methods):
        axes[0].bar(x + (i - 0.5 * (len(methods) - 1)) * 0.4, [weights[m][n] for n in names], 0.4, label=m)
    axes[0].axhline(1 / len(names), color="k", lw=0.8, ls=":", label="uniform")
    axes[0].set_xticks(x, names, rotation=30)
    axes[0].set_title("source weights")
    axes[0].legend()
    if "influence" in weights:
        mat = np.asarray([[summary[f"influence/{t}/{n}"] for t in caps] for n in names])
        lim = np.abs(mat).max()
        im = axes[1].imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        axes[1].set_xticks(range(len(caps)), [f"θ_{t}" for t in caps])
        axes[1].set_yticks(range(len(names)), names)
        axes[1].set_title("ρ_{c,g}: self (diagonal) / cross influence")
        fig.colorbar(im, ax=axes[1])
    width = 0.8 / len(arms)
    for i, (a, _) in enumerate(arms.items()):
        st = [summary[f"test_ppl/{a}/{t}"] for t in caps]
        mean = np.asarray([s["mean"] for s in st])
        err = np.asarray([[s["mean"] - s["min"] for s in st], [s["max"] - s["mean"] for s in st]])
        axes[2].bar(np.arange(len(caps)) + (i - 0.5 * (len(arms) - 1)) * width, mean, width, yerr=err, label=a,
                    capsize=2)
    axes[2].set_xticks(range(len(caps)), caps)
    axes[2].set_title(f"test perplexity of the answers ({c.seeds} seeds: mean, min-max)")
    axes[2].legend(fontsize=7)
    save_figure(fig, c.run_dir, "mixture")

    if mids:
        tags = [t for t in ("stage1", "stage2", "stage2_raw") if t in mids[0]["influence"]]
        fig, axes = plt.subplots(1, len(mids), figsize=(5 * len(mids), 3.8), squeeze=False)
        for ax, s, m in zip(axes[0], range(len(mids)), mids):
            vals = np.concatenate([m["influence"][t] for t in tags])
            bins = np.linspace(np.quantile(vals, 0.005), np.quantile(vals, 0.995), 60)
            for t in tags:
                ax.hist(np.clip(m["influence"][t], bins[0], bins[-1]), bins, histtype="step", lw=1.4,
                        label=f"{t}: {np.mean(m['influence'][t] > 0):.0%} > 0")
            ax.axvline(0, color="k", lw=0.8)
            ax.set_title(f"mid-training influence I(x_i; θ_k), seed {s}")
            ax.set_xlabel("joint influence (Eq. 5, T = 1)")
            ax.legend(fontsize=7)
        save_figure(fig, c.run_dir, "influence_hist")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for a, results in arms.items():
        ax.scatter([r["rankme_hidden"] for r in results], [r["test"] for r in results], label=a)
    ax.set_xlabel("RankMe of the final hidden states (test set)")
    ax.set_ylabel("mean test answer loss (nats/char)")
    ax.set_title(f"RankMe vs loss, Spearman {summary['spearman_rankme_hidden_vs_test_loss']:.2f}"
                 if summary["spearman_rankme_hidden_vs_test_loss"] is not None else "RankMe vs loss")
    ax.legend(fontsize=7)
    save_figure(fig, c.run_dir, "rankme")
