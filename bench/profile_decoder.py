"""Where the decoder's train step spends its time, part by part, beside transformers + torch on the same shape.

    python -m bench.profile_decoder [preset=mobilellm_r1_140m batch=4 seq=256 repeats=5 steps=3 top=25 torch=1
                                     model.x=... (TransformerConfig overrides, e.g. model.logits_chunk=-1)]

XLA's CPU runtime at jax 0.10 (the thunk executor) records no per-op events in a `jax.profiler` trace (only
"ThunkExecutor::Execute" spans), so ours is split by timing the step's parts, each jitted on its own and
interleaved with the same part in torch (`components`): the full step, loss + gradient, forward loss, the body
(layers) forward + backward, the LM head + cross-entropy forward + backward, and the AdamW update. Beside it,
`memory_analysis()` of our step and (torch=1) torch.profiler's op table of the same step, by self CPU time.
Prints Markdown; docs/results/decoder_profile.md quotes it.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import interleaved, ratio_stats
from jaxllm import config as cfgmod
from jaxllm.models import Model, get_preset, lm_head
from jaxllm.train.lm import lm_task, next_token_loss
from jaxllm.train.trainer import init_state, make_train_step


def memory_ours(cfg, batch: int, seq: int) -> dict:
    """memory_analysis() of the compiled train step (bytes): arguments, temporaries, outputs, aliased."""
    tokens = np.zeros((batch, seq + 1), np.int32)
    batch_j = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
    task = lm_task(cfg, optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1), None)
    state = init_state(task, 0)
    mem = jax.jit(make_train_step(task), donate_argnums=0).lower(state, batch_j).compile().memory_analysis()
    return {"arguments": mem.argument_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
            "outputs": mem.output_size_in_bytes, "aliased": mem.alias_size_in_bytes}


def profile_torch(cfg, batch: int, seq: int, steps: int) -> tuple[list, float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.bench_decoder import _torch_model

    model = _torch_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.as_tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, size=(batch, seq + 1)), dtype=torch.long)

    def step():
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    rows = sorted(((e.self_cpu_time_total / 1e3 / steps, e.key, e.count // steps) for e in prof.key_averages()),
                  reverse=True)
    return rows, wall * 1e3


def components(cfg, batch: int, seq: int, repeats: int) -> list[tuple[str, list[float], list[float]]]:
    """The train step cut into parts, each jitted (ours) or run eagerly (torch) on its own, interleaved.

    XLA's CPU runtime (jax 0.10, thunk executor) emits no per-op trace events, so the op-level split comes from
    timing the parts separately: full step; loss + gradient (no optimizer); forward loss only; the body
    (embedding + layers + final norm, forward + backward of a fixed random projection of the hidden states);
    the LM head + cross-entropy (forward + backward from the hidden states); the AdamW update alone.
    Returns (part, our seconds per repeat, torch seconds per repeat)."""
    import torch
    import torch.nn.functional as F

    from bench.bench_decoder import _torch_model

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, seq + 1)).astype(np.int32)
    batch_j = {"tokens": jnp.asarray(tokens), "loss_mask": jnp.ones(tokens.shape, jnp.float32)}
    opt = optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    task = lm_task(cfg, opt, None)
    state = init_state(task, 0)
    model = Model(cfg)
    step = jax.jit(make_train_step(task), donate_argnums=0)
    grad_fn = jax.jit(jax.grad(lambda p, b: next_token_loss(model, p, b)[0]))
    loss_fn = jax.jit(lambda p, b: next_token_loss(model, p, b)[0])
    proj = jnp.asarray(rng.standard_normal((batch, seq, cfg.d_model)).astype(np.float32))

    def body_loss(p):
        h = model.forward(p, batch_j["tokens"][:, :-1], compute_logits=False).hidden
        return jnp.sum(h * proj)

    body_fn = jax.jit(jax.grad(body_loss))
    chunk = lm_head.head_chunk(cfg, batch, seq) or seq
    w_name = "embed" if cfg.tie_embeddings else "lm_head"
    hid = jnp.asarray(rng.standard_normal((batch, seq, cfg.d_model)).astype(np.float32))
    targets = batch_j["tokens"][:, 1:]
    ones = jnp.ones(targets.shape, jnp.float32)
    head_fn = jax.jit(jax.grad(lambda h, w: lm_head.weighted_nll(cfg, {w_name: w}, h, targets, ones, chunk)[0],
                               argnums=(0, 1)))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), state.params)
    upd = jax.jit(lambda g, s, p: optax.apply_updates(p, opt.update(g, s, p)[0]))
    holder = {"state": state}

    def ours_step():
        holder["state"], m = step(holder["state"], batch_j)
        m["loss"].block_until_ready()

    ours = {"step": ours_step,
            "loss + grad": lambda: jax.block_until_ready(grad_fn(holder["state"].params, batch_j)),
            "forward loss": lambda: jax.block_until_ready(loss_fn(holder["state"].params, batch_j)),
            "body fwd+bwd": lambda: jax.block_until_ready(body_fn(holder["state"].params)),
            "head + CE fwd+bwd": lambda: jax.block_until_ready(head_fn(hid, holder["state"].params[w_name])),
            "AdamW update": lambda: jax.block_until_ready(upd(grads, holder["state"].opt_state,
                                                              holder["state"].params))}
    tmodel = _torch_model(cfg)
    tmodel.train()
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    x = torch.as_tensor(tokens, dtype=torch.long)
    tproj = torch.as_tensor(np.asarray(proj))
    thid = torch.as_tensor(np.asarray(hid))
    ttargets = torch.as_tensor(np.asarray(targets), dtype=torch.long)

    def t_step():
        tmodel(input_ids=x, labels=x).loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)

    def t_grad():
        tmodel(input_ids=x, labels=x).loss.backward()
        topt.zero_grad(set_to_none=True)

    def t_fwd():
        with torch.no_grad():
            tmodel(input_ids=x, labels=x)

    def t_body():
        (tmodel.model(input_ids=x[:, :-1]).last_hidden_state * tproj).sum().backward()
        topt.zero_grad(set_to_none=True)

    def t_head():
        h = thid.clone().requires_grad_(True)
        logits = F.linear(h, tmodel.lm_head.weight)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ttargets.reshape(-1), reduction="sum").backward()
        topt.zero_grad(set_to_none=True)

    def t_adamw():
        for q in tmodel.parameters():
            q.grad = torch.full_like(q, 1e-3)
        topt.step()
        topt.zero_grad(set_to_none=True)

    theirs = {"step": t_step, "loss + grad": t_grad, "forward loss": t_fwd, "body fwd+bwd": t_body,
              "head + CE fwd+bwd": t_head, "AdamW update": t_adamw}
    fns = {}
    for k in ours:
        fns["ours " + k] = ours[k]
        fns["torch " + k] = theirs[k]
    t = interleaved(fns, repeats=repeats, warmup=1)
    return [(k, t["ours " + k], t["torch " + k]) for k in ours]


def main(argv: list[str]) -> str:
    opts = {"preset": "mobilellm_r1_140m", "batch": "4", "seq": "256", "steps": "3", "top": "25", "torch": "1", "repeats": "5"}
    model_over = {}
    for a in argv:
        k, _, v = a.partition("=")
        if k.startswith("model."):
            model_over[k[len("model."):]] = v
        else:
            opts[k] = v
    batch, seq, steps, top = int(opts["batch"]), int(opts["seq"]), int(opts["steps"]), int(opts["top"])
    cfg = cfgmod.apply_overrides(get_preset(opts["preset"], max_seq_len=max(seq, 512)),
                                 [f"{k}={v}" for k, v in model_over.items()])
    parts = components(cfg, batch, seq, int(opts["repeats"]))
    title = f"{opts['preset']}{''.join(f', {k}={v}' for k, v in model_over.items())}"
    out = [f"## The train step {batch}×{seq} in parts ({title}), jaxllm against transformers + torch", "",
           f"{opts['repeats']} interleaved repeats after a warm-up; ms per call, median (min–max); speed-up = torch "
           "time / our time per repeat (> 1: we are faster).", "",
           "| part | jaxllm ms | torch ms | speed-up |", "|---|---|---|---|"]
    for part, ours, theirs in parts:
        med, lo, hi = ratio_stats(theirs, ours)
        out.append(f"| {part} | {statistics.median(ours) * 1e3:,.0f} ({min(ours) * 1e3:,.0f}–{max(ours) * 1e3:,.0f}) | "
                   f"{statistics.median(theirs) * 1e3:,.0f} ({min(theirs) * 1e3:,.0f}–{max(theirs) * 1e3:,.0f}) | "
                   f"{med:.2f}× ({lo:.2f}–{hi:.2f}) |")
    mem = memory_ours(cfg, batch, seq)
    out += ["", f"memory_analysis of our step: arguments {mem['arguments'] / 2**20:,.0f} MiB, temporaries "
            f"{mem['temporaries'] / 2**20:,.0f} MiB, outputs {mem['outputs'] / 2**20:,.0f} MiB, aliased "
            f"{mem['aliased'] / 2**20:,.0f} MiB"]
    if opts["torch"] != "0":
        trows, twall = profile_torch(cfg, batch, seq, steps)
        ttotal = sum(r[0] for r in trows)
        out += ["", f"## transformers + torch, same step (self CPU time per step; wall {twall:,.0f} ms)", "",
                "| ms / step | share | op | calls / step |", "|---|---|---|---|"]
        out += [f"| {ms:,.1f} | {ms / ttotal:.1%} | `{k}` | {n} |" for ms, k, n in trows[:top]]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
