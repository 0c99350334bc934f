"""Decoder benchmark: jaxllm vs transformers + torch on the same config, batch and sequence (fp32, CPU).

- train step (forward + backward + AdamW update) tokens/s, MobileLLM-R1-140M shape and a tiny shape
- forward-only tokens/s
- greedy decode tokens/s at batch 1 (our jitted KV-cache sampler vs transformers `generate`)
- peak memory of our train step from `compiled.memory_analysis()`, and its FLOP rate from `cost_analysis()`

Timing is interleaved (ours, theirs, ours, ...) with >= 5 repeats; ratios are per-repeat (theirs / ours time,
so > 1 means we are faster), median and range. Run: `python -m bench.run_all decoder`
(`python -m bench.bench_decoder --quick` for the tiny shape only).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import header, interleaved, ratio_stats, write_result
from jaxllm import hf
from jaxllm.models import Model, get_preset
from jaxllm.sampling.autoregressive import SamplingConfig, generate
from jaxllm.train.lm import lm_task
from jaxllm.train.trainer import init_state, make_train_step

REPEATS = 5


def _torch_model(cfg, device="cpu"):
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    hf_cfg = {k: v for k, v in hf.config_to_hf(cfg).items() if k not in ("architectures", "model_type", "torch_dtype")}
    torch.manual_seed(0)
    model = Llama4ForCausalLM(Llama4TextConfig(**hf_cfg)).float().to(device)
    model.config._attn_implementation = "sdpa"
    return model


def _fmt(sec: list[float], tokens: int) -> str:
    return f"{tokens / statistics.median(sec):,.0f}"


def _ratio(ours: list[float], theirs: list[float]) -> str:
    med, lo, hi = ratio_stats(theirs, ours)  # time ratio theirs/ours = our speed-up
    return f"{med:.2f}× ({lo:.2f}–{hi:.2f})"


def bench_shape(name: str, cfg, batch: int, seq: int, decode_prompt: int, decode_new: int, rows: list,
                device: str = "cpu"):
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    key = jax.random.PRNGKey(0)
    tokens_np = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    batch_j = {"tokens": jnp.asarray(tokens_np), "loss_mask": jnp.ones(tokens_np.shape, jnp.float32)}
    opt = optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    task = lm_task(cfg, opt, None)
    state = init_state(task, 0)
    step = jax.jit(make_train_step(task), donate_argnums=0)
    compiled = step.lower(state, batch_j).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    holder = {"state": state}

    def ours_train():
        holder["state"], m = compiled(holder["state"], batch_j)
        m["loss"].block_until_ready()

    model = _torch_model(cfg, device)
    torch_opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    t_in = torch.as_tensor(tokens_np[:, :-1], dtype=torch.long, device=device)
    t_lab = torch.as_tensor(tokens_np, dtype=torch.long, device=device)

    def torch_train():
        model.train()
        out = model(input_ids=t_lab, labels=t_lab)
        out.loss.backward()
        torch_opt.step()
        torch_opt.zero_grad(set_to_none=True)
        sync()

    n_tok = batch * seq
    t = interleaved({"ours": ours_train, "torch": torch_train}, repeats=REPEATS, warmup=1)
    rows.append((name, f"train step {batch}×{seq}", _fmt(t["ours"], n_tok), _fmt(t["torch"], n_tok),
                 _ratio(t["ours"], t["torch"])))
    gflops = flops / statistics.median(t["ours"]) / 1e9
    train_info = (f"{name}: train step {flops / 1e9:.1f} GFLOP (XLA cost analysis) → {gflops:.1f} GFLOP/s achieved; "
                  f"peak memory (memory_analysis): arguments {mem.argument_size_in_bytes / 2**20:,.0f} MiB, "
                  f"temporaries {mem.temp_size_in_bytes / 2**20:,.0f} MiB, outputs {mem.output_size_in_bytes / 2**20:,.0f} MiB, "
                  f"aliased (donated) {mem.alias_size_in_bytes / 2**20:,.0f} MiB → peak ≈ "
                  f"{(mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**20:,.0f} MiB")
    params = holder["state"].params

    fwd = jax.jit(Model(cfg))
    x_j = jnp.asarray(tokens_np[:, :-1])

    def ours_fwd():
        fwd(params, x_j).block_until_ready()

    def torch_fwd():
        model.eval()
        with torch.no_grad():
            model(input_ids=t_in)
        sync()

    t = interleaved({"ours": ours_fwd, "torch": torch_fwd}, repeats=REPEATS, warmup=1)
    rows.append((name, f"forward {batch}×{seq}", _fmt(t["ours"], n_tok), _fmt(t["torch"], n_tok),
                 _ratio(t["ours"], t["torch"])))

    prompt = [tokens_np[0, :decode_prompt].tolist()]
    s = SamplingConfig(max_new_tokens=decode_new)

    def ours_decode():
        out = generate(Model(cfg), params, prompt, key, s)
        out.tokens.block_until_ready()

    p_t = torch.as_tensor(prompt, dtype=torch.long, device=device)

    def torch_decode():
        with torch.no_grad():
            model.generate(p_t, attention_mask=torch.ones_like(p_t), max_new_tokens=decode_new, min_new_tokens=decode_new,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
        sync()

    t = interleaved({"ours": ours_decode, "torch": torch_decode}, repeats=REPEATS, warmup=1)
    rows.append((name, f"greedy decode b=1, {decode_prompt}+{decode_new}", _fmt(t["ours"], decode_new),
                 _fmt(t["torch"], decode_new), _ratio(t["ours"], t["torch"])))
    return train_info


def main(argv: list[str]) -> None:
    import torch

    quick = "--quick" in argv
    rows: list = []
    infos = []
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    tiny = get_preset("tiny_mobilellm", vocab_size=256, max_seq_len=1024)
    big = get_preset("mobilellm_r1_140m", max_seq_len=4096)
    infos.append(bench_shape("tiny (D=64, L=2)", tiny, batch=8, seq=128, decode_prompt=16, decode_new=64, rows=rows))
    if not quick:
        infos.append(bench_shape("MobileLLM-R1-140M", big, batch=1, seq=128, decode_prompt=16, decode_new=32,
                                 rows=rows))
    wall = time.perf_counter() - t0
    flags = " ".join(a for a in argv if a.startswith("--"))
    cmd = "python -m bench.run_all decoder" if not flags else f"python -m bench.bench_decoder {flags}"
    text = header("Decoder: jaxllm vs transformers + torch (fp32, CPU)", cmd)
    threads = f"{torch.get_num_threads()} threads"
    text += (f"torch {torch.__version__} ({threads}), transformers Llama4ForCausalLM with the same "
             f"config (sdpa attention); torch.optim.AdamW vs optax.adamw, same betas/eps/weight decay. "
             f"{REPEATS} interleaved repeats after a warm-up; tokens/s from the median; speed-up = torch time / our "
             f"time per repeat (> 1: we are faster), median (min–max). Total wall {wall:.0f} s. 1-min load average "
             f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores.\n\n")
    text += "| shape | measurement | jaxllm tokens/s | torch tokens/s | speed-up |\n|---|---|---|---|---|\n"
    text += "".join(f"| {a} | {b} | {c} | {d} | {e} |\n" for a, b, c, d, e in rows)
    text += "\n" + "\n".join(f"- {i}" for i in infos) + "\n"
    print(text)
    write_result("decoder_bench.md", text)


if __name__ == "__main__":
    main(sys.argv[1:])
