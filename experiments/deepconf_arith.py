"""DeepConf (arXiv 2508.15260) at toy scale: confidence-filtered voting over traces of a tiny decoder on modular chains.

A tiny decoder (the one Transformer, Llama flavour) is trained here on chains of modular arithmetic with a worked
trace and a `\\boxed{}` answer (`jaxllm.data.tasks.modular_chain`, one token per residue), stopped while one trace
is right only part of the time. Then, as in the paper (deepconf_lsp.md A6), a pool of traces is sampled per test
problem (the jitted trace sampler, T = 1) and every method is evaluated on resampled K-subsets of the pool:

    pass@1, majority@K, confidence-weighted votes (mean / bottom-10% / lowest / tail) × keep fraction {1, 0.9, 0.1},
    online DeepConf-low (keep 0.1) and -high (keep 0.9): accuracy and generated tokens against majority@K,
    the official code's online variant (no consensus stop), and how well each statistic separates right from
    wrong traces (AUROC within a problem, and pooled), with histograms.

Finally the real online run (warm-up, early stops inside the jitted loop, refilled slots, consensus stop on the host)
is checked against the pool simulation on a few problems: every trace it produced must equal the pool's trace cut
where the simulation cuts it.

    python -m experiments deepconf_arith                      # ~10 min on 2 idle cores
    python -m experiments deepconf_arith problems=16 pool=64 budgets=16,32,64   # a quick look
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import check, comma_list
from jaxllm.data.tasks import modular_chain as mc
from jaxllm.inference import deepconf as dc
from jaxllm.inference.online import deepconf_online
from jaxllm.models import Model, get_preset
from jaxllm.sampling.autoregressive import SamplingConfig, TraceSamplingConfig, generate_traces
from jaxllm.train import TrainerConfig, minibatches, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import lm_task

KEEPS = (1.0, 0.9, 0.1)


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    # task
    modulus: int = 31
    chain_steps: int = 8
    ops: str = "+-"
    max_operand: int = 9
    train_chains: int = 50_000
    # model and training: stopped on purpose at the first stage whose sampled pass@1 on held-out probe problems
    # reaches target_pass_at_1, so that one trace is right only part of the time (C1: 40-70 %)
    target_pass_at_1: float = 0.5
    stage_steps: int = 100
    probe_problems: int = 16
    probe_traces: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    trainer: TrainerConfig = TrainerConfig(steps=3000, log_every=100, checkpoint_every=100, progress=False)  # steps: the cap
    # sampling (the GPT-OSS setting: T = 1, no top-p; confidence from the untempered distribution)
    temperature: float = 1.0
    top_p: float = 1.0
    problems: int = 128
    pool: int = 256  # traces per problem
    slots: int = 256  # rows decoded together
    # DeepConf (paper: k = 20, window = tail = 2048 of 13k-29k-token traces, warm-up 16, tau 0.95)
    k: int = 20
    window: int = 4  # ≈ 14% of a 28-token trace, like 2048 of the paper's traces (a deviation, C1)
    tail: int = 4
    warmup: int = 16
    tau: float = 0.95
    budgets: str = "16,32,64,128"  # K
    repeats: int = 64  # resampled K-subsets per problem and K
    online_check_problems: int = 4  # problems run through the real online sampler
    online_check_slots: int = 32

    def __post_init__(self):
        check(self.problems >= 1 and self.pool >= 2, "problems must be >= 1 and pool >= 2")
        check(1 <= self.slots <= self.pool, f"slots={self.slots} must lie in [1, pool={self.pool}]")
        check(self.k <= self.modulus + len(mc.SYMBOLS), f"k={self.k} exceeds the vocabulary")
        check(all(self.warmup <= b <= self.pool for b in self.budget_list),
              f"budgets {self.budget_list} must lie in [warmup={self.warmup}, pool={self.pool}]")
        check(0 <= self.online_check_problems <= self.problems, "online_check_problems must be <= problems")
        check(self.temperature > 0, "temperature must be > 0 (traces must differ)")
        check(self.stage_steps >= 1 and self.trainer.checkpoint_every == self.stage_steps,
              f"trainer.checkpoint_every ({self.trainer.checkpoint_every}) must equal stage_steps ({self.stage_steps}): "
              "training resumes from the checkpoint of each stage")
        check(0.0 < self.target_pass_at_1 <= 1.0, f"target_pass_at_1 must lie in (0, 1], got {self.target_pass_at_1}")

    @property
    def budget_list(self) -> list[int]:
        return [int(b) for b in comma_list(self.budgets)]

    def deepconf(self, keep_fraction: float, tau: float | None = None) -> dc.DeepConfConfig:
        return dc.DeepConfConfig(k=self.k, window=self.window, tail=self.tail, warmup=self.warmup,
                                 tau=self.tau if tau is None else tau, keep_fraction=keep_fraction)


def model_for(c: Config) -> Model:
    v = mc.ChainVocab(c.modulus)
    return Model(get_preset("tiny_llama", vocab_size=v.size, d_model=c.d_model, n_layers=c.n_layers,
                            n_heads=c.n_heads, n_kv_heads=c.n_heads, head_dim=c.d_model // c.n_heads, d_ff=c.d_ff,
                            max_seq_len=2 * (3 * c.chain_steps + 4)))


def train_model(c: Config, run_dir: str):
    """Train in stages of `stage_steps` (each resumes from the last checkpoint) until the probe problems' sampled
    pass@1 reaches `target_pass_at_1` or `trainer.steps` are done. Constant LR after warm-up, so where the run
    stops does not change the schedule before it. Returns (model, TrainResult, [(step, probe pass@1)])."""
    chains = mc.generate(c.train_chains, c.chain_steps, c.modulus, c.seed, c.ops, c.max_operand)
    probes = mc.generate(c.probe_problems, c.chain_steps, c.modulus, c.seed + 20_000, c.ops, c.max_operand)
    model = model_for(c)
    sched = optax.join_schedules([optax.linear_schedule(0.0, c.lr, max(1, c.warmup_steps)), optax.constant_schedule(c.lr)],
                                 [max(1, c.warmup_steps)])
    opt = optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=c.weight_decay)
    task = lm_task(model, opt, minibatches(mc.training_rows(chains), c.batch_size, c.seed))
    probe_cfg = sampling_config(c, c.probe_traces, c.probe_traces)
    vocab, history, steps = mc.ChainVocab(c.modulus), [], 0
    while True:
        steps = min(steps + c.stage_steps, c.trainer.steps)
        result = train(dataclasses.replace(c.trainer, steps=steps), task, run_dir, seed=c.seed)
        right = 0
        for i in range(c.probe_problems):
            st = generate_traces(model, result.state.params, probes.prompts[i], jax.random.PRNGKey(i), probe_cfg)
            tok, n = np.asarray(st.tokens), np.asarray(st.lengths)
            want = dc.answer_key(str(int(probes.answers[i])))
            right += sum(dc.extract_answer(vocab.decode(tok[j, :n[j]])) is not None
                         and dc.answer_key(dc.extract_answer(vocab.decode(tok[j, :n[j]]))) == want
                         for j in range(c.probe_traces))
        history.append((steps, right / (c.probe_problems * c.probe_traces)))
        if history[-1][1] >= c.target_pass_at_1 or steps >= c.trainer.steps:
            return model, result, history


def sampling_config(c: Config, slots: int, traces: int) -> TraceSamplingConfig:
    s = SamplingConfig(max_new_tokens=3 * c.chain_steps + 4, temperature=c.temperature, top_p=c.top_p,
                       stop_tokens=(mc.EOS,), pad_id=mc.PAD)
    return TraceSamplingConfig(s, slots=slots, max_traces=traces, confidence_k=c.k, window=c.window)


def problem_key(c: Config, i: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(c.seed + 1), i)


def sample_pool(c: Config, model: Model, params, problems: mc.Chains) -> dict:
    """Per problem, `pool` complete traces (no stop): tokens, confidences, lengths, answer ids and correctness."""
    vocab = mc.ChainVocab(c.modulus)
    tc = sampling_config(c, c.slots, c.pool)
    N = tc.sampling.max_new_tokens
    P = len(problems.answers)
    out = dict(tokens=np.zeros((P, c.pool, N), np.int32), conf=np.zeros((P, c.pool, N), np.float32),
               logprobs=np.zeros((P, c.pool, N), np.float32),
               lengths=np.zeros((P, c.pool), np.int32), ids=np.zeros((P, c.pool), np.int32),
               valid=np.zeros((P, c.pool), bool), ref=np.zeros(P, np.int32), n_answers=np.zeros(P, np.int32))
    for i in range(P):
        st = generate_traces(model, params, problems.prompts[i], problem_key(c, i), tc)
        tok, lengths = np.asarray(st.tokens), np.asarray(st.lengths)
        texts = [vocab.decode(tok[j, :lengths[j]]) for j in range(c.pool)]
        ids, valid, keys, ref = dc.answer_ids(texts, reference=str(int(problems.answers[i])))
        out["tokens"][i], out["conf"][i], out["lengths"][i] = tok, np.asarray(st.confidence), lengths
        out["logprobs"][i] = np.asarray(st.logprobs)
        out["ids"][i], out["valid"][i], out["ref"][i], out["n_answers"][i] = ids, valid, ref, len(keys)
    out["correct"] = out["valid"] & (out["ids"] == out["ref"][:, None])
    return out


def pool_statistics(c: Config, pool: dict) -> dict:
    P, M, N = pool["conf"].shape
    mask = np.arange(N)[None, None] < pool["lengths"][..., None]
    st = dc.trace_confidence(jnp.asarray(pool["conf"].reshape(P * M, N)), jnp.asarray(mask.reshape(P * M, N)),
                             c.window, c.tail)
    return {name: np.asarray(getattr(st, name)).reshape(P, M) for name in dc.STATISTICS}


def subsets(c: Config, K: int) -> np.ndarray:
    """[problems, repeats, K] trace indices: K-subsets of the pool drawn without replacement, in random order."""
    rng = np.random.default_rng([c.seed, K])
    return np.argsort(rng.random((c.problems, c.repeats, c.pool)), axis=-1)[..., :K].astype(np.int32)


@partial(jax.jit, static_argnames=("num_answers",))
def _offline_accuracy(ids, valid, scores: dict, ref, num_answers: int) -> dict:
    """Accuracy of every offline method on [P, R, K] subsets (ref [P, 1])."""
    out = {"majority": jnp.mean(dc.majority_vote(ids, valid, num_answers).winner == ref)}
    for name in dc.STATISTICS:
        for keep in KEEPS:
            v = dc.filtered_vote(ids, scores[name], valid, keep, num_answers)
            out[f"{name}@{keep:g}"] = jnp.mean(v.winner == ref)
    return out


def offline_table(c: Config, pool: dict, stats: dict) -> dict:
    """{method: {K: accuracy}} with accuracy averaged over problems and repeats (the paper's protocol)."""
    A = int(pool["n_answers"].max()) or 1
    table: dict = {}
    for K in c.budget_list:
        idx = jnp.asarray(subsets(c, K))
        take = lambda x, idx=idx: jnp.take_along_axis(jnp.asarray(x)[:, None, :], idx, axis=-1)  # [P, R, K]
        acc = _offline_accuracy(take(pool["ids"]), take(pool["valid"]), {n: take(stats[n]) for n in dc.STATISTICS},
                                jnp.asarray(pool["ref"])[:, None], A)
        for name, v in acc.items():
            table.setdefault(name, {})[K] = float(v)
    return table


def online_table(c: Config, pool: dict) -> dict:
    """Pool simulation of online DeepConf-low/-high (paper) and of the official code (no consensus stop), per K:
    accuracy, generated tokens, and tokens saved against majority@K on the same subsets."""
    A = int(pool["n_answers"].max()) or 1
    P, M, N = pool["conf"].shape
    variants = {"deepconf_low": c.deepconf(0.1), "deepconf_high": c.deepconf(0.9),
                "code_low": c.deepconf(0.1, tau=2.0), "code_high": c.deepconf(0.9, tau=2.0)}
    run_all = jax.jit(jax.vmap(lambda conf, mask, ids, valid: {
        name: dc.online_deepconf(conf, mask, ids, valid, cfg, A) for name, cfg in variants.items()}))
    out: dict = {name: {} for name in variants}
    out["majority_tokens"] = {}
    for K in c.budget_list:
        idx = subsets(c, K)
        acc = {n: [] for n in variants}
        tok = {n: [] for n in variants}
        base = []
        for p in range(P):
            i = idx[p]  # [R, K]
            conf = jnp.asarray(pool["conf"][p][i])
            lengths = pool["lengths"][p][i]
            mask = jnp.asarray(np.arange(N)[None, None] < lengths[..., None])
            ids, valid = jnp.asarray(pool["ids"][p][i]), jnp.asarray(pool["valid"][p][i])
            base.append(lengths.sum(-1))
            for name, r in run_all(conf, mask, ids, valid).items():
                acc[name].append(np.asarray(r.winner) == pool["ref"][p])
                tok[name].append(np.asarray(r.tokens))
        base = np.stack(base)
        out["majority_tokens"][K] = float(base.mean())
        for name in variants:
            t = np.stack(tok[name])
            out[name][K] = {"acc": float(np.mean(acc[name])), "tokens": float(t.mean()),
                            "tokens_saved": float(1.0 - t.sum() / base.sum())}
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a right trace > score of a wrong one), ties counted half (Mann-Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        sel = both == v
        if sel.sum() > 1:
            ranks[sel] = ranks[sel].mean()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def separation(pool: dict, stats: dict) -> dict:
    """AUROC of each statistic for right vs wrong traces: within a problem (mean over problems having both), and
    over all traces pooled (mixes problem difficulty in). `min_sampled_logprob` (not DeepConf: the lowest
    log-probability of a token the trace actually drew) is a diagnostic of what the top-k confidence misses."""
    correct = pool["correct"]
    mask = np.arange(pool["logprobs"].shape[-1])[None, None] < pool["lengths"][..., None]
    extra = {"min_sampled_logprob": np.where(mask, pool["logprobs"], np.inf).min(-1)}
    out = {}
    for name in (*dc.STATISTICS, *extra):
        s = stats[name] if name in stats else extra[name]
        within = [auroc(s[p][correct[p]], s[p][~correct[p]]) for p in range(len(s)) if 0 < correct[p].sum() < len(s[p])]
        out[name] = {"within_problem": float(np.mean(within)) if within else float("nan"),
                     "pooled": auroc(s[correct], s[~correct]), "problems": len(within)}
    return out


def online_check(c: Config, model: Model, params, problems: mc.Chains, pool: dict) -> dict:
    """The real online run vs the pool simulation on the first traces of the pool, for a few problems."""
    vocab = mc.ChainVocab(c.modulus)
    K = max(c.budget_list)
    A = int(pool["n_answers"].max()) or 1
    N = pool["conf"].shape[-1]
    rows = []
    for p in range(c.online_check_problems):
        for name, keep in (("low", 0.1), ("high", 0.9)):
            cfg = c.deepconf(keep)
            run = deepconf_online(model, params, problems.prompts[p], problem_key(c, p), cfg,
                                  sampling_config(c, c.online_check_slots, K), K, vocab.decode)
            mask = jnp.asarray(np.arange(N)[None] < pool["lengths"][p, :K, None])
            sim = dc.online_deepconf(jnp.asarray(pool["conf"][p, :K]), mask, jnp.asarray(pool["ids"][p, :K]),
                                     jnp.asarray(pool["valid"][p, :K]), cfg, A)
            cut, _ = dc.online_stop(jnp.asarray(pool["conf"][p, :K]), mask, c.window, run.threshold)
            cut = np.where(np.arange(K) < c.warmup, pool["lengths"][p, :K], np.asarray(cut))
            same = [np.array_equal(r["tokens"], pool["tokens"][p, r["id"], :cut[r["id"]]]) for r in run.traces]
            right = run.answer == dc.answer_key(str(int(problems.answers[p])))
            rows.append(dict(problem=p, variant=name, traces_equal=float(np.mean(same)), traces=len(same),
                             real_tokens=run.tokens, simulated_tokens=int(sim.tokens), real_traces=run.traces_started,
                             simulated_traces=int(sim.traces), real_correct=bool(right),
                             simulated_correct=bool(int(sim.winner) == pool["ref"][p])))
    return {"rows": rows, "all_traces_equal": bool(all(r["traces_equal"] == 1.0 for r in rows)) if rows else None}


def plot_histograms(c: Config, pool: dict, stats: dict, sep: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    correct = pool["correct"]
    for ax, name in zip(axes, dc.STATISTICS):
        s = stats[name]
        bins = np.linspace(np.nanmin(s), np.nanmax(s), 40)
        ax.hist(s[correct], bins, density=True, alpha=0.6, label=f"right ({correct.sum()})")
        ax.hist(s[~correct], bins, density=True, alpha=0.6, label=f"wrong ({(~correct).sum()})")
        ax.set_title(f"{name}: AUROC {sep[name]['within_problem']:.3f} within / {sep[name]['pooled']:.3f} pooled",
                     fontsize=9)
        ax.set_xlabel("confidence")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"trace confidence, right vs wrong ({c.problems} problems x {c.pool} traces, window {c.window})")
    save_figure(fig, c.run_dir, "confidence_histograms")


def plot_accuracy(c: Config, offline: dict, online: dict, pass1: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ks = c.budget_list
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(Ks, [offline["majority"][k] for k in Ks], "k-o", label="majority@K")
    for name, style in (("lowest@0.1", "r-s"), ("tail@0.1", "m-^"), ("mean@0.1", "b-v"), ("lowest@0.9", "r--s")):
        a.plot(Ks, [offline[name][k] for k in Ks], style, label=name)
    a.plot(Ks, [online["deepconf_low"][k]["acc"] for k in Ks], "g-D", label="online DeepConf-low")
    a.plot(Ks, [online["deepconf_high"][k]["acc"] for k in Ks], "g--D", label="online DeepConf-high")
    a.axhline(pass1, color="gray", ls=":", label="pass@1")
    a.set_xscale("log", base=2)
    a.set_xlabel("K (traces)")
    a.set_ylabel("accuracy")
    a.legend(fontsize=7)
    for name, style in (("deepconf_low", "g-D"), ("deepconf_high", "g--D"), ("code_low", "c-o"), ("code_high", "c--o")):
        b.plot(Ks, [100 * online[name][k]["tokens_saved"] for k in Ks], style, label=name)
    b.set_xscale("log", base=2)
    b.set_xlabel("K (traces)")
    b.set_ylabel("tokens saved vs majority@K (%)")
    b.legend(fontsize=7)
    save_figure(fig, c.run_dir, "accuracy_vs_budget")


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    t0 = time.perf_counter()
    model, result, probe_history = train_model(c, c.run_dir)
    params = result.state.params
    t_train = time.perf_counter() - t0
    problems = mc.generate(c.problems, c.chain_steps, c.modulus, c.seed + 10_000, c.ops, c.max_operand)
    pool = sample_pool(c, model, params, problems)
    t_pool = time.perf_counter() - t0 - t_train
    stats = pool_statistics(c, pool)
    pass1 = float(pool["correct"].mean())
    offline = offline_table(c, pool, stats)
    online = online_table(c, pool)
    sep = separation(pool, stats)
    check_rows = online_check(c, model, params, problems, pool)
    Kmain = max(c.budget_list)
    losses = [r["loss"] for r in result.history if "loss" in r]
    summary = {
        "pass_at_1": pass1,
        "chance": 1.0 / c.modulus,
        "K": Kmain,
        "majority_acc": offline["majority"][Kmain],
        "deepconf_low_acc": online["deepconf_low"][Kmain]["acc"],
        "deepconf_low_tokens_saved": online["deepconf_low"][Kmain]["tokens_saved"],
        "deepconf_high_acc": online["deepconf_high"][Kmain]["acc"],
        "deepconf_high_tokens_saved": online["deepconf_high"][Kmain]["tokens_saved"],
        "offline_lowest_keep0.1_acc": offline["lowest@0.1"][Kmain],
        "offline_tail_keep0.1_acc": offline["tail@0.1"][Kmain],
        "offline_mean_keep0.1_acc": offline["mean@0.1"][Kmain],
        "auroc_within_mean": sep["mean"]["within_problem"],
        "auroc_within_lowest": sep["lowest"]["within_problem"],
        "auroc_within_bottom": sep["bottom"]["within_problem"],
        "auroc_within_tail": sep["tail"]["within_problem"],
        "auroc_within_min_sampled_logprob": sep["min_sampled_logprob"]["within_problem"],
        "mean_trace_tokens": float(pool["lengths"].mean()),
        "online_real_traces_equal_pool": check_rows["all_traces_equal"],
        "final_train_loss": losses[-1] if losses else float("nan"),
        "train_steps": probe_history[-1][0],
        "probe_pass_at_1": probe_history[-1][1],
        "train_s": round(t_train, 1),
        "pool_s": round(t_pool, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    tables = {"offline": {m: {str(k): v for k, v in row.items()} for m, row in offline.items()},
              "online": {m: {str(k): v for k, v in row.items()} for m, row in online.items()},
              "separation": sep, "online_check": check_rows["rows"], "probe_history": probe_history,
              "summary": summary}
    Path(c.run_dir, "tables.json").write_text(json.dumps(tables, indent=2, default=float) + "\n")
    plot_histograms(c, pool, stats, sep)
    plot_accuracy(c, offline, online, pass1)
    write_summary(c.run_dir, summary, "deepconf_arith")
    return summary
