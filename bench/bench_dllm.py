"""LLaDA sampler throughput: jaxllm's jitted sampler vs a PyTorch port of LLaDA's `generate` loop.

Same weights, same prompts, same run, interleaved timing. Setting of the RL / eval papers: gen_length 256,
block_length 32, steps 128 (2 tokens per step), greedy, low-confidence remasking. Models: `tiny` (tiny_llada)
and `140m` (the MobileLLM-R1-140M shapes made bidirectional: causal=False, rotate_half RoPE, no QK-norm).
The PyTorch side is an eager port of the reference loop (`generate.py`: full forward per step, softmax
confidence, per-row `torch.topk`) over a plain torch re-implementation of the same Transformer.

    .venv/bin/python -m bench.run_all dllm                      # CPU: tiny only (140m takes minutes per sample)
    python3 -m bench.bench_dllm --models tiny,140m --batch 8   # on a GPU
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import RESULTS, fmt_ratio, header, interleaved, machine
from jaxllm.models import Model, get_preset, init_params
from jaxllm.sampling import diffusion as ds

GEN, BLOCK, STEPS, PROMPT = 256, 32, 128, 32


def model_config(name: str, dtype: str):
    if name == "tiny":
        return get_preset("tiny_llada", max_seq_len=PROMPT + GEN, dtype=dtype, param_dtype=dtype)
    if name == "140m":
        return get_preset("mobilellm_r1_140m", causal=False, rope_layout="half", qk_norm=False,
                          max_seq_len=PROMPT + GEN, mask_token_id=126336, dtype=dtype, param_dtype=dtype)
    raise SystemExit(f"unknown model {name!r}; choose tiny or 140m")


# ------------------------------------------------------------------------------------------------------------
# PyTorch: the same Transformer and LLaDA's generate loop.


def torch_forward_fn(cfg, params, device, dtype, grad: bool = False):
    """forward(tokens) -> float32 logits; grad=True: differentiable, its leaf tensors in `forward.params`."""
    import torch

    t = lambda a: torch.as_tensor(np.array(a, np.float32)).to(device=device, dtype=dtype)  # noqa: E731
    H, K, h = cfg.n_heads, cfg.num_heads_kv, cfg.head_size
    layers = [{"an": t(params[f"layer_{i}"]["attn_norm"]["scale"]), "mn": t(params[f"layer_{i}"]["mlp_norm"]["scale"]),
               **{n: t(params[f"layer_{i}"]["attn"][n]["kernel"]) for n in "qkvo"},
               **{n: t(params[f"layer_{i}"]["mlp"][n]["kernel"]) for n in ("gate", "up", "down")}}
              for i in range(cfg.n_layers)]
    emb, fin = t(params["embed"]), t(params["final_norm"]["scale"])
    head = t(params["lm_head"]) if "lm_head" in params else emb.T
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, h, 2, device=device, dtype=torch.float32) / h)

    def rms(x, w):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w.float()).to(x.dtype)

    def rope(x, cos, sin):  # x [B, T, N, h], rotate_half
        x32 = x.float()
        x1, x2 = x32[..., : h // 2], x32[..., h // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)

    def forward(tokens):
        B, T = tokens.shape
        ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None]
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
        x = emb[tokens]
        for L in layers:
            a = rms(x, L["an"])
            q = rope(torch.einsum("btd,dnh->btnh", a, L["q"]), cos, sin)
            k = rope(torch.einsum("btd,dnh->btnh", a, L["k"]), cos, sin)
            v = torch.einsum("btd,dnh->btnh", a, L["v"])
            k, v = k.repeat_interleave(H // K, dim=2), v.repeat_interleave(H // K, dim=2)
            o = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=False)  # bidirectional
            x = x + torch.einsum("bnth,nhd->btd", o, L["o"])
            m = rms(x, L["mn"])
            x = x + (torch.nn.functional.silu(m @ L["gate"]) * (m @ L["up"])) @ L["down"]
        return (rms(x, fin) @ head).float()

    if not grad:
        return torch.no_grad()(forward)
    forward.params = [emb, fin, *([] if "lm_head" not in params else [head]), *(w for L in layers for w in L.values())]
    for w in forward.params:
        w.requires_grad_(True)
    return forward


def torch_generate(forward, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA `generate` at temperature 0, low-confidence remasking, cfg 0 (eager PyTorch, per-row topk)."""
    import torch

    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for nb in range(num_blocks):
        block_mask = x[:, P + nb * block_length: P + (nb + 1) * block_length] == mask_id
        m = block_mask.sum(1, keepdim=True)
        ntt = (m // spb).expand(-1, spb).clone()
        ntt[torch.arange(spb, device=x.device)[None] < (m % spb)] += 1
        for i in range(spb):
            mask_index = x == mask_id
            logits = forward(x)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, -1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, P + (nb + 1) * block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, x0_p, torch.tensor(-np.inf, device=x.device))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(B):
                _, sel = torch.topk(conf[j], k=int(ntt[j, i]))
                transfer[j, sel] = True
            x[transfer] = x0[transfer]
    return x


# ------------------------------------------------------------------------------------------------------------


def bench_model(name: str, batch: int, repeats: int, device: str) -> dict:
    import torch

    dtype = "bfloat16" if device == "cuda" else "float32"
    cfg = model_config(name, dtype)
    params = init_params(cfg, jax.random.PRNGKey(0))
    # allow_mask_token: the reference's behaviour, so that `agree` compares like with like
    scfg = ds.DiffusionSamplerConfig(gen_length=GEN, block_length=BLOCK, steps=STEPS, mask_id=cfg.mask_token_id,
                                     allow_mask_token=True)
    prompt = jax.random.randint(jax.random.PRNGKey(1), (batch, PROMPT), 0, cfg.mask_token_id)
    model = Model(cfg)
    fixed_t, fixed = jnp.zeros((batch, GEN), jnp.int32), jnp.zeros((batch, GEN), bool)
    t0 = time.perf_counter()
    compiled = ds._sample_jit.lower(model, scfg, params, prompt, jax.random.PRNGKey(2), fixed_t, fixed, None).compile()
    compile_s = time.perf_counter() - t0

    def run_jax():
        return compiled(params, prompt, jax.random.PRNGKey(2), fixed_t, fixed, None).tokens.block_until_ready()

    tdtype = torch.bfloat16 if device == "cuda" else torch.float32
    fwd = torch_forward_fn(cfg, params, device, tdtype)
    tprompt = torch.as_tensor(np.array(prompt), dtype=torch.long, device=device)

    def run_torch():
        out = torch_generate(fwd, tprompt, STEPS, GEN, BLOCK, cfg.mask_token_id)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    ours_tokens = np.asarray(run_jax())
    ref_tokens = run_torch().cpu().numpy()
    agree = float(np.mean(ours_tokens[:, PROMPT:] == ref_tokens[:, PROMPT:]))
    times = interleaved({"jax": run_jax, "torch": run_torch}, repeats=repeats, warmup=1)
    n_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
    tok = batch * GEN
    return {"model": name, "params": n_params, "batch": batch, "dtype": dtype, "compile_s": compile_s,
            "jax_tok_s": tok / statistics.median(times["jax"]), "torch_tok_s": tok / statistics.median(times["torch"]),
            "speedup": fmt_ratio(times["torch"], times["jax"]), "agree": agree,
            "jax_s": statistics.median(times["jax"]), "torch_s": statistics.median(times["torch"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import torch

    device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # oversubscribed intra-op threads make eager torch 10x slower on a busy 2-core box
    rows = [bench_model(m, args.batch, args.repeats, device) for m in args.models.split(",")]
    lines = [f"## {device.upper()}: {machine()}, torch {torch.__version__}"
             + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""), "",
             f"command: `bench_dllm --models {args.models} --batch {args.batch} --repeats {args.repeats}`", "",
             "| model | params | batch | dtype | jax tokens/s | torch tokens/s | jax speed-up (torch time / jax time) "
             "| compile s | tokens equal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['dtype']} | {r['jax_tok_s']:.0f} "
                     f"| {r['torch_tok_s']:.0f} | {r['speedup']} | {r['compile_s']:.1f} | {r['agree']:.3f} |")
        print(r, flush=True)
    section = "\n".join(lines) + "\n"
    path = RESULTS / "dllm_bench.md"
    old = path.read_text() if path.exists() else ""
    parts = re.split(r"(?m)^(?=## )", old)
    kept = [p for p in parts[1:] if not p.startswith(f"## {device.upper()}:")]
    head = header("LLaDA sampler: jaxllm (jitted) vs PyTorch port of LLaDA generate", "see sections") + (
        f"Setting: gen_length {GEN}, block_length {BLOCK}, steps {STEPS} (2 tokens/step), prompt {PROMPT} tokens, "
        "greedy, low-confidence remasking, random weights. tokens/s counts generated tokens. 'tokens equal' is the "
        "share of generated tokens identical between the two implementations (bf16 rounding and topk ties can "
        "flip a confidence ranking). Compile s is jax lower+compile of the whole sampler.\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "".join(sorted(kept + [section + "\n"])))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
