"""compose_sudoku: every paper is a switch, and each switched-on part really runs (and a switched-off or
ineffective one is reported off), read from the run's own state and outputs rather than from its config.

The full product of the switches (3 optimizers × 4 RL losses × 3 serving methods × 3 votes = 108 runs) takes
far more than 3 minutes on 2 cores (one run of a tiny model is 15-40 s, mostly compilation). So:
- default tier: `test_each_switch_value_runs_and_is_detected`, 4 runs in which every value of every switch
  occurs at least once (each-choice coverage), the fourth with R-Sparse switched on at sparsity 0 (ineffective:
  must be reported dense); the file's default tier takes 2.7 min on 2 cores;
- slow tier: `test_pairwise_combinations`, a pairwise covering array of 12 runs (every pair of values of any two
  switches occurs in some run), 3.5 min.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import jax
import numpy as np
import pytest

from experiments import compose_sudoku as cs
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.inference import deepconf as dc
from jaxllm.models import init_params
from jaxllm.sparse import rsparse as rs
from jaxllm.sparse import teal

K = 4  # vote.traces
N_TEST = 8
# 200 SFT steps: the tiny model then answers most puzzles in the tagged format with varied rewards, so the RL
# advantages are not all zero (after 4 steps every reward is 0 and no RL update moves a parameter).
TINY = ["sft.n_train=256", f"sft.n_test={N_TEST}", "sft.trainer.steps=200", "sft.trainer.log_every=100",
        "sft.trainer.checkpoint_every=200", "sft.trainer.progress=false", "sft.model.d_model=32",
        "sft.model.n_layers=1", "sft.model.d_ff=64", "sft.model.n_heads=2", "rl_run.iterations=1",
        "rl_run.n_prompts=16", "rl_run.prompts_per_batch=2", "rl.inner_steps=2", "trainer.log_every=1",
        "trainer.progress=false", "serve.calib_prompts=8", f"vote.traces={K}"]
LOSSES = ("spg_mix", "d1", "wd1", "none")


def switches(optimizer, loss, serve, vote, sparsity=0.3):
    return [f"optimizer={optimizer}", f"rl.loss={loss}", f"serve.method={serve}",
            f"serve.sparsity={0.0 if serve == 'dense' else sparsity}", f"vote={vote}"]


@pytest.fixture
def probes(monkeypatch):
    """Records, independently of the experiment's own evidence, what the parts were handed: every trace of the
    R-Sparse / TEAL linear's sparse path (a fresh linear class per test, so no compiled cache hides a call),
    and the [N, K] answer ids each vote saw."""
    seen = {"sparse_calls": [], "votes": []}

    @dataclasses.dataclass(frozen=True)
    class CountingRSparse(rs.RSparseLinear):
        def sparse_matmul(self, x2, w2, sp):
            seen["sparse_calls"].append(("rsparse", x2.shape))
            return super().sparse_matmul(x2, w2, sp)

    @dataclasses.dataclass(frozen=True)
    class CountingTEAL(teal.TEALLinear):
        def sparse_matmul(self, x2, w2, sp):
            seen["sparse_calls"].append(("teal", x2.shape))
            return super().sparse_matmul(x2, w2, sp)

    monkeypatch.setattr(rs, "rsparse_model", lambda cfg, f=1.0: rs.Model(cfg, linear=CountingRSparse(f)))
    monkeypatch.setattr(teal, "teal_model", lambda cfg, f=1.0: teal.Model(cfg, linear=CountingTEAL(f)))
    for name in ("majority_vote", "filtered_vote"):
        original = getattr(dc, name)

        def wrapped(ids, *args, _original=original, _name=name, **kw):
            seen["votes"].append((_name, tuple(ids.shape)))
            return _original(ids, *args, **kw)

        monkeypatch.setattr(dc, name, wrapped)
    return seen


def run_row(tmp_path, sft_dirs: dict, seen: dict, optimizer, loss, serve, vote, sparsity=0.3, tag=""):
    """One compose run; the first run of each optimizer trains the SFT start, later ones start from it."""
    run_dir = tmp_path / f"{optimizer}-{loss}-{serve}-{vote}{tag}"
    extra = [f"init_from={sft_dirs[optimizer]}"] if optimizer in sft_dirs else []
    cfg = apply_overrides(cs.Config(), TINY + switches(optimizer, loss, serve, vote, sparsity) + extra
                          + [f"run_dir={run_dir}"])
    seen["sparse_calls"].clear()
    seen["votes"].clear()
    summary = cs.run(cfg)
    sft_dirs.setdefault(optimizer, summary["sft_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["parts_active"] == summary["parts_active"]
    check_parts(summary, seen, cfg, run_dir)
    return summary


def check_parts(s: dict, seen: dict, cfg: cs.Config, run_dir) -> None:
    active, ev = s["parts_active"], s["parts_evidence"]
    effective_serve = cfg.serve.method if cfg.serve.sparsity > 0 else "dense"
    assert active == {"optimizer": cfg.optimizer, "rl": cfg.rl.loss, "serve": effective_serve,
                      "vote": cfg.vote.method}, (active, s["switches"])
    # optimizer: GaLore's state holds rank-r moments of every attention / MLP matrix (7 in one layer), and only
    # GaLore's; Muon's its momentum; every family keeps Adam moments for the rest (embeddings, head, norms)
    for phase, e in ev["optimizer"].items():
        assert (e["galore_projected_leaves"] == 7) == (cfg.optimizer == "galore2"), (phase, e)
        assert (e["muon_momentum_leaves"] == 7) == (cfg.optimizer == "muon"), (phase, e)
        assert e["adam_states"] >= 1
    assert set(ev["optimizer"]) == ({"sft"} if cfg.rl.loss == "none" else {"sft", "rl"})
    # RL: μ × iterations updates that moved the parameters, logged by the trainer; none: no RL phase at all
    if cfg.rl.loss == "none":
        assert ev["rl_updates"] == 0 and s["rl_seconds"] == 0 and not (run_dir / "rl").exists()
    else:
        assert ev["rl_updates"] == cfg.rl.inner_steps * cfg.rl_run.iterations and ev["rl_max_param_change"] > 0
        rows = [json.loads(line) for line in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
        assert any("rollout/reward_mean" in r for r in rows)
    # serving: the sparse linear of the chosen method was traced (and only that one), its kept fraction < 1
    # at s > 0 and = 1 at s = 0, and the served logits differ from the dense ones exactly when it drops channels
    called = {name for name, _ in seen["sparse_calls"]}
    assert called == (set() if cfg.serve.method == "dense" else {cfg.serve.method}), called
    if cfg.serve.method == "dense":
        assert ev["serve"]["sparse_projections"] == 0
    else:
        assert ev["serve"]["sparse_projections"] == 7
        assert (ev["serve"]["kept_fraction"] < 0.9) == (cfg.serve.sparsity > 0), ev["serve"]
        assert (ev["serve"]["logit_change"] > 0) == (cfg.serve.sparsity > 0), ev["serve"]
    # voting: the voter saw every puzzle's K traces; DeepConf kept about its top fraction of the answered ones
    assert ("filtered_vote" in {n for n, _ in seen["votes"]}) == (cfg.vote.method != "majority")
    assert all(shape == (N_TEST, K) for _, shape in seen["votes"]), seen["votes"]
    v = ev["vote"]
    assert v["traces_per_problem"] == K and v["answered_traces"] <= N_TEST * K
    if cfg.vote.method == "majority":
        assert v["voting_traces"] == v["answered_traces"]
    else:  # top 10 % / 90 % of each puzzle's answered traces (ties kept), at least one per answered puzzle
        assert v["voting_traces"] < v["answered_traces"]
        if cfg.vote.method == "deepconf_low":
            assert v["voting_traces"] <= 0.5 * v["answered_traces"] + N_TEST
    if cfg.vote.method == "majority":  # vote=majority scores the plain majority of the same traces
        assert s["heldout_acc"] == s["heldout_acc_majority"], s
    # every trace's completion tokens up to EOS: at least one per answered trace, at most the generation length
    assert v["answered_traces"] <= s["tokens_generated"] <= N_TEST * K * cfg.sft.gen_length, s
    assert s["serve_seconds_per_problem"] > 0
    assert s["optimizer_state_bytes"] == max(b for k, b in s.items() if k.startswith("optimizer_state_bytes_"))


def test_each_switch_value_runs_and_is_detected(tmp_path, probes):
    """Every value of every switch in at least one run (the baseline, two all-on runs, one more loss), and
    R-Sparse at sparsity 0: switched on but reading every weight, so reported dense. GaLore's projected state is
    smaller than AdamW's full moments on the same model (its memory saving)."""
    sft_dirs: dict = {}
    base = run_row(tmp_path, sft_dirs, probes, "adamw", "none", "dense", "majority")
    galore = run_row(tmp_path, sft_dirs, probes, "galore2", "spg_mix", "rsparse", "deepconf_low")
    run_row(tmp_path, sft_dirs, probes, "muon", "d1", "teal", "deepconf_high")
    run_row(tmp_path, sft_dirs, probes, "adamw", "wd1", "rsparse", "majority", sparsity=0.0, tag="-s0")
    assert galore["optimizer_state_bytes_sft"] < base["optimizer_state_bytes_sft"]
    # an SFT start trained with another optimizer family is refused by name, before any training
    cfg = apply_overrides(cs.Config(), TINY + switches("galore2", "d1", "dense", "majority")
                          + [f"init_from={sft_dirs['adamw']}", f"run_dir={tmp_path / 'wrong-family'}"])
    with pytest.raises(ConfigError, match="trained with the 'adamw' optimizer.*'galore_adamw'"):
        cs.run(cfg)


def pairwise_rows():
    """12 rows covering every pair of values of any two switches: all (optimizer, loss) pairs, serve = (a + b)
    mod 3 and vote = (a + 2b) mod 3 (for b = 0, 1, 2 the differences serve − vote are distinct residues)."""
    opts, serves, votes = cs.FAMILIES, cs.SERVE_METHODS, list(cs.VOTE_KEEP)
    return [(opts[a], LOSSES[b], serves[(a + b) % 3], votes[(a + 2 * b) % 3]) for a in range(3) for b in range(4)]


def test_pairwise_rows_cover_every_pair():
    rows = pairwise_rows()
    levels = [cs.FAMILIES, LOSSES, cs.SERVE_METHODS, list(cs.VOTE_KEEP)]
    for i, j in itertools.combinations(range(4), 2):
        assert {(r[i], r[j]) for r in rows} == set(itertools.product(levels[i], levels[j])), (i, j)


@pytest.mark.slow
def test_pairwise_combinations(tmp_path, probes):
    sft_dirs: dict = {}
    for row in sorted(pairwise_rows(), key=lambda r: cs.FAMILIES.index(r[0])):
        run_row(tmp_path, sft_dirs, probes, *row)


# ----------------------------------------------------------------------------------------------------------
# The switches as config, and the detectors on states built here.


def test_switches_set_both_phases_and_bad_values_are_clear_errors():
    c = apply_overrides(cs.Config(), ["optimizer=galore2", "vote=deepconf_high", "vote.traces=16", "loss=none"])
    assert c.vote.method == "deepconf_high" and c.vote.traces == 16 and c.vote.keep_fraction == 0.9
    assert c.rl.loss == "none"
    sft, rl = c.sft_phase().optim, c.family(c.optim)
    assert type(sft).__name__ == type(rl).__name__ == "GaLoreAdamWConfig" and sft.projector == "randomized"
    assert (sft.learning_rate, rl.learning_rate) == (c.sft.optim.learning_rate, c.optim.learning_rate) != (1e-3, 1e-3)
    for bad, says in [(["optimizer=galore"], "optimizer"), (["vote=deepconf"], "vote"),
                      (["serve.sparsity=0.5"], "serve.method"), (["serve.method=sparse"], "serve.method"),
                      (["galore.learning_rate=1"], "phase setting"), (["sft.optim=muon"], "optimizer="),
                      (["rl.loss=grpo"], "loss"), (["vote.traces=4", "vote.temperature=0"], "temperature")]:
        with pytest.raises(ConfigError, match=says):
            apply_overrides(cs.Config(), bad)


@pytest.mark.parametrize("family", cs.FAMILIES)
def test_optimizer_family_is_read_off_the_state(family):
    """The detector names the family from the state alone; GaLore's moments are [r, n] / [m, r] with r = a
    quarter of the smaller side (16 of the 64-wide matrices), and its state is smaller than AdamW's."""
    c = apply_overrides(cs.Config(), [f"optimizer={family}"])
    params = init_params(c.sft.model, jax.random.PRNGKey(0))
    state = c.family(c.sft.optim).build(10).init(params)
    found, ev = cs.optimizer_family_of(state)
    assert found == family
    full = cs.state_bytes(c.sft.optim.build(10).init(params))  # AdamW's
    if family == "galore2":
        leaves = [n for n in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, cs.GaLoreLeafState))
                  if isinstance(n, cs.GaLoreLeafState)]
        assert len(leaves) == ev["galore_projected_leaves"] == 3 * 7  # 3 layers × (q, k, v, o, gate, up, down)
        assert all(16 in n.mu.shape and n.mu.shape == n.nu.shape and n.projector.shape[1] == 16 for n in leaves)
        assert cs.state_bytes(state) < full
    else:
        assert ev["galore_leaves"] == 0


def test_vote_uses_deepconf_filter_on_step_confidences():
    """Two puzzles, K = 4 traces: majority picks the most frequent answer; DeepConf-low keeps only the most
    confident trace (lowest-group confidence over the denoising steps) and so follows it."""
    sure, unsure = np.full(8, 0.99, np.float32), np.full(8, 0.3, np.float32)
    texts = [["<answer>1111</answer>"] * 3 + ["<answer>2222</answer>"],
             ["<answer>3333</answer>", "none", "<answer>4444</answer>", "<answer>4444</answer>"]]
    conf = np.stack([unsure, unsure, unsure, sure, sure, unsure, unsure, unsure])
    step = np.tile(np.arange(8, dtype=np.int32), (8, 1))
    c = cs.VoteConfig(method="deepconf_low", traces=4, steps=8, window=2, tail=2)
    winner, ev, majority = cs.vote(c, texts, step, conf)
    assert majority.tolist() == [0, 2] and winner.tolist() == [3, 0]
    assert ev == {"traces_per_problem": 4, "answered_traces": 7, "voting_traces": 2, "filtered_traces": 5}
    winner, ev, _ = cs.vote(dataclasses.replace(c, method="majority"), texts, step, conf)
    assert winner.tolist() == [0, 2] and ev["filtered_traces"] == 0
