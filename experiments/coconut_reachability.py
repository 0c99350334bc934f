"""Continuous thoughts vs discrete CoT vs no CoT on graph reachability (arXiv 2505.12514, 2509.23365).

Trains the one Transformer (gpt2 flavour, 2 layers) from scratch on ProsQA-style graphs in several modes:
  coconut      Coconut stage curriculum (stage k: k thoughts, label = the hop-(k+1) node of an optimal path)
  bfs_frontier Coconut-BFS set loss (Emergence Eq. 6): -logsumexp over the frontier nodes at hop k+1
  bfs_reachable  the same over all nodes within k+1 hops, root included (the Emergence code's data files)
  bfs_uniform  Coconut-BFS, paper 1 §5.4: one node drawn uniformly from the hop-(k+1) frontier
  cot          discrete CoT: the optimal path as tokens, then [A] c*
  nocot        [A] c* straight after the prompt
One `train` call per curriculum stage (sub-run-dir `<mode>/stage_<k>`), so an interrupted run resumes. The
latent modes log the index-matching logit proxy mu_c (layer-2 pre-softmax score, summed over heads, from the
position generating thought c to the `|` of edges whose source is in the frontier, minus the other edges).
After training: accuracy table, layer-1 attention map, Table 1 (layer-2 attention mass per edge group),
Table 5 (inner products of thoughts with node embeddings), Coconut vs BFS histograms, mu_c curves.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import check
from jaxllm.data.tasks import reachability as rd
from jaxllm.models import Model, coconut
from jaxllm.models import transformer as tfm
from jaxllm.sampling.autoregressive import SamplingConfig, generate
from jaxllm.train import Task, TrainerConfig, train
from jaxllm.train.lm import next_token_loss
from jaxllm.train.run import prepare_run_dir, save_figure, write_summary

MODES = ("coconut", "bfs_frontier", "bfs_reachable", "bfs_uniform", "cot", "nocot")


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    modes: tuple[str, ...] = ("coconut", "bfs_frontier", "cot", "nocot")
    # Defaults = the CPU run of docs/results/superposition.md section 2.1 (~75 min for the 4 modes in one process, estimated).
    graphs: rd.GraphConfig = rd.GraphConfig(min_nodes=6, max_nodes=9, hops=(2,), max_edges=12)
    n_train: int = 4000
    n_test: int = 500
    d_model: int = 64
    n_heads: int = 4
    dropout: float = 0.0
    max_latent: int = 2  # thoughts at the last stage (paper: 4 for 3-4 hop graphs)
    first_stage_steps: int = 3000  # stage 0 (Emergence: 150 epochs of 350; paper 1: 25 of 300)
    steps_per_stage: int = 1500
    final_extra_steps: int = 1000  # added to the last stage (paper 1 keeps training at the last stage)
    baseline_steps: int = 0  # cot / nocot steps; 0 = the curriculum's total
    batch_size: int = 128  # the stage-0 lookup forms after ~2k steps at 128; not in 2.3k at 32 (section 3.2)
    lr: float = 1e-3
    weight_decay: float = 0.01
    uniform_prob: float = 0.1
    reset_optimizer: bool = True
    relabel: bool = True  # Emergence `shuffle_nodes`: fresh node ids per sample and epoch
    analysis_samples: int = 200
    analyze_only: bool = False  # skip training; analyse <run_dir>/<mode>/ of earlier runs
    trainer: TrainerConfig = TrainerConfig(log_every=100, eval_every=500, checkpoint_every=500, progress=False)

    def __post_init__(self):
        check(all(m in MODES for m in self.modes) and self.modes, f"modes={self.modes} must be from {list(MODES)}")
        check(self.max_latent >= 1, f"max_latent={self.max_latent} must be >= 1")
        check(max(self.graphs.hops) <= self.max_latent, f"hops {self.graphs.hops} need max_latent >= max hop")
        check(self.batch_size <= self.n_train, f"batch_size={self.batch_size} exceeds n_train={self.n_train}")
        check(self.n_test >= self.analysis_samples, "analysis_samples must be <= n_test")


def model_config(cfg: Config) -> tfm.TransformerConfig:
    """GPT-2 flavour, 2 layers, 4x MLP, tied embeddings, 40 tokens (paper: d 768, 8 heads, dropout 0.1)."""
    hops = max(cfg.graphs.hops)
    return tfm.TransformerConfig(vocab_size=rd.VOCAB_SIZE, d_model=cfg.d_model, n_layers=2, n_heads=cfg.n_heads,
                                 d_ff=4 * cfg.d_model, max_seq_len=rd.prompt_len(cfg.graphs.max_edges) + hops + 4,
                                 flavour="gpt2", dropout=cfg.dropout, tie_embeddings=True)


def _optimizer(cfg: Config, state=None):
    """AdamW with the paper's betas (0.9, 0.95); `state` given: start from it (no reset at a stage switch)."""
    opt = optax.adamw(cfg.lr, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay)
    if state is None:
        return opt
    return optax.GradientTransformation(lambda params: state, opt.update)


def _jnp(batch: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in batch.items()}


LATENT_KEYS = ("tokens", "positions", "attention_mask", "read_pos", "label_set", "is_final")


def mu_proxy(scores_BQS, batch: dict) -> np.ndarray:
    """[n_steps] mean over samples of mu_c (c = 1..n_steps).

    scores_BQS: layer-2 pre-softmax scores summed over heads, rows = the positions generating thoughts
    1..n_steps (index P-2+c). mu_c = mean score to `|` of edges whose source is at hop c-1 (the frontier)
    minus the mean over the other edges (Emergence paper's index-matching logit proxy)."""
    s = np.asarray(scores_BQS, np.float64)
    out = []
    for c in range(1, s.shape[1] + 1):
        vals = []
        for b in range(s.shape[0]):
            valid = batch["edge_valid"][b]
            src_d = batch["dist"][b][batch["edge_src"][b]]
            row = s[b, c - 1, batch["edge_pos"][b]]
            fr, other = valid & (src_d == c - 1), valid & (src_d != c - 1)
            if fr.any() and other.any():
                vals.append(row[fr].mean() - row[other].mean())
        out.append(float(np.mean(vals)) if vals else float("nan"))
    return np.asarray(out)


def mu_metrics(mu: np.ndarray) -> dict:
    """{"mu/c<c>": value} for the defined mu_c. mu_c is NaN when no analysis graph has both frontier and other
    edges at hop c - 1; it is left out rather than logged, since the trainer stops on a NaN metric."""
    return {f"mu/c{c + 1}": float(v) for c, v in enumerate(mu) if np.isfinite(v)}


def _analysis_batch(cfg: Config, problems, K: int) -> dict:
    b = rd.latent_batch(problems, 99, np.random.default_rng(cfg.seed + 7), max_latent=K,
                        max_edges=cfg.graphs.max_edges, final_only=True)
    b["n_slots"] = K
    return b


def train_latent(cfg: Config, mode: str, train_set, test_set, run_dir: Path) -> tuple[dict, list]:
    """The stage curriculum for one latent mode; returns (final params, metric rows with global steps)."""
    mcfg = model_config(cfg)
    K, P = (0 if mode == "nocot" else cfg.max_latent), rd.prompt_len(cfg.graphs.max_edges)
    label_mode = "coconut" if mode in ("coconut", "nocot") else mode
    ana = _analysis_batch(cfg, test_set[: cfg.analysis_samples], K)
    ana_j = _jnp({k: ana[k] for k in LATENT_KEYS})
    test_b = _jnp({k: v for k, v in rd.latent_batch(test_set, 99, np.random.default_rng(1), max_latent=K,
                                                     max_edges=cfg.graphs.max_edges, final_only=True).items()
                   if k in LATENT_KEYS + ("target", "neg_target")})

    @jax.jit
    def scores_of(params):
        _, res = coconut.latent_logits(mcfg, params, ana_j, K, P, return_attention=True)
        return res.out.attention[1][1][:, :, P - 1:P + K].sum(1)  # [B, K+1, S], summed over heads

    @jax.jit
    def test_acc(params):
        logits, _ = coconut.latent_logits(mcfg, params, test_b, K, P)
        exact = jnp.mean((jnp.argmax(logits, -1) == test_b["target"]).astype(jnp.float32))
        pick = lambda t: jnp.take_along_axis(logits, t[:, None], 1)[:, 0]
        cand = jnp.mean((pick(test_b["target"]) > pick(test_b["neg_target"])).astype(jnp.float32))
        return exact, cand

    def log_fn(params, step):
        if K == 0:
            return {}
        return mu_metrics(mu_proxy(scores_of(params), ana))

    stages = [0] if mode == "nocot" else list(range(K + 1))
    params, opt_state, rows, offset = None, None, [], 0
    for stage, steps in zip(stages, stage_steps(cfg, mode)):
        make = (lambda ps, rng, st=stage: rd.latent_batch(
            ps, 99 if mode == "nocot" else st, rng, max_latent=K, max_edges=cfg.graphs.max_edges, mode=label_mode,
            uniform_prob=cfg.uniform_prob, relabel=cfg.relabel))
        init = (lambda key: tfm.init_params(mcfg, key)) if params is None else (lambda key, p=params: p)
        keep = None if (cfg.reset_optimizer or opt_state is None) else opt_state
        task = Task(
            init_params=init,
            # only min(stage, K) thought passes: later slots are masked for every sample of this stage
            loss_fn=lambda p, b, rng, n=min(stage, K): coconut.latent_loss(mcfg, p, b, rng if cfg.dropout else None,
                                                                          n, P),
            optimizer=_optimizer(cfg, keep),
            batches=_Keys(rd.ProblemBatches(train_set, cfg.batch_size, make, seed=cfg.seed * 1000 + stage),
                          LATENT_KEYS),
            eval_fn=lambda p: dict(zip(("test_acc", "test_acc_candidates"), map(float, test_acc(p)))),
            log_fn=log_fn,
        )
        tcfg = dataclasses.replace(cfg.trainer, steps=steps)
        res = train(tcfg, task, str(run_dir / mode / f"stage_{stage}"), seed=cfg.seed)
        params, opt_state = res.state.params, res.state.opt_state
        save_params(run_dir / mode / f"stage_{stage}" / "params.npz", params)  # analysable if a later stage is cut
        for row in res.history:
            rows.append({**row, "global_step": offset + row["step"], "stage": stage})
        offset += steps
    return params, rows


class _Keys:
    """Keep only the array fields the jitted step needs (bookkeeping stays host-side)."""

    def __init__(self, it, keys):
        self.it, self.keys = it, keys

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.it)
        return {k: b[k] for k in self.keys}

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


COT_KEYS = ("tokens", "positions", "attention_mask", "loss_mask")


def train_cot(cfg: Config, train_set, test_set, run_dir: Path) -> tuple[dict, list]:
    mcfg = model_config(cfg)
    hops = max(cfg.graphs.hops)
    model = Model(mcfg)
    test_b = rd.cot_batch(test_set, np.random.default_rng(1), max_edges=cfg.graphs.max_edges, max_hops=hops)
    prompt_lengths = test_b["prompt_mask"].sum(1)  # left-padded prompts; positions restart at each first token

    def eval_fn(params):
        out = generate(model, params, test_b["prompt_tokens"], jax.random.PRNGKey(0),
                       SamplingConfig(max_new_tokens=hops + 2), lengths=prompt_lengths)  # greedy, KV cache
        return {"test_acc": float(np.mean(cot_answers(np.asarray(out.tokens)) == test_b["target"]))}

    make = lambda ps, rng: lm_batch(rd.cot_batch(ps, rng, max_edges=cfg.graphs.max_edges, max_hops=hops,
                                                 relabel=cfg.relabel))
    steps = stage_steps(cfg, "cot")[0]
    task = Task(init_params=lambda key: tfm.init_params(mcfg, key),
                loss_fn=lambda p, b, rng: next_token_loss(model, p, b, rng if cfg.dropout else None),
                optimizer=_optimizer(cfg), eval_fn=eval_fn,
                batches=_Keys(rd.ProblemBatches(train_set, cfg.batch_size, make, seed=cfg.seed), COT_KEYS))
    res = train(dataclasses.replace(cfg.trainer, steps=steps), task, str(run_dir / "cot"), seed=cfg.seed)
    return res.state.params, [{**r, "global_step": r["step"], "stage": 0} for r in res.history]


def lm_batch(batch: dict) -> dict:
    """A CoT batch for `next_token_loss` (which runs the model on tokens[:, :-1]) with one padding column appended
    (EOS, hidden, no loss): the model then runs on the whole CoT sequence as in the documented runs, whose loss
    forwarded all of it, so their gradients and figures are reproduced bit for bit (same maths either way)."""
    out = dict(batch)
    for k, fill in (("tokens", rd.EOS), ("positions", 0), ("attention_mask", False), ("loss_mask", False)):
        out[k] = np.concatenate([batch[k], np.full((batch[k].shape[0], 1), fill, batch[k].dtype)], axis=1)
    return out


def cot_answers(generated: np.ndarray) -> np.ndarray:
    """The token after the first generated [A] (-1 when no [A] was generated)."""
    out = np.full(len(generated), -1)
    for i, row in enumerate(generated):
        hit = np.nonzero(row[:-1] == rd.ANSWER)[0]
        if len(hit):
            out[i] = row[hit[0] + 1]
    return out


# ----------------------------------------------------------------------------------------------------------
# Analyses of a trained latent model.


def latent_analysis(cfg: Config, params, test_set) -> dict:
    """Attention tables and thought/embedding inner products on `analysis_samples` test problems."""
    mcfg = model_config(cfg)
    K, P = cfg.max_latent, rd.prompt_len(cfg.graphs.max_edges)
    ana = _analysis_batch(cfg, test_set[: cfg.analysis_samples], K)
    _, res = jax.jit(lambda b: coconut.latent_logits(mcfg, params, b, K, P, return_attention=True))(
        _jnp({k: ana[k] for k in LATENT_KEYS}))
    probs2 = np.asarray(res.out.attention[1][0]).sum(1)  # [B, T, S] summed over heads
    probs1 = np.asarray(res.out.attention[0][0])  # [B, H, T, S]
    thoughts = np.asarray(res.thoughts)  # [B, K, D]
    U = np.asarray(params["embed"])[: rd.N_NODE_IDS]
    groups = ("not_reachable", "reachable", "frontier", "optimal")
    table1 = {g: [[] for _ in range(K)] for g in groups}
    table5 = {g: [[] for _ in range(K)] for g in groups}
    copy_mass = []
    for b in range(len(ana["tokens"])):
        p_dist, valid = ana["dist"][b], ana["edge_valid"][b]
        src, tgt, epos = ana["edge_src"][b][valid], ana["edge_tgt"][b][valid], ana["edge_pos"][b][valid]
        nk = _neighbor_sets(test_set[b])
        # layer-1 copy heads: mass from each `|` to its own source and target, averaged over heads
        copy_mass.append(float(np.mean(probs1[b].mean(0)[epos, epos - 2] + probs1[b].mean(0)[epos, epos - 1])))
        hops = test_set[b].hops
        for i in range(1, min(hops, K) + 1):
            q = P - 2 + i  # the position generating thought i (its input holds thought i-1)
            mass = probs2[b, q, epos] + probs2[b, q, epos - 1] + probs2[b, q, epos - 2]
            sd = p_dist[src]
            sel = {"not_reachable": sd < 0, "reachable": (sd >= 0) & (sd <= i - 1), "frontier": sd == i - 1,
                   "optimal": np.isin(src, nk[i - 1]) & np.isin(tgt, nk[i])}
            for g in groups:
                if sel[g].any():
                    table1[g][i - 1].append(float(mass[sel[g]].mean()))
            ip = U @ thoughts[b, i - 1]
            nodes = np.arange(rd.N_NODE_IDS)
            in_graph = np.zeros(rd.N_NODE_IDS, bool)
            in_graph[np.unique(np.concatenate([src, tgt, [test_set[b].root]]))] = True
            nsel = {"not_reachable": in_graph & (p_dist < 0), "reachable": (p_dist >= 0) & (p_dist <= i),
                    "frontier": p_dist == i, "optimal": np.isin(nodes, nk[i])}
            for g in groups:
                table5[g][i - 1].extend(ip[nsel[g]].tolist())
    return {"table1": table1, "table5": table5, "copy_mass": float(np.mean(copy_mass)),
            "layer1_example": probs1[0], "example_tokens": ana["tokens"][0],
            "example_mask": ana["attention_mask"][0]}


def _neighbor_sets(problem) -> list:
    return [list(h) for h in problem.neighbor_k] + [[]] * 8


def _fmt(vals) -> str:
    return f"{np.mean(vals):.2f}±{np.std(vals):.2f}" if len(vals) else "–"


def tables_markdown(ana: dict, K: int) -> str:
    lines = ["Table 1 (layer-2 attention mass per edge, summed over heads and the edge's 3 tokens)", "",
             "| edge group | " + " | ".join(f"step {i}" for i in range(1, K + 1)) + " |",
             "|---|" + "---|" * K]
    for g, rows in ana["table1"].items():
        lines.append(f"| {g} | " + " | ".join(_fmt(r) for r in rows) + " |")
    lines += ["", "Table 5 (inner product of thought i with node embeddings)", "",
              "| node group | " + " | ".join(f"step {i}" for i in range(1, K + 1)) + " |", "|---|" + "---|" * K]
    for g, rows in ana["table5"].items():
        lines.append(f"| {g} | " + " | ".join(_fmt(r) for r in rows) + " |")
    return "\n".join(lines)


def _plots(cfg: Config, run_dir: Path, analyses: dict, rows: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = cfg.max_latent
    for mode, ana in analyses.items():
        mask = ana["example_mask"]
        toks = ana["example_tokens"][mask]
        n = min(len(toks), 3 * 5 + 1)
        attn = ana["layer1_example"][:, mask][:, :, mask][:, :n, :n]
        fig, axes = plt.subplots(1, attn.shape[0], figsize=(3.2 * attn.shape[0], 3.2))
        names = [rd.TOKEN_NAMES[t] for t in toks[:n]]
        for h, ax in enumerate(np.atleast_1d(axes)):
            ax.imshow(attn[h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(n), names, fontsize=6, rotation=90)
            ax.set_yticks(range(n), names, fontsize=6)
            ax.set_title(f"layer 1 head {h}", fontsize=8)
        save_figure(fig, run_dir, f"layer1_attention_{mode}")
        fig, axes = plt.subplots(1, K, figsize=(4 * K, 3), sharey=True)
        for i, ax in enumerate(np.atleast_1d(axes)):
            for g, vals in ana["table5"].items():
                if vals[i]:
                    ax.hist(vals[i], bins=30, alpha=0.5, label=g, density=True)
            ax.set_title(f"{mode}: thought {i + 1}")
            ax.set_xlabel("<thought, u_v>")
        np.atleast_1d(axes)[0].legend(fontsize=7)
        save_figure(fig, run_dir, f"inner_products_{mode}")
    if "coconut" in analyses and any(m.startswith("bfs") for m in analyses):
        other = next(m for m in analyses if m.startswith("bfs"))
        fig, axes = plt.subplots(1, K, figsize=(4 * K, 3))
        for i, ax in enumerate(np.atleast_1d(axes)):
            for mode, ls in (("coconut", "-"), (other, "--")):
                for g in ("frontier", "optimal", "not_reachable"):
                    vals = analyses[mode]["table5"][g][i]
                    if vals:
                        h, e = np.histogram(vals, bins=30, density=True)
                        ax.plot(0.5 * (e[1:] + e[:-1]), h, ls, label=f"{mode}/{g}")
            ax.set_title(f"thought {i + 1}")
        np.atleast_1d(axes)[0].legend(fontsize=6)
        save_figure(fig, run_dir, "coconut_vs_bfs_inner_products")
    mus = {m: r for m, r in rows.items() if any(k.startswith("mu/") for row in r for k in row)}
    if mus:
        fig, axes = plt.subplots(1, len(mus), figsize=(5 * len(mus), 3.5), sharey=True)
        for ax, (mode, r) in zip(np.atleast_1d(axes), mus.items()):
            for c in range(1, K + 2):
                pts = [(row["global_step"], row[f"mu/c{c}"]) for row in r if f"mu/c{c}" in row]
                if pts:
                    ax.plot(*zip(*pts), label=f"c={c}")
            for s in sorted({row["global_step"] - row["step"] for row in r})[1:]:
                ax.axvline(s, color="grey", lw=0.5)
            ax.set_title(f"index-matching logit proxy, {mode} loss")
            ax.set_xlabel("step (grey: stage switch)")
        np.atleast_1d(axes)[0].legend()
        save_figure(fig, run_dir, "mu_logit_over_training")


def save_params(path: Path, params) -> None:
    """Nested param dict -> one .npz with '/'-joined keys (the trained model stays in the run dir)."""
    flat = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                flat[prefix + k] = np.asarray(v)

    walk(params, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **flat)


def load_params(path) -> dict:
    out: dict = {}
    with np.load(path) as data:
        for key in data.files:
            node = out
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(data[key])
    return out


def latest_params(mode_dir: Path) -> tuple[dict, "int | None"]:
    """(params, None) from final_params.npz, else (params, k) from the last finished stage k's params.npz."""
    if (mode_dir / "final_params.npz").exists():
        return load_params(mode_dir / "final_params.npz"), None
    done = sorted(int(p.parent.name.split("_")[1]) for p in mode_dir.glob("stage_*/params.npz"))
    if not done:
        raise FileNotFoundError(f"{mode_dir} holds neither final_params.npz nor any stage_<k>/params.npz")
    return load_params(mode_dir / f"stage_{done[-1]}" / "params.npz"), done[-1]


def stage_steps(cfg: Config, mode: str) -> list[int]:
    """Steps of each `train` call of a mode (one per curriculum stage; one for cot / nocot)."""
    total = cfg.first_stage_steps + cfg.max_latent * cfg.steps_per_stage + cfg.final_extra_steps
    if mode in ("cot", "nocot"):
        return [cfg.baseline_steps or total]
    return [cfg.first_stage_steps] + [cfg.steps_per_stage] * (cfg.max_latent - 1) + [
        cfg.steps_per_stage + cfg.final_extra_steps]


def read_rows(cfg: Config, run_dir: Path, mode: str) -> list:
    """Metric rows of a finished mode from its metrics.jsonl files, with global steps."""
    from jaxllm.train.metrics import read_metrics

    if mode == "cot":
        return [{**r, "global_step": r["step"], "stage": 0} for r in read_metrics(run_dir / "cot" / "metrics.jsonl")]
    rows, offset = [], 0
    for stage, steps in enumerate(stage_steps(cfg, mode)):
        for r in read_metrics(run_dir / mode / f"stage_{stage}" / "metrics.jsonl"):
            rows.append({**r, "global_step": offset + r["step"], "stage": stage})
        offset += steps
    return rows


def run(config: Config) -> dict:
    """Train every mode (unless `analyze_only`), then write tables, plots and the summary from the run dir."""
    run_dir = prepare_run_dir(config.run_dir, config)
    train_set, _, test_set = rd.split_problems(config.n_train, 0, config.n_test, config.graphs, seed=config.seed)
    if not config.analyze_only:
        for mode in config.modes:
            if mode == "cot":
                train_cot(config, train_set, test_set, run_dir)
            else:
                params, _ = train_latent(config, mode, train_set, test_set, run_dir)
                save_params(run_dir / mode / "final_params.npz", params)
    return analyze(config, run_dir, test_set)


def analyze(config: Config, run_dir: Path, test_set) -> dict:
    """Analyses of the trained modes found in `run_dir` (<mode>/final_params.npz and metrics.jsonl files)."""
    summary, analyses, rows, tables = {}, {}, {}, {}
    for mode in config.modes:
        rows[mode] = read_rows(config, run_dir, mode)
        if mode not in ("cot", "nocot"):
            params, stage = latest_params(run_dir / mode)
            if stage is not None:
                print(f"{mode}: no final_params.npz (run cut short); analysing the params after stage {stage}")
                summary[f"{mode}/analysed_stage"] = stage
            analyses[mode] = latent_analysis(config, params, test_set)
            tables[mode] = tables_markdown(analyses[mode], config.max_latent)
            summary[f"{mode}/layer1_copy_mass"] = analyses[mode]["copy_mass"]
        accs = [r for r in rows[mode] if "eval/test_acc" in r]
        summary[f"{mode}/test_acc"] = accs[-1]["eval/test_acc"]
        if "eval/test_acc_candidates" in accs[-1]:
            summary[f"{mode}/test_acc_candidates"] = accs[-1]["eval/test_acc_candidates"]
        for c in range(1, config.max_latent + 2):
            vals = [r[f"mu/c{c}"] for r in rows[mode] if f"mu/c{c}" in r]
            if vals:
                summary[f"{mode}/mu_c{c}_final"] = vals[-1]
                summary[f"{mode}/mu_c{c}_max"] = float(np.nanmax(vals))
    _plots(config, run_dir, analyses, rows)
    (run_dir / "tables.md").write_text("\n\n".join(f"## {m}\n\n{t}" for m, t in tables.items()) + "\n")
    (run_dir / "mu_curves.json").write_text(json.dumps(
        {m: [{k: v for k, v in r.items() if k.startswith("mu/") or k in ("global_step", "stage")} for r in rs]
         for m, rs in rows.items()}))
    summary["chance"] = 0.5
    write_summary(run_dir, summary, "coconut_reachability")
    return summary
