"""Language Self-Play benchmark: seconds per self-play iteration by phase, through the one trainer.

One iteration of `jaxllm.rl.lsp.LSPSource` + the trainer's update (L_Sol + α_Ch·L_Ch, AdamW):
challenger sampling (N queries, KV-cache sampler), solver sampling (N·G answers), scoring (host reward +
programmatic judge), batch (training rows + π_Ref log-probs), update. Read from the run's metrics rows
(lsp/*_s, perf/update_s) after warm-up iterations (the first compiles). Random weights: a random model rarely
emits the end token, so every generation runs to its maximum length (the worst case per iteration).

    .venv/bin/python -m bench.run_all lsp                      # tiny and 140m (140m: 2 iterations at N=2, G=2)
    .venv/bin/python -m bench.bench_lsp --shapes tiny --iterations 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import jax
import optax

from bench.common import RESULTS, header
from jaxllm.models import Model, get_preset, init_params
from jaxllm.rl.loop import make_rl_task
from jaxllm.rl.lsp import LSPConfig, LSPFormat, LSPSource, lsp_loss_fn, pair_judge
from jaxllm.train import TrainerConfig, train

# tiny: the lsp_arith decoder and sizes (N = G = 8, queries ≤ 16 tokens, answers ≤ 4); 140m: MobileLLM-R1-140M's
# shape (its 128k vocabulary) at N = G = 2 so that an iteration takes seconds, not minutes, on a CPU.
SHAPES = {"tiny": dict(preset="tiny_llama", model=dict(vocab_size=20, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                                                       head_dim=16, d_ff=256, max_seq_len=32), N=8, G=8),
          "140m": dict(preset="mobilellm_r1_140m", model=dict(max_seq_len=32), N=2, G=2)}
PHASES = ("lsp/challenger_s", "lsp/solver_s", "lsp/score_s", "lsp/batch_s", "perf/update_s")


def iteration_phases(shape: str, iterations: int, warmup: int) -> dict:
    spec = SHAPES[shape]
    cfg = get_preset(spec["preset"], **spec["model"])
    model = Model(cfg)
    params = init_params(cfg, jax.random.PRNGKey(0))
    fmt = LSPFormat(challenger_prompt=(2, 3), solver_prefix=(3,), solver_suffix=(4,), eos_id=1, pad_id=0,
                    max_query_tokens=16, max_answer_tokens=4)
    lcfg = LSPConfig(n_queries=spec["N"], group_size=spec["G"], self_reward=True)
    judge = pair_judge(lambda ro, b: float(len(ro.queries[b // lcfg.group_size]) > 0) * 7.0)
    source = LSPSource(model, lcfg, fmt, lambda q, a: float(len(a) == len(q) % 3), params, judge=judge)
    # the trainer's copy is a second init with the same key (the state is donated, so it must not be `params`,
    # which the source keeps as π_Ref); no host copy, to keep 140m within a loaded box's memory
    task = make_rl_task(model, None, optax.adamw(1e-4), source, lambda key: init_params(cfg, jax.random.PRNGKey(0)),
                        loss_fn=lsp_loss_fn(model, lcfg))
    steps = warmup + iterations
    tcfg = TrainerConfig(steps=steps, log_every=1, checkpoint_every=10 * steps, progress=False, async_checkpoint=False)
    with tempfile.TemporaryDirectory() as d:
        hist = train(tcfg, task, d).history
    rows = [h for h in hist if "lsp/challenger_s" in h and h["step"] > warmup]
    out = {k: statistics.median(r[k] for r in rows) for k in PHASES}
    out.update(params=sum(x.size for x in jax.tree.leaves(params)), N=lcfg.n_queries, G=lcfg.group_size,
               rows=lcfg.n_queries * (1 + lcfg.group_size), T=fmt.row_len, iterations=len(rows))
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="tiny,140m")
    ap.add_argument("--iterations", type=int, default=0, help="timed iterations (0: 5 tiny, 2 for 140m)")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    lines = []
    for shape in args.shapes.split(","):
        n = args.iterations or (5 if shape == "tiny" else 2)
        r = iteration_phases(shape, n, warmup=1)
        total = sum(r[k] for k in PHASES)
        lines.append(f"| {shape} | {r['params'] / 1e6:.2f} M | {r['N']} × {r['G']} | {r['rows']} × {r['T']} | "
                     + " | ".join(f"{r[k]:.3f}" for k in PHASES) + f" | {total:.3f} | {r['iterations']} |")
        print(lines[-1], flush=True)
        write_section(report(argv, load, lines))  # after each shape: a later one killed (memory) keeps the earlier rows


def report(argv: list[str], load, lines: list[str]) -> str:
    cmd = "python -m bench.bench_lsp " + " ".join(argv) if argv else "python -m bench.run_all lsp"
    head = header("Language Self-Play: seconds per self-play iteration by phase", cmd).replace("# ", "## ", 1)
    text = (SECTION + "\n" + head
            + f"Load average (1/5/15 min) at the start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
            "(the shared box: other jobs run beside this one, so these are upper bounds).\n\n"
            "| model | parameters | N × G | training rows × T | challenger sampling s | solver sampling s | scoring s | "
            "batch (rows + π_Ref log-probs) s | update s | total s | timed iterations |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n" + NOTES + "\n" + END + "\n")
    return text


SECTION, END = "<!-- bench_lsp: begin -->", "<!-- bench_lsp: end -->"
NOTES = """
Phases: challenger sampling = N rows of the KV-cache sampler (`jaxllm.sampling.autoregressive.generate`) up to 16
tokens; solver sampling = N·G rows up to 4 tokens on prompts padded to one length; scoring = the host reward and
the rubric judge (pure Python); batch = building the right-padded rows and one jitted forward of π_Ref for the
KL; update = the trainer's jitted step (forward + backward of L_Sol + α_Ch·L_Ch, AdamW), read from perf/update_s.
Median over the timed iterations after one warm-up (compile) iteration."""


def write_section(text: str) -> None:
    """Put the LSP section into docs/results/rl_bench.md (replacing an earlier one between the markers), so that
    bench_rl's own rewrite of the file and this one do not clobber each other's tables for long: rerun both."""
    path = RESULTS / "rl_bench.md"
    old = path.read_text() if path.exists() else ""
    if SECTION in old and END in old:
        new = old[: old.index(SECTION)] + text + old[old.index(END) + len(END) + 1:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)
    print(f"wrote the LSP section of {path}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
