"""The papers composed on 4×4 Sudoku: a dLLM's SFT and RL on a chosen optimizer, served sparse, voted over K traces.

One run is SFT (`dllm_sudoku_sft`) → RL (`spg_sudoku`'s loop, `_spg.train_rl`) → serving + voting on the held-out
puzzles, and every paper is one switch:

    optimizer=adamw|galore2|muon           both phases' optimizer family (`jaxllm.optim.build`); the phases keep
                                           their own learning-rate settings (sft.optim.*, optim.*), the family its
                                           own fields (galore.*, muon.*)
    rl.loss=spg_mix|d1|wd1|none            the RL loss (`jaxllm.rl.losses`); none: SFT only
    serve.method=dense|rsparse|teal        R-Sparse (`jaxllm.sparse.rsparse`, α searched per layer) or TEAL
    serve.sparsity=0|0.5|...               (`jaxllm.sparse.teal`, histogram thresholds), calibrated on training
                                           puzzles (prompt + answer, answer positions masked at random, as the
                                           sampler sees them); every token of every denoising forward sparse
    vote=majority|deepconf_low|deepconf_high, vote.traces=K
                                           K sampled traces per held-out puzzle; DeepConf offline (arXiv 2508.15260
                                           A2): keep the top 10 % (low) / 90 % (high) by the trace's lowest-group
                                           confidence, vote weighted by it. A diffusion trace's token sequence is
                                           its sequence of denoising steps (`deepconf.diffusion_step_confidence`)

summary.json: heldout_acc (SPG's cell accuracy of the voted answer), heldout_acc_majority / heldout_acc_single
(plain majority and one trace, the same traces), tokens_generated (completion tokens up to EOS over all traces),
optimizer_state_bytes (the larger phase's optimizer state; per phase too), serve_seconds_per_problem (K traces,
compiled), train_seconds (SFT + RL, their held-out evaluations included), and parts_active: what each switch
actually did, detected from the run's own state and outputs (GaLore: low-rank moments in the optimizer state;
Muon: its momentum state; RL: updates taken and parameters moved; R-Sparse / TEAL: the served tree carries sparse
entries, their kept fraction on held-out activations is < 1 and the served logits differ from the dense ones;
DeepConf: the voter saw K > 1 traces and filtered some out), with the figures behind it in parts_evidence.

    python -m experiments compose_sudoku optimizer=galore2 rl.loss=spg_mix serve.method=rsparse serve.sparsity=0.5 \\
        vote=deepconf_low vote.traces=16
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _dllm_sft as dllm
from experiments import _spg as spg
from experiments import dllm_sudoku_sft as sft_exp
from experiments import spg_sudoku
from jaxllm.config import check, check_choice
from jaxllm.inference import deepconf as dc
from jaxllm.models import Model
from jaxllm.optim import build
from jaxllm.optim.galore import GaLoreLeafState
from jaxllm.optim.muon import MuonState
from jaxllm.rewards.sudoku import extract_sudoku_digits
from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import completion_mask
from jaxllm.rl.lora import LoraConfig
from jaxllm.sampling.diffusion import DiffusionSamplerConfig, generate
from jaxllm.sparse import rsparse as rs
from jaxllm.sparse import teal
from jaxllm.train import TrainerConfig, prepare_run_dir, write_summary

FAMILIES = ("adamw", "galore2", "muon")
# GaLore 2 (arXiv 2504.20437): the randomized range finder; rank a quarter of each matrix's smaller side (the
# tiny model's matrices are 64 wide), projector refreshed every 50 updates. Scale α = 1, so that the matrices'
# updates have Adam's size and each phase's AdamW learning rate carries over (galore-torch's α = 0.25 goes with
# a larger learning rate; at 0.25 the tiny SFT of tests/experiments/test_compose.py learns no answer format).
GALORE2 = build.GaLoreAdamWConfig(projector="randomized", rank_fraction=0.25, update_proj_gap=50, scale=1.0)
# Muon on the matrices at 7x the phase's learning rate (SFT: 3e-3 -> 0.021, Muon's usual 0.02; RL: 1e-4 -> 7e-4);
# at 1x its orthogonalised updates (RMS ~ 1/sqrt(width)) are too small for the tiny SFT to learn the format.
MUON = build.MuonConfig(muon_lr_ratio=7.0)
SERVE_METHODS = ("dense", "rsparse", "teal")
VOTE_KEEP = {"majority": None, "deepconf_low": 0.1, "deepconf_high": 0.9}  # DeepConf's η/100


@dataclasses.dataclass(frozen=True)
class RLSwitch(RLLossConfig):
    """`RLLossConfig` whose loss may also be "none": SFT only, the RL phase is skipped (its other fields are
    still validated, as for d1)."""

    def __post_init__(self):
        if self.loss == "none":
            dataclasses.replace(self, loss="d1")  # validates every other field
        else:
            super().__post_init__()

    def loss_config(self) -> RLLossConfig:
        check(self.loss != "none", "rl.loss=none has no loss")
        return RLLossConfig(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """method: dense | rsparse | teal. sparsity: model-level activation sparsity s of every decoder projection.
    alpha: R-Sparse's sparse ratio α; < 0: searched per layer on `rsparse.ALPHA_GRID` (`greedy_alpha_search`,
    thresholds calibrated on half the calibration rows, α chosen on the other half). calib_prompts: training
    puzzles used for calibration."""

    method: str = "dense"
    sparsity: float = 0.0
    alpha: float = -1.0
    calib_prompts: int = 64

    def __post_init__(self):
        check_choice("serve.method", self.method, SERVE_METHODS)
        check(0.0 <= self.sparsity < 1.0, f"serve.sparsity must lie in [0, 1), got {self.sparsity}")
        check(self.method != "dense" or self.sparsity == 0.0,
              f"serve.sparsity={self.sparsity} needs serve.method=rsparse or teal (dense reads every weight)")
        check(self.alpha < 0 or self.alpha <= 1.0, f"serve.alpha must lie in [0, 1] (or < 0: search), got {self.alpha}")
        check(self.calib_prompts >= 2, f"serve.calib_prompts must be >= 2, got {self.calib_prompts}")


@dataclasses.dataclass(frozen=True)
class VoteConfig:
    """method: majority | deepconf_low | deepconf_high (`vote=<method>` sets it). traces: K sampled traces per
    held-out puzzle at `temperature` with the low-confidence sampler (steps, block). statistic: the DeepConf
    filter and weight (lowest group, the paper's; or tail / bottom / mean) over windows of `window` denoising
    steps (tail: the last `tail` steps). batch: rows sampled together."""

    method: str = "majority"
    traces: int = 8
    temperature: float = 0.7
    steps: int = 32
    block: int = 32
    statistic: str = "lowest"
    window: int = 4  # ≈ 12 % of the 32 steps, as 2048 of the paper's 13k-29k-token traces (deepconf_arith too)
    tail: int = 4
    batch: int = 256

    def __post_init__(self):
        check_choice("vote.method", self.method, list(VOTE_KEEP))
        check(self.traces >= 1, f"vote.traces must be >= 1, got {self.traces}")
        check(self.traces == 1 or self.temperature > 0,
              f"vote.traces={self.traces} needs vote.temperature > 0 (greedy traces are all the same)")
        check_choice("vote.statistic", self.statistic, dc.STATISTICS)
        for name in ("window", "tail", "batch"):
            check(getattr(self, name) >= 1, f"vote.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def keep_fraction(self) -> Optional[float]:
        return VOTE_KEEP[self.method]


VOTES = {name: VoteConfig(method=name) for name in VOTE_KEEP}


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0  # the RL and serving seed; the SFT has its own sft.seed
    init_from: str = ""  # a finished SFT run (a dllm_sudoku_sft run_dir) trained with this optimizer family
    optimizer: str = "adamw"  # adamw | galore2 | muon, for the SFT and the RL phase
    galore: build.GaLoreAdamWConfig = GALORE2  # galore2's own fields (rank, projector, ...)
    muon: build.MuonConfig = MUON  # muon's own fields (beta, muon_learning_rate, ...)
    sft: sft_exp.Config = sft_exp.Config(settings="32:32:lc")  # sft.optim: the SFT phase's AdamW settings
    optim: build.AdamWConfig = spg.RL_OPTIM  # the RL phase's AdamW settings (learning rate, schedule, clipping)
    rl: RLSwitch = RLSwitch(**dataclasses.asdict(spg_sudoku.RL_DEFAULT))
    rl_run: spg.RLSettings = spg.RLSettings(temperature=0.7)
    lora: LoraConfig = LoraConfig()
    trainer: TrainerConfig = spg.RL_TRAINER
    serve: ServeConfig = ServeConfig()
    vote: VoteConfig = VoteConfig()

    CHOICES: ClassVar[dict] = {"vote": VOTES}  # vote=deepconf_low, then vote.traces=16
    ALIASES: ClassVar[dict] = spg.ALIASES  # loss= is rl.loss

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, FAMILIES)
        check(isinstance(self.sft.optim, build.AdamWConfig) and isinstance(self.optim, build.AdamWConfig),
              "sft.optim and optim hold each phase's AdamW settings; choose the family with optimizer=...")
        for field, template in (("galore", self.galore), ("muon", self.muon)):
            default = type(template)()
            moved = [f.name for f in dataclasses.fields(build.OptimizerConfig)
                     if f.init and getattr(template, f.name) != getattr(default, f.name)]
            check(not moved, f"{field}.{moved[0] if moved else ''} is a phase setting: set sft.optim.* / optim.*")
        if self.rl.loss != "none":
            self.rl_phase()  # the RL phase's own validation (loss, masking block vs generation)

    def family(self, base: build.OptimizerConfig) -> build.OptimizerConfig:
        """`base` (a phase's AdamW settings) as this run's optimizer family: the family's own fields from
        `galore` / `muon`, every shared field (learning rate, schedule, decay, betas, eps, clipping) from `base`."""
        if self.optimizer == "adamw":
            return base
        shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(build.OptimizerConfig) if f.init}
        return dataclasses.replace(self.galore if self.optimizer == "galore2" else self.muon, **shared)

    def sft_phase(self) -> sft_exp.Config:
        return dataclasses.replace(self.sft, optim=self.family(self.sft.optim))

    def rl_phase(self) -> spg_sudoku.Config:
        """The RL phase as an spg_sudoku config (what `_spg.train_rl` runs)."""
        return spg_sudoku.Config(run_dir=self.run_dir, seed=self.seed, init_from=self.init_from,
                                 sft=self.sft_phase(), rl=self.rl.loss_config(), rl_run=self.rl_run,
                                 optim=self.family(self.optim), lora=self.lora, trainer=self.trainer)


# ----------------------------------------------------------------------------------------------------------
# What each part did, read off the run's state and outputs.


def state_bytes(tree) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")))


def optimizer_family_of(opt_state) -> tuple[str, dict]:
    """The family an optimizer state belongs to: galore2 when it holds GaLore leaves whose projector has fewer
    columns than rows (low-rank moments), muon when it holds Muon momentum, adamw when it holds Adam moments and
    neither. Returns (family, evidence)."""
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, (GaLoreLeafState, MuonState)))
    galore = [n for n in nodes if isinstance(n, GaLoreLeafState)]
    # projector [m, r] (left) / [n, r] (right) with r < m / n, and the moments [r, n] / [m, r] of that rank
    projected = [n for n in galore if n.projector.shape[1] < n.projector.shape[0]
                 and n.mu.shape[0 if n.left else 1] == n.projector.shape[1]]
    muon = [n for n in nodes if isinstance(n, MuonState) and jax.tree.leaves(n.momentum)]
    adam = [n for n in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(n, optax.ScaleByAdamState) and jax.tree.leaves(n.mu)]
    evidence = {"galore_leaves": len(galore), "galore_projected_leaves": len(projected),
                "galore_moment_bytes": state_bytes([(n.mu, n.nu) for n in galore]),
                "muon_momentum_leaves": sum(len(jax.tree.leaves(n.momentum)) for n in muon),
                "adam_states": len(adam)}
    family = "galore2" if projected else "muon" if muon else "adamw" if adam else "unknown"
    return family, evidence


def sparse_entries(params) -> dict[str, dict]:
    """name -> {scale [d_in], tau []} of every decoder projection that carries an R-Sparse or TEAL entry
    (TEAL: the R-Sparse layer with c = 1)."""
    out = {}
    for name, p in rs.projections(params).items():
        if "rsparse" in p:
            out[name] = p["rsparse"]
        elif "teal" in p:
            d_in = rs.kernel_matrix(name, p["kernel"]).shape[0]
            out[name] = {"scale": np.ones(d_in, np.float32), "tau": p["teal"]["tau"]}
    return out


def sparsity_evidence(mcfg, dense_params, served_model: Model, served_params, probe_BT: np.ndarray) -> dict:
    """On held-out rows (the sampler's first input: prompt + all masks): how many projections carry sparse
    entries, the parameter-weighted fraction of (token, channel) pairs that take the exact path, and the largest
    |served − dense| logit."""
    entries = sparse_entries(served_params)
    if not entries:
        return {"sparse_projections": 0, "kept_fraction": 1.0, "logit_change": 0.0}
    inputs = rs.collect_inputs(mcfg, dense_params, probe_BT)
    counts = teal.parameter_counts(dense_params)
    kept = {n: rs.kept_fraction(inputs[n], e) for n, e in entries.items()}
    weighted = sum(kept[n] * counts[n] for n in kept) / sum(counts[n] for n in kept)
    tokens = jnp.asarray(probe_BT)
    change = jnp.max(jnp.abs(served_model(served_params, tokens) - Model(mcfg)(dense_params, tokens)))
    return {"sparse_projections": len(entries), "kept_fraction": float(weighted), "logit_change": float(change)}


# ----------------------------------------------------------------------------------------------------------
# Serving.


def calibration_rows(vocab: dllm.Vocab, items, gen_length: int, seed: int) -> np.ndarray:
    """[N, 16 + gen_length] training rows (puzzle, answer, EOS padding) with each row's answer positions masked
    at a rate t ~ U(0, 1), the inputs the sampler's forwards see between all-masked and done."""
    rows = dllm.pack(vocab, [vocab.encode([t.puzzle]) for t in items],
                     [vocab.encode(["<answer>", t.solution, "</answer>"]) for t in items], sft_exp.PROMPT_LEN, gen_length)
    rng = np.random.default_rng(seed)
    rate = rng.random((len(rows), 1))
    masked = rng.random((len(rows), gen_length)) < rate
    rows[:, sft_exp.PROMPT_LEN:] = np.where(masked, vocab.mask, rows[:, sft_exp.PROMPT_LEN:])
    return rows


def serving(c: ServeConfig, mcfg, params, calib_BT: np.ndarray, log=print) -> tuple[Model, dict, dict]:
    """(model, params) that serve `params` by `c.method` at `c.sparsity`, calibrated on `calib_BT`, and the
    calibration's figures."""
    if c.method == "dense":
        return Model(mcfg), params, {}
    half = len(calib_BT) // 2
    calib_in = rs.collect_inputs(mcfg, params, calib_BT[:half])
    if c.method == "teal":
        tree = teal.tealify(params, teal.projection_histograms(calib_in), c.sparsity)
        return teal.teal_model(mcfg, 1.0), tree, {}
    factors = rs.compute_factors(params)
    alpha = c.alpha
    if alpha < 0:  # the paper's per-layer α, chosen on calibration rows the thresholds were not fitted on
        search_in = rs.collect_inputs(mcfg, params, calib_BT[half:])
        alpha, _ = rs.greedy_alpha_search(params, factors, calib_in, search_in, c.sparsity)
        log(f"R-Sparse s={c.sparsity}: mean searched alpha {np.mean(list(alpha.values())):.2f}")
    tree, budgets = rs.rsparsify(mcfg, params, None, c.sparsity, alpha, factors=factors, inputs=calib_in)
    info = {"alpha": alpha if isinstance(alpha, float) else {k: float(v) for k, v in alpha.items()},
            "weights_read_fraction": sum(b.weights_read for b in budgets.values())
            / sum(b.d_in * b.d_out for b in budgets.values())}
    return rs.rsparse_model(mcfg, 1.0), tree, info


def sample_traces(model: Model, params, prompts_NP: np.ndarray, traces: int, scfg: DiffusionSamplerConfig,
                  batch: int, seed: int):
    """K = `traces` samples of every prompt, prompt-major (row i·K + k): (tokens [N·K, G], unmask_step [N·K, G],
    confidence [N·K, G], seconds). Timed after one compiling call; the last batch is padded to fixed shapes."""
    rows = np.repeat(prompts_NP, traces, axis=0)
    batch = min(batch, len(rows))
    P = prompts_NP.shape[1]

    def chunk(s):
        part = rows[s: s + batch]
        return np.concatenate([part, np.repeat(part[:1], batch - len(part), axis=0)]) if len(part) < batch else part

    key = jax.random.PRNGKey(seed)
    jax.block_until_ready(generate(model, params, jnp.asarray(chunk(0)), key, scfg).tokens)  # compile
    outs = []
    t0 = time.perf_counter()
    for s in range(0, len(rows), batch):
        out = generate(model, params, jnp.asarray(chunk(s)), jax.random.fold_in(key, s), scfg)
        outs.append((out, min(batch, len(rows) - s)))
    jax.block_until_ready([o.tokens for o, _ in outs])
    seconds = time.perf_counter() - t0
    tokens = np.concatenate([np.asarray(o.tokens)[:n, P:] for o, n in outs])
    step = np.concatenate([np.asarray(o.unmask_step)[:n] for o, n in outs])
    conf = np.concatenate([np.asarray(o.confidence)[:n] for o, n in outs])
    return tokens, step, conf, seconds


def vote(c: VoteConfig, texts_NK: list[list[str]], unmask_step: np.ndarray, confidence: np.ndarray):
    """The voted answer of each puzzle: (winner trace index [N] (-1: nothing voted), evidence, majority winner
    trace index [N]). DeepConf scores each trace by its `statistic` over its denoising steps."""
    N, K = len(texts_NK), len(texts_NK[0])
    ids, valid = np.zeros((N, K), np.int32), np.zeros((N, K), bool)
    n_answers = 1
    for i, texts in enumerate(texts_NK):
        ids[i], valid[i], keys, _ = dc.answer_ids(texts, equivalence="exact", extract=extract_sudoku_digits)
        n_answers = max(n_answers, len(keys))
    step_conf, step_mask = dc.diffusion_step_confidence(jnp.asarray(unmask_step), jnp.asarray(confidence), c.steps)
    scores = dc.trace_confidence(step_conf, step_mask, c.window, c.tail).get(c.statistic).reshape(N, K)
    ids_j, valid_j = jnp.asarray(ids), jnp.asarray(valid)
    majority = dc.majority_vote(ids_j, valid_j, n_answers)
    if c.keep_fraction is None:
        chosen, kept = majority, valid_j
    else:
        kept = dc.keep_top(scores, valid_j, c.keep_fraction)
        chosen = dc.filtered_vote(ids_j, scores, valid_j, c.keep_fraction, n_answers)

    def trace_of(winner):  # the first trace that gave the winning answer
        w = np.asarray(winner)
        hit = valid & (ids == w[:, None])
        return np.where(w >= 0, np.argmax(hit, axis=1), -1)

    evidence = {"traces_per_problem": K, "answered_traces": int(valid.sum()), "voting_traces": int(np.sum(kept)),
                "filtered_traces": int(valid.sum() - np.sum(kept))}
    return trace_of(chosen.winner), evidence, trace_of(majority.winner)


# ----------------------------------------------------------------------------------------------------------


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    sft_cfg, mcfg = config.sft_phase(), config.sft.model
    t0 = time.perf_counter()
    sft_dir = spg_sudoku.sft_start(sft_cfg, config.run_dir, config.init_from)
    sft_seconds = 0.0 if config.init_from else time.perf_counter() - t0
    task = spg_sudoku.setup(sft_cfg, sft_dir, config.rl_run)
    params = task.start.params
    phases = {"sft": optimizer_family_of(task.start.opt_state)}
    state_sizes = {"sft": state_bytes(task.start.opt_state)}

    rl_seconds, rl_updates, rl_change, rl_summary = 0.0, 0, 0.0, {}
    if config.rl.loss != "none":
        run_ = spg.train_rl(config.rl_phase(), mcfg=mcfg, vocab=task.vocab, sft_params=params, prompts=task.prompts,
                            reward_fn=task.reward_fn, heldout_fn=task.heldout, gen_length=sft_cfg.gen_length)
        rl_seconds, rl_updates = run_.seconds, int(run_.state.step)
        rl_change = float(max(jnp.max(jnp.abs(a - b)) for a, b in
                              zip(jax.tree.leaves(run_.params), jax.tree.leaves(params))))
        phases["rl"] = optimizer_family_of(run_.state.opt_state)
        state_sizes["rl"] = state_bytes(run_.state.opt_state)
        before = next(h for h in run_.history if h["step"] == 0)
        rl_summary = {"heldout_greedy_before": before["eval/reward"], "heldout_greedy_after": run_.history[-1]["eval/reward"]}
        params = run_.params

    t1 = time.perf_counter()
    calib = calibration_rows(task.vocab, task.train_items[: config.serve.calib_prompts], sft_cfg.gen_length, config.seed)
    model, served, serve_info = serving(config.serve, mcfg, params, calib)
    probe = np.concatenate([task.test_prompts[:32], np.full((min(32, len(task.test_prompts)), sft_cfg.gen_length),
                                                            task.vocab.mask, np.int32)], axis=1)
    sparse = sparsity_evidence(mcfg, params, model, served, probe)
    serve_setup_seconds = time.perf_counter() - t1

    v = config.vote
    scfg = DiffusionSamplerConfig(gen_length=sft_cfg.gen_length, block_length=v.block, steps=v.steps,
                                  mask_id=task.vocab.mask, temperature=v.temperature)
    tokens, step, conf, serve_seconds = sample_traces(model, served, task.test_prompts, v.traces, scfg, v.batch,
                                                      config.seed)
    N, K = len(task.test), v.traces
    texts = [[task.vocab.decode(tokens[i * K + k]) for k in range(K)] for i in range(N)]
    winner, vote_info, majority = vote(v, texts, step, conf)

    def accuracy(trace_index):
        sc = [task.score(i, texts[i][j]) if j >= 0 else 0.0 for i, j in enumerate(trace_index)]
        return task.cells(np.array(sc)), float(np.mean(np.array(sc) == 1.0))

    heldout_acc, solved = accuracy(winner)
    single = float(np.mean([task.cells(np.array([task.score(i, texts[i][k]) for i in range(N)])) for k in range(K)]))
    families = {name: fam for name, (fam, _) in phases.items()}
    parts_active = {
        "optimizer": families["sft"] if len(set(families.values())) == 1 else ",".join(f"{k}:{f}" for k, f in families.items()),
        "rl": config.rl.loss if rl_updates > 0 and rl_change > 0 else "none",
        "serve": config.serve.method if (sparse["sparse_projections"] and sparse["kept_fraction"] < 1.0
                                         and sparse["logit_change"] > 0) else "dense",
        "vote": v.method if (v.keep_fraction is not None and vote_info["traces_per_problem"] > 1
                             and vote_info["filtered_traces"] > 0) else "majority",
    }
    summary = {
        "heldout_acc": heldout_acc, "heldout_solved": solved, "heldout_acc_majority": accuracy(majority)[0],
        "heldout_acc_single": single,
        "tokens_generated": int(completion_mask(tokens, task.vocab.eos).sum()),
        "optimizer_state_bytes": max(state_sizes.values()),
        **{f"optimizer_state_bytes_{k}": b for k, b in state_sizes.items()},
        "serve_seconds_per_problem": serve_seconds / N, "serve_setup_seconds": serve_setup_seconds,
        "train_seconds": sft_seconds + rl_seconds, "sft_seconds": sft_seconds, "rl_seconds": rl_seconds,
        "parts_active": parts_active,
        "parts_evidence": {"optimizer": {k: ev for k, (_, ev) in phases.items()}, "rl_updates": rl_updates,
                           "rl_max_param_change": rl_change, "serve": {**sparse, **serve_info}, "vote": vote_info},
        "switches": {"optimizer": config.optimizer, "rl": config.rl.loss, "serve": config.serve.method,
                     "serve_sparsity": config.serve.sparsity, "vote": v.method, "traces": K},
        **rl_summary, "sft_dir": sft_dir, "sft_step": task.sft_step, "n_test": N, "seed": config.seed,
    }
    write_summary(config.run_dir, summary, f"compose_sudoku ({config.optimizer}, {config.rl.loss}, "
                  f"{config.serve.method} s={config.serve.sparsity}, {v.method}@{K})")
    return summary
