"""Shared by the dLLM SFT experiments: the tiny bidirectional model for a `TagVocab`, masked SFT through the one
trainer (`jaxllm.train.sft`), and scoring of sampler settings on held-out prompts."""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.data.tokenizers import TagVocab as Vocab
from jaxllm.models import Model, TransformerConfig, get_preset
from jaxllm.optim import build
from jaxllm.sampling.diffusion import DiffusionSamplerConfig, generate
from jaxllm.train import save_figure, train
from jaxllm.train.sft import masked_sft_task, pack_sft_rows

# AdamW(0.9, 0.99), weight decay 0.01, global-norm clipping at 1, warmup over 10% of the steps then cosine to
# 0.1x peak: the experiments' `optim` default.
SFT_OPTIM = build.AdamWConfig(learning_rate=3e-3, b2=0.99, weight_decay=0.01, grad_clip=1.0, schedule="cosine",
                              warmup_fraction=0.1, min_lr_ratio=0.1)


def tiny_model(vocab: Vocab, seq_len: int, **fields) -> TransformerConfig:
    """The tiny bidirectional `tiny_llada` preset sized for `vocab` (its MASK id) and `seq_len` positions."""
    return get_preset("tiny_llada", vocab_size=len(vocab), max_seq_len=seq_len, mask_token_id=vocab.mask, **fields)


def check_model(model: TransformerConfig, vocab: Vocab, seq_len: int) -> None:
    """The experiment's `model` must be a masked-diffusion LM over `vocab` with room for `seq_len` positions."""
    check(not model.causal, "model.causal must be false (a masked diffusion LM)")
    check(model.vocab_size == len(vocab), f"model.vocab_size={model.vocab_size}, but the vocabulary has {len(vocab)}")
    check(model.mask_token_id == vocab.mask, f"model.mask_token_id={model.mask_token_id}, but MASK is {vocab.mask}")
    check(model.max_seq_len >= seq_len, f"model.max_seq_len={model.max_seq_len} < prompt + generation = {seq_len}")


def train_sft(mcfg, data: np.ndarray, prompt_len: int, trainer_cfg, run_dir: str, *, optim: build.OptimizerConfig,
              batch_size: int, seed: int, normalisation: str = "llada"):
    """Masked SFT (prompt never masked) on random mini-batches of `data`, through the one trainer."""
    task = masked_sft_task(Model(mcfg), data, prompt_len, optim.build(trainer_cfg.steps), batch_size=batch_size,
                           normalisation=normalisation)
    return train(trainer_cfg, task, run_dir, seed=seed)


def pack(vocab: Vocab, prompts: list[list[int]], answers: list[list[int]], prompt_len: int, gen_length: int):
    """[N, P + G] int32 SFT rows for `vocab` (`jaxllm.train.sft.pack_sft_rows`)."""
    return pack_sft_rows(prompts, answers, prompt_len, gen_length, pad_id=vocab.pad, eos_id=vocab.eos)


def parse_settings(spec: str) -> list[tuple[int, int, str]]:
    """"steps:block:remasking,..." -> [(steps, block_length, remasking)]."""
    out = []
    for item in spec.split(","):
        steps, block, remask = item.strip().split(":")
        remask = {"lc": "low_confidence", "low_confidence": "low_confidence", "random": "random"}[remask]
        out.append((int(steps), int(block), remask))
    return out


def evaluate_settings(mcfg, params, vocab: Vocab, prompts: np.ndarray, gen_length: int, settings, score: Callable,
                      batch: int = 128, seed: int = 0, temperature: float = 0.0) -> list[dict]:
    """For each (steps, block, remasking): greedy (τ=0) samples of every prompt, scored by `score(i, text)`
    (temperature > 0: samples at that temperature, keys from `seed`)."""
    rows = []
    model = Model(mcfg)
    for steps, block, remask in settings:
        scfg = DiffusionSamplerConfig(gen_length=gen_length, block_length=block, steps=steps, mask_id=vocab.mask,
                                      temperature=temperature, remasking=remask)
        t0 = time.perf_counter()
        texts = []
        for s in range(0, len(prompts), batch):
            chunk = prompts[s: s + batch]
            n = len(chunk)
            if n < batch:  # fixed shapes: pad the last batch by repeating a prompt
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
            out = generate(model, params, jnp.asarray(chunk), jax.random.PRNGKey(seed + s), scfg)
            gen = np.asarray(out.tokens)[:n, prompts.shape[1]:]
            texts.extend(vocab.decode(g) for g in gen)
        scores = [score(i, t) for i, t in enumerate(texts)]
        rows.append({"steps": steps, "block_length": block, "remasking": remask, "scores": scores,
                     "texts": texts, "seconds": time.perf_counter() - t0})
    return rows


def plot_accuracy_vs_steps(table: list[dict], run_dir: str, metric: str, ylabel: str) -> None:
    """plots/accuracy_vs_steps.png: `metric` against sampling steps, one line per (remasking, block length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for remask in ("low_confidence", "random"):
        for block in sorted({r["block_length"] for r in table}):
            pts = sorted((r["steps"], r[metric]) for r in table
                         if r["remasking"] == remask and r["block_length"] == block)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{remask}, block {block}")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(ylabel)
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    save_figure(fig, run_dir, "accuracy_vs_steps")
