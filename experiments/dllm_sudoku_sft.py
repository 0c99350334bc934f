"""dLLM Sudoku SFT: a tiny masked diffusion LM trained from scratch on 4×4 Sudoku, scored per sampler setting.

Data: unique-solution puzzles from SPG's solution-disjoint split (200 training solutions, 88 held out). The
prompt is the 16-character puzzle; the answer is `<answer>` + the 16-digit solution + `</answer>`, padded with
EOS to gen_length (tags are single tokens; decoding renders them as text, so `sudoku_reward` parses ordinary
XML-tagged text). Training: LLaDA masked SFT (prompt never masked, answer-length normalisation) through the
one trainer. Evaluation: greedy LLaDA sampling of every held-out puzzle for each sampler setting
(steps:block_length:remasking), scored with `sudoku_reward`; accuracy is SPG's cell accuracy (correct empty
cells / all empty cells) and the fraction of puzzles solved exactly.

    python -m experiments dllm_sudoku_sft trainer.steps=1200
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments import _dllm_sft as common
from jaxllm.config import check
from jaxllm.data.tasks import sudoku
from jaxllm.models import TransformerConfig
from jaxllm.optim import build
from jaxllm.rewards import sudoku_reward
from jaxllm.train import TrainerConfig, prepare_run_dir, write_summary

PROMPT_LEN = 16
CHARS = "0123456789"


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    n_train: int = 20000  # training puzzles (over the 200 training solutions)
    n_test: int = 256  # held-out puzzles (over the 88 held-out solutions), as SPG's test set size
    min_clues: int = 6
    max_clues: int = 10
    gen_length: int = 32
    model: TransformerConfig = common.tiny_model(common.Vocab(CHARS), 256, d_model=64, n_layers=3, n_heads=4, d_ff=192)
    optim: build.OptimizerConfig = common.SFT_OPTIM
    batch_size: int = 64
    normalisation: str = "llada"  # llada | d1
    settings: str = "32:32:lc,32:32:random,16:32:lc,16:32:random,8:32:lc,8:32:random,32:8:lc,32:8:random,8:8:lc"
    trainer: TrainerConfig = TrainerConfig(steps=1200, log_every=100, checkpoint_every=400, progress=True)

    def __post_init__(self):
        check(4 <= self.min_clues <= self.max_clues <= 15, "need 4 <= min_clues <= max_clues <= 15")
        check(self.gen_length >= 19, f"gen_length={self.gen_length} must hold <answer> + 16 digits + </answer> + EOS")
        common.parse_settings(self.settings)
        common.check_model(self.model, common.Vocab(CHARS), PROMPT_LEN + self.gen_length)


def make_data(config: Config, vocab: common.Vocab):
    split = sudoku.solution_split(seed=42)
    clues = (config.min_clues, config.max_clues)
    train = sudoku.generate_puzzles(config.seed + 1, split.train_solutions, config.n_train, clues)
    test = sudoku.generate_puzzles(config.seed + 2, split.test_solutions, config.n_test, clues)
    prompts = [vocab.encode([t.puzzle]) for t in train]
    answers = [vocab.encode(["<answer>", t.solution, "</answer>"]) for t in train]
    data = common.pack(vocab, prompts, answers, PROMPT_LEN, config.gen_length)
    test_prompts = common.pack(vocab, [vocab.encode([t.puzzle]) for t in test], [[] for _ in test], PROMPT_LEN,
                               config.gen_length)[:, :PROMPT_LEN]
    return data, test, test_prompts


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    vocab = common.Vocab(CHARS)
    data, test, test_prompts = make_data(config, vocab)
    mcfg = config.model
    result = common.train_sft(mcfg, data, PROMPT_LEN, config.trainer, f"{config.run_dir}/sft", optim=config.optim,
                              batch_size=config.batch_size, seed=config.seed, normalisation=config.normalisation)
    params = result.state.params

    def score(i, text):
        return sudoku_reward(text, test[i].puzzle, test[i].solution)

    rows = common.evaluate_settings(mcfg, params, vocab, test_prompts, config.gen_length,
                                    common.parse_settings(config.settings), score, seed=config.seed)
    empties = np.array([t.puzzle.count("0") for t in test])
    table = []
    for r in rows:
        s = np.array(r["scores"])
        table.append({"steps": r["steps"], "block_length": r["block_length"], "remasking": r["remasking"],
                      "cell_accuracy": float(np.sum(np.round(s * empties)) / np.sum(empties)),
                      "solved": float(np.mean(s == 1.0)), "seconds": round(r["seconds"], 2)})
        print(f"steps {r['steps']:3d} block {r['block_length']:3d} {r['remasking']:14s} "
              f"cell acc {table[-1]['cell_accuracy']:.3f} solved {table[-1]['solved']:.3f}", flush=True)
    common.plot_accuracy_vs_steps(table, config.run_dir, "cell_accuracy", "held-out cell accuracy")
    final_loss = [h["loss"] for h in result.history if "loss" in h][-1]
    summary = {"final_train_loss": final_loss, "n_params": int(sum(x.size for x in _leaves(params))),
               "n_train": config.n_train, "n_test": config.n_test, "table": table,
               "example": rows[0]["texts"][0]}
    write_summary(config.run_dir, summary, "dllm_sudoku_sft")
    return summary


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)
