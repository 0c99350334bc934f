"""Language Self-Play (arXiv 2509.07414) at toy scale: one tiny decoder as Challenger and Solver of integer expressions.

A tiny decoder (the one Transformer) is pretrained here, in the same command, to play the "instruct model" in two
formats (deepconf_lsp.md C2):

    challenger   <cp> <q> 3 + 4 * 2 <eos>          (it writes easy queries: 1–2 operations on digits)
    solver       <q> 3 + 4 * 2 <a> 1 1 <eos>        (it answers; right on easy queries, often wrong on 3–5 ops)

R(q, a) = 1 when the query is valid (it parses, ends within its bound, |value| ≤ max_abs_value) and the answer is
its value, from the safe arithmetic parser (`jaxllm.rewards.arithmetic`, never eval). An invalid query gets R = 0
for every answer, so V(q) = 0: the best a zero-sum Challenger can get, the exploit of this toy (the analogue of the
paper's "answer in Python"). R_Q is the 0–7 rubric of `jaxllm.rewards.judge.arithmetic_rubric` (a programmatic
stand-in for the reference-model judge of Box 3, a deviation).

Arms, at the same number of iterations, N·G and seeds (the paper's Figs. 2–3):
    base       the pretrained model, no RL
    grpo       solver-only GRPO on a fixed query set from the target distribution (1..max_ops operations), β = 0.05
    lsp_zero   zero-sum self-play
    lsp        self-play with R_Q
    lsp_grpo   LSP for the first half of the iterations, then GRPO for the second half

Logged per iteration (metrics.jsonl of each arm): challenger validity rate, operations per query, V(q), R_Q, KL to
π_Ref per role; sample queries every `sample_every` iterations; held-out solver accuracy (greedy, the paper's
τ = 0.01) by operation count before and after.

    python -m experiments lsp_arith          # all arms, 1 seed: ~13 min on the loaded 2 cores (pretraining ~6.5 of them, each RL arm ~1.5)
    python -m experiments lsp_arith arms=lsp_zero,lsp iterations=40 pretrain_steps=300   # a quick look
    python -m experiments lsp_arith init_from=runs/lsp_arith/<earlier run> seeds=1    # reuse its base model
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import check, comma_list
from jaxllm.models import Model, get_preset
from jaxllm.rewards.judge import arithmetic_rubric, arithmetic_value, parse_integer
from jaxllm.rl.loop import make_rl_task
from jaxllm.rl.lsp import LSPConfig, LSPFormat, LSPSource, check_lsp_trainer, lsp_loss_fn, pair_judge
from jaxllm.sampling.autoregressive import SamplingConfig, generate, pad_prompts
from jaxllm.train import TrainerConfig, minibatches, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import lm_task

SYMBOLS = ("<pad>", "<eos>", "<cp>", "<q>", "<a>", *"0123456789", "+", "-", "*", "(", ")")
PAD, EOS, CP, Q, A = range(5)
CHAR = {c: i for i, c in enumerate(SYMBOLS) if len(c) == 1}
ARMS = ("base", "grpo", "lsp_zero", "lsp", "lsp_grpo")


def encode(text: str) -> list[int]:
    return [CHAR[c] for c in text]


def decode(ids) -> str:
    """Text of role tokens; a special token inside a query or answer shows as '?' (and makes it invalid)."""
    return "".join(SYMBOLS[int(i)] if int(i) >= A + 1 else "?" for i in ids)


def count_ops(text: str) -> int:
    """Binary operators: +, -, * after a digit or ')' (a unary minus is not an operation)."""
    return sum(1 for i, c in enumerate(text) if c in "+-*" and i > 0 and (text[i - 1].isdigit() or text[i - 1] == ")"))


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    # a previous lsp_arith run directory whose pretrain/ checkpoint is the base model (its pretraining fields must
    # match: the trainer resumes that checkpoint at its last step and trains nothing); "": pretrain here
    init_from: str = ""
    seed: int = 0  # pretraining and data
    seeds: str = "0"  # RL seeds of every arm
    arms: str = ",".join(ARMS)
    # task
    max_abs_value: int = 99
    max_query_tokens: int = 16
    max_answer_tokens: int = 4  # sign, two digits, <eos>
    pretrain_ops: str = "1,2"  # the challenger and solver pretraining data: easy expressions
    max_ops: int = 4  # held-out buckets and the GRPO data go up to this many operations
    paren_prob: float = 0.2
    pretrain_examples: int = 20_000
    grpo_queries: int = 2000
    heldout_per_bucket: int = 128  # 64 in the first runs of docs/results/lsp.md
    heldout_samples: int = 4  # samples per held-out expression for the temperature-τ accuracy (0: greedy only)
    # model and pretraining
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    pretrain_steps: int = 1500
    pretrain_batch: int = 64
    pretrain_lr: float = 3e-3
    # self-play (LSPConfig: N, G, α_Ch, β, estimator, reward scales; self_reward is set per arm)
    # N = G = 16 and lr 1e-4 with a 10-iteration warm-up: at the first setting (N = G = 8, lr 3e-4, no warm-up;
    # `lsp.n_queries=8 lsp.group_size=8 lr=3e-4 lr_warmup=0 heldout_per_bucket=64`) even GRPO with data fell below
    # the base model (docs/results/lsp.md, "Diagnosis")
    lsp: LSPConfig = LSPConfig(n_queries=16, group_size=16)
    iterations: int = 120
    lr: float = 1e-4  # a tiny-model LR instead of the paper's 3e-6 for 3B (a deviation, C2)
    lr_warmup: int = 10  # linear warm-up of the RL learning rate over this many iterations (0: constant lr)
    temperature: float = 1.0
    sample_every: int = 20
    trainer: TrainerConfig = TrainerConfig(steps=0, log_every=1, checkpoint_every=10_000, progress=False,
                                           async_checkpoint=False)

    def __post_init__(self):
        check(all(a in ARMS for a in self.arm_list) and self.arm_list, f"arms must be a comma list over {list(ARMS)}")
        check(self.seed_list, "seeds must list at least one seed")
        check(all(1 <= o <= self.max_ops for o in self.pretrain_op_list), "pretrain_ops must lie in [1, max_ops]")
        check(self.iterations >= 2 and self.iterations % 2 == 0, "iterations must be even and ≥ 2 (lsp_grpo halves)")
        check(self.grpo_queries >= self.lsp.n_queries, "grpo_queries must be ≥ lsp.n_queries")
        check(self.lsp.group_size >= 2, "lsp.group_size must be ≥ 2 (a group of one has no advantage)")
        check(self.lr > 0 and self.lr_warmup >= 0, "lr must be > 0 and lr_warmup ≥ 0")

    @property
    def arm_list(self) -> list[str]:
        return comma_list(self.arms)

    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in comma_list(self.seeds)]

    @property
    def pretrain_op_list(self) -> list[int]:
        return [int(s) for s in comma_list(self.pretrain_ops)]

    @property
    def fmt(self) -> LSPFormat:
        return LSPFormat(challenger_prompt=(CP, Q), solver_prefix=(Q,), solver_suffix=(A,), eos_id=EOS, pad_id=PAD,
                         max_query_tokens=self.max_query_tokens, max_answer_tokens=self.max_answer_tokens,
                         temperature=self.temperature)


# --------------------------------------------------------------------------------------------------------------
# data

def expression(rng: np.random.Generator, ops: int, paren_prob: float, max_abs: int, max_chars: int) -> str:
    """A random expression with exactly `ops` binary operations on digits, |value| ≤ max_abs (resampled)."""
    for _ in range(1000):
        text = _expr(rng, ops, paren_prob)
        if len(text) <= max_chars and arithmetic_value(text, max_chars, max_abs) is not None:
            return text
    raise ValueError(f"no expression with {ops} operations and |value| ≤ {max_abs} in 1000 draws")


def _expr(rng, ops: int, paren_prob: float) -> str:
    if ops == 0:
        return str(int(rng.integers(0, 10)))
    left = int(rng.integers(0, ops))
    a, b = _expr(rng, left, paren_prob), _expr(rng, ops - 1 - left, paren_prob)
    if left and rng.random() < paren_prob:
        a = f"({a})"
    if ops - 1 - left and rng.random() < paren_prob:
        b = f"({b})"
    return f"{a}{'+-*'[int(rng.integers(0, 3))]}{b}"


def expressions(n: int, ops_list, c: Config, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [expression(rng, int(rng.choice(ops_list)), c.paren_prob, c.max_abs_value, c.max_query_tokens)
            for _ in range(n)]


def pretrain_rows(c: Config) -> dict:
    """Half challenger rows (<cp> <q> e <eos>, loss on e <eos>), half solver rows (<q> e <a> v <eos>, loss on v <eos>)."""
    fmt = c.fmt
    exprs = expressions(c.pretrain_examples, c.pretrain_op_list, c, c.seed)
    T = fmt.row_len
    tok = np.full((len(exprs), T), PAD, np.int32)
    mask = np.zeros((len(exprs), T), np.float32)
    for i, e in enumerate(exprs):
        if i % 2 == 0:
            p, t = [CP, Q], encode(e) + [EOS]
        else:
            p, t = [Q, *encode(e), A], encode(str(arithmetic_value(e, c.max_query_tokens, c.max_abs_value))) + [EOS]
        tok[i, : len(p) + len(t)] = p + t
        mask[i, len(p): len(p) + len(t)] = 1.0
    return {"tokens": tok, "loss_mask": mask}


# --------------------------------------------------------------------------------------------------------------
# reward, judge, statistics

def query_value(c: Config, q_ids, terminated: bool = True):
    return arithmetic_value(decode(q_ids), c.max_query_tokens, c.max_abs_value) if terminated else None


def make_reward(c: Config):
    def reward(q_ids, a_ids) -> float:
        v = query_value(c, q_ids)
        return float(v is not None and parse_integer(decode(a_ids)) == v)

    return reward


def make_judge(c: Config):
    def score(ro, b) -> float:
        G = ro.answer_tokens.shape[0] // len(ro.queries)
        i = b // G
        texts = [decode(q) for q in ro.queries]
        return arithmetic_rubric(texts[i], decode(ro.answer_tokens[b][ro.answer_mask[b] & (ro.answer_tokens[b] != EOS)]),
                                 query_terminated=bool(ro.query_terminated[i]), answer_terminated=bool(ro.answer_terminated[b]),
                                 duplicate=texts[i] in texts[:i], max_chars=c.max_query_tokens,
                                 max_abs_value=c.max_abs_value)

    return pair_judge(score)


def make_query_stats(c: Config):
    def stats(q_ids, terminated: bool) -> dict:
        text = decode(q_ids)
        valid = query_value(c, q_ids, terminated) is not None
        ops = count_ops(text)
        return {"valid": float(valid), "ops": float(ops), "ops_x_valid": float(ops * valid), "len": float(len(text))}

    return stats


def heldout(c: Config, model: Model, params, sets: dict) -> dict:
    """Greedy solver accuracy per operation count (the paper evaluates at τ = 0.01), keys 1..max_ops and "all";
    with `heldout_samples` > 0 also the accuracy of that many samples per expression at the rollouts' temperature
    (what RL optimises), keys "T_1".."T_<max_ops>" and "T_all"."""
    out = {}
    for ops, exprs in sets.items():
        out[ops] = _accuracy(c, model, params, exprs, 0.0, 1)
        if c.heldout_samples:
            out[f"T_{ops}"] = _accuracy(c, model, params, exprs, c.temperature, c.heldout_samples)
    out["all"] = float(np.mean([out[o] for o in sets]))
    if c.heldout_samples:
        out["T_all"] = float(np.mean([out[f"T_{o}"] for o in sets]))
    return out


def _accuracy(c: Config, model: Model, params, exprs: list, temperature: float, reps: int) -> float:
    fmt = c.fmt
    s = SamplingConfig(max_new_tokens=c.max_answer_tokens, temperature=temperature, stop_tokens=(EOS,), pad_id=PAD)
    tok, lengths = pad_prompts([fmt.solver_prompt(encode(e)) for e in exprs for _ in range(reps)], PAD,
                               fmt.solver_prompt_len)
    gen = np.asarray(generate(model, params, tok, jax.random.PRNGKey(0), s, lengths=lengths).tokens)
    values = [arithmetic_value(e, c.max_query_tokens, c.max_abs_value) for e in exprs for _ in range(reps)]
    return float(np.mean([parse_integer(decode(fmt.query_of(g))) == v for g, v in zip(gen, values)]))


# --------------------------------------------------------------------------------------------------------------
# runs

def model_for(c: Config) -> Model:
    return Model(get_preset("tiny_llama", vocab_size=len(SYMBOLS), d_model=c.d_model, n_layers=c.n_layers,
                            n_heads=c.n_heads, n_kv_heads=c.n_heads, head_dim=c.d_model // c.n_heads, d_ff=c.d_ff,
                            max_seq_len=c.fmt.row_len + 1))


def pretrain(c: Config, model: Model):
    sched = optax.warmup_cosine_decay_schedule(0.0, c.pretrain_lr, min(100, c.pretrain_steps // 10 + 1),
                                               max(c.pretrain_steps, 2), c.pretrain_lr / 10)
    task = lm_task(model, optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.1),
                   minibatches(pretrain_rows(c), c.pretrain_batch, c.seed))
    tcfg = dataclasses.replace(c.trainer, steps=c.pretrain_steps, log_every=100, checkpoint_every=c.pretrain_steps)
    return train(tcfg, task, f"{c.init_from or c.run_dir}/pretrain", seed=c.seed)


def self_play(c: Config, model: Model, start, ref, run_dir: str, seed: int, *, zero_sum: bool, data=None,
              iterations: int) -> tuple:
    """`iterations` LSP (or, with `data`, GRPO) iterations from `start` through the one trainer."""
    lcfg = dataclasses.replace(c.lsp, self_reward=not zero_sum and data is None)
    tcfg = dataclasses.replace(c.trainer, steps=iterations, updates_per_batch=1,
                               checkpoint_every=max(iterations, c.trainer.checkpoint_every))
    check_lsp_trainer(tcfg)
    source = LSPSource(model, lcfg, c.fmt, make_reward(c), ref, judge=make_judge(c) if lcfg.self_reward else None,
                       query_stats=make_query_stats(c), data_queries=data, sample_every=c.sample_every)
    host = jax.tree.map(np.asarray, start)
    lr = optax.linear_schedule(0.0, c.lr, c.lr_warmup) if c.lr_warmup > 0 else c.lr
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    task = make_rl_task(model, None, opt, source, lambda key: jax.tree.map(jnp.asarray, host),
                        loss_fn=lsp_loss_fn(model, lcfg))
    result = train(tcfg, task, run_dir, seed=seed)
    samples = [(b, [decode(q) for q in qs]) for b, qs in source.samples]
    return result, samples


CHALLENGER_KEYS = ("lsp/query_valid", "lsp/query_ops", "lsp/query_ops_x_valid", "lsp/RQ_mean", "lsp/kl_ch",
                   "lsp/query_len")


def curves(history: list, offset: int = 0, challenger: bool = True) -> dict:
    """Per-iteration series from metrics.jsonl rows (iteration = offset + step); the challenger's series are None
    in a GRPO phase (its queries are the data's, not a challenger's)."""
    rows = [h for h in history if "lsp/V_mean" in h]
    keys = ("lsp/query_valid", "lsp/query_ops", "lsp/query_ops_x_valid", "lsp/V_mean", "lsp/RQ_mean", "lsp/kl_sol",
            "lsp/kl_ch", "lsp/reward_mean", "lsp/query_len", "lsp/challenger_s", "lsp/solver_s", "lsp/score_s",
            "lsp/batch_s", "perf/update_s")
    return {"iteration": [offset + h["step"] for h in rows],
            **{k: [h.get(k) if challenger or k not in CHALLENGER_KEYS else None for h in rows] for k in keys}}


def run_arm(c: Config, arm: str, seed: int, model: Model, base, data, sets) -> dict:
    d = f"{c.run_dir}/{arm}_s{seed}"
    t0 = time.perf_counter()
    if arm == "base":
        return {"heldout": heldout(c, model, base, sets), "curves": None, "samples": [], "seconds": 0.0}
    if arm == "grpo":
        res, samples = self_play(c, model, base, base, d, seed, zero_sum=False, data=data, iterations=c.iterations)
        cur = curves(res.history, challenger=False)
    elif arm in ("lsp", "lsp_zero"):
        res, samples = self_play(c, model, base, base, d, seed, zero_sum=arm == "lsp_zero", iterations=c.iterations)
        cur = curves(res.history)
    else:  # lsp_grpo: half LSP, then half GRPO from there (π_Ref stays the base model)
        half = c.iterations // 2
        r1, samples = self_play(c, model, base, base, d + "_lsp", seed, zero_sum=False, iterations=half)
        res, _ = self_play(c, model, r1.state.params, base, d + "_grpo", seed, zero_sum=False, data=data, iterations=half)
        a, b = curves(r1.history), curves(res.history, offset=half, challenger=False)
        cur = {k: a[k] + b[k] for k in a}
    return {"heldout": heldout(c, model, res.state.params, sets), "curves": cur, "samples": samples,
            "seconds": time.perf_counter() - t0}


def _window(series: list, which: str) -> list:
    """The first / last 10% (at least 1) of the iterations that have the series (not a GRPO phase)."""
    xs = [x for x in series if x is not None]
    k = max(1, len(xs) // 10)
    return xs[:k] if which == "first" else xs[-k:]


def _ops_valid(cur, which) -> float:
    v, ov = np.sum(_window(cur["lsp/query_valid"], which)), np.sum(_window(cur["lsp/query_ops_x_valid"], which))
    return float(ov / v) if v > 0 else float("nan")


def arm_summary(c: Config, results: list[dict]) -> dict:
    """Mean over seeds; first/last = the first/last 10% of the iterations that have the series (None: none has,
    e.g. the challenger's in GRPO)."""
    out = {"heldout": {k: float(np.mean([r["heldout"][k] for r in results])) for k in results[0]["heldout"]},
           "heldout_per_seed": [r["heldout"]["all"] for r in results], "seconds": float(np.mean([r["seconds"] for r in results]))}
    if results[0]["curves"] is not None:
        first, last = "first", "last"

        def agg(key, which):
            ws = [_window(r["curves"][key], which) for r in results]
            return float(np.mean([np.mean(w) for w in ws])) if all(ws) else None

        out.update(valid_query_rate_first=agg("lsp/query_valid", first), valid_query_rate_last=agg("lsp/query_valid", last),
                   mean_ops_first=agg("lsp/query_ops", first), mean_ops_last=agg("lsp/query_ops", last),
                   mean_ops_valid_first=float(np.mean([_ops_valid(r["curves"], first) for r in results])),
                   mean_ops_valid_last=float(np.mean([_ops_valid(r["curves"], last) for r in results])),
                   V_first=agg("lsp/V_mean", first), V_last=agg("lsp/V_mean", last),
                   RQ_last=agg("lsp/RQ_mean", last), kl_ch_last=agg("lsp/kl_ch", last), kl_sol_last=agg("lsp/kl_sol", last))
    return out


def plot(c: Config, per_arm: dict, buckets) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("lsp/query_valid", "challenger validity rate"), ("lsp/query_ops", "operations per query"),
            ("lsp/V_mean", "V(q) (solver success)"), ("lsp/RQ_mean", "V_Q (R_Q, 0-7)"), ("lsp/kl_ch", "KL challenger (seq)"),
            ("lsp/kl_sol", "KL solver (seq)")]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7))
    for ax, (k, title) in zip(axes.flat, keys):
        for arm, res in per_arm.items():
            for j, r in enumerate(res):
                if r["curves"] is None:
                    continue
                x, y = r["curves"]["iteration"], np.asarray([np.nan if v is None else v for v in r["curves"][k]], float)
                ax.plot(x, y, label=arm if j == 0 else None, color=f"C{ARMS.index(arm)}", alpha=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
    axes.flat[0].legend(fontsize=7)
    ax = axes.flat[6]
    width = 0.8 / max(1, len(per_arm))
    for i, (arm, res) in enumerate(per_arm.items()):
        acc = [np.mean([r["heldout"][b] for r in res]) for b in buckets]
        ax.bar(np.arange(len(buckets)) + i * width, acc, width, label=arm, color=f"C{ARMS.index(arm)}")
    ax.set_xticks(np.arange(len(buckets)) + 0.4 - width / 2, [str(b) for b in buckets])
    ax.set_xlabel("operations (held-out bucket)")
    ax.set_title("held-out solver accuracy (greedy)", fontsize=9)
    ax.legend(fontsize=7)
    axes.flat[7].axis("off")
    fig.suptitle(f"lsp_arith: N={c.lsp.n_queries}, G={c.lsp.group_size}, beta={c.lsp.kl_beta}, {c.lsp.kl_estimator}, "
                 f"{c.iterations} iterations, seeds {c.seeds}")
    fig.tight_layout()
    save_figure(fig, c.run_dir, "lsp_curves")


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    t0 = time.perf_counter()
    model = model_for(c)
    pre = pretrain(c, model)
    base = jax.tree.map(np.asarray, pre.state.params)
    t_pre = time.perf_counter() - t0
    buckets = list(range(1, c.max_ops + 1))
    sets = {o: expressions(c.heldout_per_bucket, [o], c, c.seed + 10_000 + o) for o in buckets}
    held = {e for es in sets.values() for e in es}
    data = [np.asarray(encode(e), np.int32) for e in expressions(4 * c.grpo_queries, buckets, c, c.seed + 20_000)
            if e not in held][: c.grpo_queries]  # the GRPO data: the target distribution, held-out queries removed
    per_arm = {arm: [run_arm(c, arm, s, model, base, data, sets) for s in (c.seed_list if arm != "base" else c.seed_list[:1])]
               for arm in c.arm_list}
    arms = {arm: arm_summary(c, res) for arm, res in per_arm.items()}
    base_acc = heldout(c, model, base, sets)
    main = "lsp" if "lsp" in arms else next((a for a in c.arm_list if a != "base"), c.arm_list[0])
    m = arms[main]
    summary = {
        "heldout_acc_base": base_acc["all"],
        "heldout_acc_after": m["heldout"]["all"],
        "main_arm": main,
        "valid_query_rate_last": m.get("valid_query_rate_last"),
        "mean_ops_first": m.get("mean_ops_first"),
        "mean_ops_last": m.get("mean_ops_last"),
        "heldout_acc_base_by_ops": {str(b): base_acc[b] for b in buckets},
        "arms": {a: {**{k: v for k, v in s.items() if k != "heldout"},
                     "heldout_by_ops": {str(b): s["heldout"][b] for b in buckets}, "heldout_all": s["heldout"]["all"]}
                 for a, s in arms.items()},
        "pretrain_loss_last": next((r["loss"] for r in reversed(pre.history) if "loss" in r), None),
        "pretrain_s": round(t_pre, 1), "wall_s": round(time.perf_counter() - t0, 1),
        "lsp": dataclasses.asdict(c.lsp), "iterations": c.iterations, "seeds": c.seed_list,
    }
    record = {arm: [{"seed": s, "heldout": {str(k): v for k, v in r["heldout"].items()}, "curves": r["curves"],
                     "samples": r["samples"]} for s, r in zip(c.seed_list, res)] for arm, res in per_arm.items()}
    Path(c.run_dir, "runs.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    plot(c, per_arm, buckets)
    write_summary(c.run_dir, summary, "lsp_arith")
    return summary
