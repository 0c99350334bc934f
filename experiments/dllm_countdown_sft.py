"""dLLM Countdown SFT: a tiny masked diffusion LM trained from scratch on solver traces, scored per sampler setting.

Data: 3-number Countdown problems generated locally (solvable by construction). The prompt is
"n1,n2,n3=target"; the answer is the solver's reasoning trace and expression in the reference's XML format,
`<reasoning>` "a op b=c" lines `</reasoning><answer>` expression `</answer>`, padded with EOS (tags are single
tokens; decoding renders them as text so `countdown_reward` parses ordinary text). Training: LLaDA masked
SFT through the one trainer. Evaluation: greedy LLaDA sampling of held-out problems for each sampler setting,
scored with `countdown_reward` (1.0 correct, 0.1 well-formed but wrong, 0 no answer); accuracy = share of 1.0.

    python -m experiments dllm_countdown_sft trainer.steps=1200
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments import _dllm_sft as common
from jaxllm.config import check
from jaxllm.data.tasks import countdown
from jaxllm.models import TransformerConfig
from jaxllm.optim import build
from jaxllm.rewards import countdown_reward
from jaxllm.train import TrainerConfig, prepare_run_dir, write_summary

CHARS = "0123456789+-*/(),=\n"


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    seed: int = 0
    n_train: int = 20000
    n_test: int = 256
    max_number: int = 6  # numbers drawn from 1..max_number
    max_target: int = 30
    prompt_len: int = 12
    gen_length: int = 48
    model: TransformerConfig = common.tiny_model(common.Vocab(CHARS), 256, d_model=64, n_layers=3, n_heads=4, d_ff=192)
    optim: build.OptimizerConfig = common.SFT_OPTIM
    batch_size: int = 64
    normalisation: str = "llada"
    settings: str = "48:48:lc,48:48:random,24:48:lc,24:48:random,48:16:lc,48:16:random,12:48:lc"
    trainer: TrainerConfig = TrainerConfig(steps=1200, log_every=100, checkpoint_every=400, progress=True)

    def __post_init__(self):
        check(self.max_number >= 1 and self.max_target >= 1, "max_number and max_target must be >= 1")
        common.parse_settings(self.settings)
        common.check_model(self.model, common.Vocab(CHARS), self.prompt_len + self.gen_length)


def _items(config: Config):
    """Train and held-out problems; held-out (numbers, target) pairs never appear in training."""
    items = countdown.generate(config.seed, config.n_train + 4 * config.n_test, num_count=3,
                               number_range=(1, config.max_number), target_range=(1, config.max_target))
    seen, test = set(), []
    for it in items[config.n_train:]:
        key = (tuple(sorted(it.numbers)), it.target)
        if key not in seen and len(test) < config.n_test:
            seen.add(key)
            test.append(it)
    train = [it for it in items[: config.n_train] if (tuple(sorted(it.numbers)), it.target) not in seen]
    return train, test


def _prompt(vocab, it):
    return vocab.encode([",".join(map(str, it.numbers)) + "=" + str(it.target)])


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    vocab = common.Vocab(CHARS)
    train, test = _items(config)
    answers = []
    for it in train:
        reasoning, expr = countdown.reasoning_trace(it.numbers, it.target)
        answers.append(vocab.encode(["<reasoning>", reasoning, "</reasoning>", "<answer>", expr, "</answer>"]))
    data = common.pack(vocab, [_prompt(vocab, it) for it in train], answers, config.prompt_len, config.gen_length)
    test_prompts = common.pack(vocab, [_prompt(vocab, it) for it in test], [[] for _ in test], config.prompt_len,
                               config.gen_length)[:, : config.prompt_len]
    mcfg = config.model
    result = common.train_sft(mcfg, data, config.prompt_len, config.trainer, f"{config.run_dir}/sft", optim=config.optim,
                              batch_size=config.batch_size, seed=config.seed, normalisation=config.normalisation)
    params = result.state.params

    def score(i, text):
        return countdown_reward(text, test[i].numbers, test[i].target)

    rows = common.evaluate_settings(mcfg, params, vocab, test_prompts, config.gen_length,
                                    common.parse_settings(config.settings), score, seed=config.seed)
    table = []
    for r in rows:
        s = np.array(r["scores"])
        table.append({"steps": r["steps"], "block_length": r["block_length"], "remasking": r["remasking"],
                      "accuracy": float(np.mean(s == 1.0)), "well_formed": float(np.mean(s >= 0.1)),
                      "seconds": round(r["seconds"], 2)})
        print(f"steps {r['steps']:3d} block {r['block_length']:3d} {r['remasking']:14s} "
              f"accuracy {table[-1]['accuracy']:.3f} well-formed {table[-1]['well_formed']:.3f}", flush=True)
    common.plot_accuracy_vs_steps(table, config.run_dir, "accuracy", "held-out accuracy")
    final_loss = [h["loss"] for h in result.history if "loss" in h][-1]
    summary = {"final_train_loss": final_loss, "n_params": int(sum(x.size for x in jax.tree.leaves(params))),
               "n_train": len(train), "n_test": len(test), "table": table, "example": rows[0]["texts"][0]}
    write_summary(config.run_dir, summary, "dllm_countdown_sft")
    return summary
