"""Shared by the dLLM SFT experiments: a token vocabulary with tag tokens, masked SFT of a tiny bidirectional
Transformer through the one trainer, and scoring of sampler settings on held-out prompts."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm.config import check
from jaxllm.diffusion import model_logits_fn, sft_loss
from jaxllm.models import get_preset, init_params, logical_axes
from jaxllm.sampling.diffusion import DiffusionSamplerConfig, generate, transformer_apply_fn
from jaxllm.train import Task, save_figure, train

TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")


class Vocab:
    """Characters plus whole-tag tokens, PAD, EOS and MASK. Decoding renders the tags as in the reference's
    XML format (each tag on its own line), so rewards parse ordinary text."""

    def __init__(self, chars: str):
        self.items = ["<pad>", "<eos>", "<mask>", *TAGS, *chars]
        self.ids = {s: i for i, s in enumerate(self.items)}
        self.pad, self.eos, self.mask = 0, 1, 2

    def __len__(self):
        return len(self.items)

    def encode(self, pieces: Sequence[str]) -> list[int]:
        """Pieces are tags or strings of characters."""
        out = []
        for p in pieces:
            out.extend([self.ids[p]] if p in self.ids and len(p) > 1 else [self.ids[c] for c in p])
        return out

    def decode(self, ids) -> str:
        text = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            s = self.items[i]
            if s in TAGS:
                s = ("\n" if s.startswith("</") else "") + s + "\n"
            elif i in (self.pad, self.mask):
                s = ""
            text.append(s)
        return "".join(text).replace("\n\n", "\n").strip("\n")


def pack(vocab: Vocab, prompts: list[list[int]], answers: list[list[int]], prompt_len: int, gen_length: int):
    """[N, P + G] int32: left-padded prompts, answers padded with EOS (trained on, as LLaDA SFT)."""
    out = np.full((len(prompts), prompt_len + gen_length), vocab.eos, np.int32)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        check(len(p) <= prompt_len, f"prompt of {len(p)} tokens exceeds prompt_len={prompt_len}")
        check(len(a) < gen_length, f"answer of {len(a)} tokens does not fit gen_length={gen_length} with an EOS")
        out[i, :prompt_len] = vocab.pad
        out[i, prompt_len - len(p): prompt_len] = p
        out[i, prompt_len: prompt_len + len(a)] = a
    return out


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 384


def model_config(m: ModelConfig, vocab: Vocab, seq_len: int):
    return get_preset("tiny_llada", vocab_size=len(vocab), d_model=m.d_model, n_layers=m.n_layers,
                      n_heads=m.n_heads, d_ff=m.d_ff, max_seq_len=seq_len, mask_token_id=vocab.mask)


def train_sft(mcfg, data: np.ndarray, prompt_len: int, trainer_cfg, run_dir: str, *, lr: float, batch_size: int,
              seed: int, normalisation: str = "llada"):
    """Masked SFT (prompt never masked) on random mini-batches of `data`, through the one trainer."""
    data_j = jnp.asarray(data)
    prompt_mask = jnp.broadcast_to(jnp.arange(data.shape[1]) < prompt_len, (batch_size, data.shape[1]))

    def loss_fn(params, batch, rng):
        k_idx, k_mask = jax.random.split(rng)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data_j.shape[0])
        return sft_loss(model_logits_fn(mcfg, params), k_mask, data_j[idx], prompt_mask, mcfg.mask_token_id,
                        normalisation=normalisation)

    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, max(trainer_cfg.steps // 10, 1)),
                                               max(trainer_cfg.steps, 2), lr * 0.1)
    task = Task(init_params=lambda k: init_params(mcfg, k), loss_fn=loss_fn,
                optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b2=0.99, weight_decay=0.01)),
                logical_axes=logical_axes(mcfg))
    return train(trainer_cfg, task, run_dir, seed=seed)


def parse_settings(spec: str) -> list[tuple[int, int, str]]:
    """"steps:block:remasking,..." -> [(steps, block_length, remasking)]."""
    out = []
    for item in spec.split(","):
        steps, block, remask = item.strip().split(":")
        remask = {"lc": "low_confidence", "low_confidence": "low_confidence", "random": "random"}[remask]
        out.append((int(steps), int(block), remask))
    return out


def evaluate_settings(mcfg, params, vocab: Vocab, prompts: np.ndarray, gen_length: int, settings, score: Callable,
                      batch: int = 128, seed: int = 0) -> list[dict]:
    """For each (steps, block, remasking): greedy (τ=0) samples of every prompt, scored by `score(i, text)`."""
    rows = []
    apply_fn = transformer_apply_fn(mcfg)
    for steps, block, remask in settings:
        scfg = DiffusionSamplerConfig(gen_length=gen_length, block_length=block, steps=steps, mask_id=vocab.mask,
                                      temperature=0.0, remasking=remask)
        t0 = time.perf_counter()
        texts = []
        for s in range(0, len(prompts), batch):
            chunk = prompts[s: s + batch]
            n = len(chunk)
            if n < batch:  # fixed shapes: pad the last batch by repeating a prompt
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
            out = generate(apply_fn, params, jnp.asarray(chunk), jax.random.PRNGKey(seed + s), scfg)
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
