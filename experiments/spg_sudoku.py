"""SPG RL on 4×4 Sudoku: RL (spg_mix | spg_eubo | spg_elbo | d1 | wd1) from the dllm_sudoku_sft start.

Start: the SFT checkpoint of a `dllm_sudoku_sft` run (`init_from=<its run_dir>`), or, when init_from is empty,
one trained first inside this command under `<run_dir>/sft_run` with the `sft.*` settings. RL prompts: the
SFT training puzzles (200 training solutions of SPG's solution-disjoint split); reward: `sudoku_reward`
(the share of the puzzle's empty cells the completion fills correctly, SPG's reward), on the host. Held-out
evaluation before and after (the trainer's eval at step 0 and at the end): greedy low-confidence sampling
of the 256 held-out puzzles (88 unseen solutions), scored as SPG's cell accuracy (correct empty cells / all
empty cells), plus the share solved. summary.json: heldout_reward_before / _after (cell accuracy), loss,
iterations, seconds, ...; plots/reward.png.

    python -m experiments spg_sudoku loss=d1 init_from=runs/dllm_sudoku_sft/<stamp> seed=1
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, ClassVar, NamedTuple

import numpy as np

from experiments import _dllm_sft as dllm
from experiments import _spg as spg
from experiments import dllm_sudoku_sft as sft_exp
from jaxllm.config import check
from jaxllm.data.tasks import sudoku
from jaxllm.optim import build
from jaxllm.rewards import sudoku_reward
from jaxllm.rewards.sudoku import extract_sudoku_digits
from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import PromptSet
from jaxllm.rl.lora import LoraConfig
from jaxllm.train import TrainerConfig, prepare_run_dir
from jaxllm.train.trainer import TrainState

# SPG's Sudoku settings (dllm_rl.md §5.4) at toy scale: β = 1 for EUBO and mixture, ω = 0.5, m = 2 block-wise
# draws with p = 0.15 perturbation, μ = 4, group 6; masking blocks of 8 over the 32-token generation (4
# blocks, as SPG's 32-token blocks over 256); d1's ε = 0.5 and KL β = 0.04 to the SFT start.
RL_DEFAULT = RLLossConfig(mask_id=2, group_size=6, beta=1.0, omega=0.5, num_mask_draws=2, block_length=8,
                          p_mask_clean=0.15, inner_steps=4)


def ones_reward(completion: str, puzzle: str, solution: str) -> float:
    """Diagnostic reward: the share of the puzzle's empty cells that the answer fills with '1' (0 without an
    answer), parsed as `sudoku_reward`; learnable without solving anything."""
    digits = extract_sudoku_digits(completion)
    empty = [i for i in range(16) if puzzle[i] == "0"]
    if not digits or not empty:
        return 0.0
    digits = (digits + "0" * 16)[:16]
    return sum(digits[i] == "1" for i in empty) / len(empty)


REWARDS = {"sudoku": sudoku_reward, "ones": ones_reward}


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0  # the RL seed (rollouts, masks); the SFT start has its own sft.seed
    init_from: str = ""  # a dllm_sudoku_sft run_dir; empty: train one first in <run_dir>/sft_run
    sft: sft_exp.Config = sft_exp.Config(settings="32:32:lc")
    rl: RLLossConfig = RL_DEFAULT
    rl_run: spg.RLSettings = spg.RLSettings(temperature=0.7, eval_sampled=True)
    optim: build.OptimizerConfig = spg.RL_OPTIM
    lora: LoraConfig = LoraConfig()  # rank 0: full fine-tuning; e.g. lora.rank=8 lora.alpha=16
    # "sudoku": SPG's reward. "ones": a diagnostic that ignores the solution: the share of the puzzle's empty
    # cells the answer fills with '1' (training and held-out), to check that the loop moves the policy the
    # reward's way (docs/results/spg.md, diagnosis).
    reward: str = "sudoku"
    trainer: TrainerConfig = spg.RL_TRAINER

    ALIASES: ClassVar[dict] = spg.ALIASES  # loss= is rl.loss (spg_mix | spg_eubo | spg_elbo | d1 | wd1)

    def __post_init__(self):
        spg.check_config(self)
        check(self.reward in REWARDS, f"reward={self.reward!r} is not one of {sorted(REWARDS)}")


def sft_start(sft: sft_exp.Config, run_dir: str, init_from: str = "") -> str:
    """The SFT run dir to start from: init_from, or one trained now with `sft` in <run_dir>/sft_run (skipped
    when already finished)."""
    if init_from:
        return init_from
    sft_dir = f"{run_dir}/sft_run"
    if not (Path(sft_dir) / "summary.json").exists():
        sft_exp.run(dataclasses.replace(sft, run_dir=sft_dir))
    return sft_dir


class SudokuRL(NamedTuple):
    """What an RL run on Sudoku starts from (`setup`): the SFT checkpoint, the RL prompts, the reward and the
    held-out protocol."""

    sft_dir: str
    start: TrainState  # the SFT checkpoint: parameters and the SFT optimizer's state
    sft_step: int
    vocab: dllm.Vocab
    train_items: list  # the RL prompts' puzzles (the first rl_run.n_prompts SFT training puzzles)
    test: list  # the held-out puzzles
    prompts: PromptSet  # [n_prompts, 16]
    test_prompts: np.ndarray  # [n_test, 16] int32
    reward_fn: Callable[[int, np.ndarray], float]  # (RL prompt index, completion ids) -> reward
    score: Callable[[int, str], float]  # (held-out index, completion text) -> reward
    cells: Callable[[np.ndarray], float]  # held-out scores [n_test] -> SPG's cell accuracy
    heldout: Callable[[dict], dict]  # params -> the held-out figures (the trainer's eval_fn)


def setup(sft: sft_exp.Config, sft_dir: str, rl_run: spg.RLSettings, reward_name: str = "sudoku") -> SudokuRL:
    """Load the SFT start of `sft_dir` (trained with `sft`) and build the RL prompts, reward and held-out
    evaluation on the SFT run's own split and puzzles (same seeds as dllm_sudoku_sft.make_data)."""
    s = sft
    vocab = dllm.Vocab(sft_exp.CHARS)
    start, sft_step = spg.load_sft_state(sft_dir, s.model, s.optim, s.trainer.steps)
    split = sudoku.solution_split(seed=42)
    clues = (s.min_clues, s.max_clues)
    train_items = sudoku.generate_puzzles(s.seed + 1, split.train_solutions, s.n_train, clues)
    train_items = train_items[: rl_run.n_prompts]
    test = sudoku.generate_puzzles(s.seed + 2, split.test_solutions, s.n_test, clues)
    plen = sft_exp.PROMPT_LEN
    prompts = PromptSet(np.array([vocab.encode([t.puzzle]) for t in train_items], np.int32))
    test_prompts = np.array([vocab.encode([t.puzzle]) for t in test], np.int32)
    check(prompts.tokens.shape[1] == plen, "puzzles are 16 tokens")

    reward = REWARDS[reward_name]

    def reward_fn(i, completion):
        return reward(vocab.decode(completion), train_items[i].puzzle, train_items[i].solution)

    def score(i, text):
        return reward(text, test[i].puzzle, test[i].solution)

    empties = np.array([t.puzzle.count("0") for t in test])
    evaluate = spg.greedy_eval(s.model, vocab, test_prompts, s.gen_length, rl_run.eval_steps, rl_run.eval_block,
                               score)
    sampled = spg.greedy_eval(s.model, vocab, test_prompts, s.gen_length, rl_run.sample_steps, rl_run.sample_block,
                              score, temperature=rl_run.temperature)

    def cells(sc):  # SPG's cell accuracy: correct empty cells / all empty cells
        return float(np.sum(np.round(np.asarray(sc) * empties)) / np.sum(empties))

    def heldout(p):
        sc = np.array(evaluate(p))
        out = {"reward": cells(sc), "solved": float(np.mean(sc == 1.0)), "mean_reward": float(np.mean(sc))}
        if rl_run.eval_sampled:  # the rollout sampler's distribution (τ > 0), same keys before and after
            sc = np.array(sampled(p))
            out.update(sampled_reward=cells(sc), sampled_solved=float(np.mean(sc == 1.0)))
        return out

    return SudokuRL(sft_dir, start, sft_step, vocab, train_items, test, prompts, test_prompts, reward_fn, score,
                    cells, heldout)


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    s = config.sft
    r = setup(s, sft_start(s, config.run_dir, config.init_from), config.rl_run, config.reward)
    return spg.run_rl(config, task_name="sudoku", mcfg=s.model, vocab=r.vocab, sft_params=r.start.params,
                      prompts=r.prompts, reward_fn=r.reward_fn, heldout_fn=r.heldout, gen_length=s.gen_length,
                      extra_summary={"init_from": r.sft_dir, "sft_step": r.sft_step, "reward": config.reward,
                                     "metric": "cell_accuracy" if config.reward == "sudoku" else "ones_share"})
