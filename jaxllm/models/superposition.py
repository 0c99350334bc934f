"""Theorem 1 of "Reasoning by Superposition" (arXiv 2505.12514) as hand-set weights of the one Transformer.

`construction(max_nodes, max_edges, max_seq_len)` returns a gpt2-flavour `TransformerConfig` and parameters
with which `coconut.continuous_thought_forward` solves reachability on any graph within those bounds: thought
c is (1/sqrt|V_c|) sum_{v in V_c} u_v (Lemma 2, V_c = nodes within c hops of r) and the logits at `[A]` put
the reachable candidate first once C + 1 >= dist(r, c*).

Layout. Logical residual coordinates (d_L = 4|Voc| + d_PE): content | bufS | bufT | bufQ | position, with
one-hot token embeddings u_v (orthonormal) and unit sinusoidal positions p_i (pairs cos/sin of i·w_k). The
paper uses x/||x|| as its normalisation and no residual around the MLP. We keep the gpt2 block unchanged and
instead (i) store each logical vector x as (x ⊗ [1, -1]) / sqrt(2) in d = 2 d_L physical dims: every
residual vector then has zero mean, so LayerNorm with scale 1/sqrt(d), bias 0 is EXACTLY x/||x||, i.e. the
paper's parameter-free normalisation; (ii) make the layer-2 MLP write Λ·(filtered node set) with Λ = 1e5,
so the residual is negligible after the final norm (error ~ ||x||/Λ).

Layer 1 (five attention-chooser heads, Lemma 1: a head (x, l) attends to i - l when token i is x and to
the BOS sink otherwise; the sink's value is zero): (|,2) copies the edge source into bufS and (|,1) its
target into bufT of each `|`; ([R],2), ([R],1) copy both candidates into bufQ of `[R]`; ([A],1) copies the
last thought into the content of `[A]`. The MLP is zero.
Layer 2: the BFS head (query = content, key = bufS, value = bufT -> content, BOS sink at half the smallest
match score) adds the targets of every edge whose source is in V_c: one BFS expansion; the candidate head
moves bufQ from `[R]` to `[A]`. The MLP filter outputs Λ·u_v for each node v whose content (or bufQ)
coefficient exceeds a threshold (a GELU ramp, the paper's 1{x >= eps}), so after the final norm thought
c + 1 = normalise(sum_{v in V_{c+1}} u_v); at `[A]` c* has coefficient 2 and every other token <= 1.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxllm.config import check
from jaxllm.data.tasks import reachability as rd
from jaxllm.models.transformer import TransformerConfig

D_PE = 32
HEAD_DIM = 64
MARGIN = 40.0  # smallest logit gap of every attention choice (exp(-40) leakage)
LAMBDA = 1e5  # MLP output scale (the residual left after the final norm is ~ ||x|| / LAMBDA)


def _positions(max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sinusoidal positions [max_seq_len, D_PE] (pairs cos/sin) and their frequencies [D_PE/2]."""
    n_freq = D_PE // 2
    omega = 2.5 * (0.6 / max_seq_len) ** (np.arange(n_freq) / (n_freq - 1))
    ang = np.arange(max_seq_len)[:, None] * omega[None]
    p = np.stack([np.cos(ang), np.sin(ang)], -1).reshape(max_seq_len, D_PE) / math.sqrt(n_freq)
    return p, omega


def _shift(omega: np.ndarray, ell: int) -> np.ndarray:
    """R with R p_j = p_{j+ell} (block-diagonal rotations by ell·w_k)."""
    R = np.zeros((D_PE, D_PE))
    for k, w in enumerate(omega):
        c, s = math.cos(ell * w), math.sin(ell * w)
        R[2 * k:2 * k + 2, 2 * k:2 * k + 2] = [[c, -s], [s, c]]
    return R


def construction(max_nodes: int = rd.N_NODE_IDS, max_edges: int = 40, max_seq_len: int = 160):
    """(TransformerConfig, params) of the two-layer superposition construction for the 40-token vocabulary."""
    check(1 <= max_nodes <= rd.N_NODE_IDS, f"max_nodes={max_nodes} must be in [1, {rd.N_NODE_IDS}]")
    check(max_edges >= 1, f"max_edges={max_edges} must be >= 1")
    check(max_seq_len >= rd.prompt_len(max_edges) + 2,
          f"max_seq_len={max_seq_len} is shorter than a prompt with {max_edges} edges")
    V, n_node = rd.VOCAB_SIZE, rd.N_NODE_IDS
    C, S, TB, Q, POS = 0, V, 2 * V, 3 * V, 4 * V
    d_log = 4 * V + D_PE
    D = 2 * d_log
    lift = np.zeros((d_log, D))  # logical -> physical: x ⊗ [1, -1] / sqrt 2 (zero-mean, isometric)
    lift[np.arange(d_log), 2 * np.arange(d_log)] = 1 / math.sqrt(2)
    lift[np.arange(d_log), 2 * np.arange(d_log) + 1] = -1 / math.sqrt(2)
    pos, omega = _positions(max_seq_len)
    gram = pos @ pos[0]
    gap = 1.0 - gram[1:].max()  # smallest drop of <p_0, p_Δ> away from Δ = 0
    check(gap > 1e-2, f"sinusoidal positions too close for max_seq_len={max_seq_len} (gap {gap:.3g})")
    H, h, sqrt_h = 5, HEAD_DIM, math.sqrt(HEAD_DIM)
    cfg = TransformerConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H, head_dim=h, d_ff=4 * n_node,
                            max_seq_len=max_seq_len, flavour="gpt2", norm_eps=1e-12, tie_embeddings=True,
                            dropout=0.0)
    nodes = np.arange(n_node)

    def zeros_layer():
        return {
            "attn_norm": {"scale": np.full(D, 1 / math.sqrt(D)), "bias": np.zeros(D)},
            "attn": {n: {"kernel": np.zeros((d_log, H, h)), "bias": np.zeros((H, h))} for n in "qkv"}
            | {"o": {"kernel": np.zeros((H, h, d_log)), "bias": np.zeros(D)}},
            "mlp_norm": {"scale": np.full(D, 1 / math.sqrt(D)), "bias": np.zeros(D)},
            "mlp": {"fc": {"kernel": np.zeros((d_log, 4 * n_node)), "bias": np.zeros(4 * n_node)},
                    "proj": {"kernel": np.zeros((4 * n_node, d_log)), "bias": np.zeros(D)}},
        }

    # ---- layer 1: attention choosers. Inputs are token/thought + position, ||x|| = sqrt 2 at every position,
    # so the pre-norm divides by sqrt 2: fold that back into q, k and v.
    l1 = zeros_layer()
    eta, xi = MARGIN / gap, 3.0 / gap
    n1 = math.sqrt(2)
    for head, (tok, ell, dest) in enumerate([(rd.EDGE, 2, S), (rd.EDGE, 1, TB), (rd.ANSWER, 1, C),
                                             (rd.REASON, 2, Q), (rd.REASON, 1, Q)]):
        q, k = l1["attn"]["q"]["kernel"], l1["attn"]["k"]["kernel"]
        q[POS:POS + D_PE, head, :D_PE] = np.eye(D_PE) * n1 * sqrt_h
        not_tok = np.array([v for v in range(V) if v != tok])
        q[C + not_tok, head, D_PE:2 * D_PE] = xi * pos[0] * n1 * sqrt_h  # ξ <u_{¬x}, content> p_0
        k[POS:POS + D_PE, head, :D_PE] = eta * _shift(omega, ell).T * n1
        k[POS:POS + D_PE, head, D_PE:2 * D_PE] = eta * np.eye(D_PE) * n1
        l1["attn"]["v"]["kernel"][C + nodes, head, nodes] = n1  # node contents only: the BOS sink adds zero
        l1["attn"]["o"]["kernel"][head, nodes, dest + nodes] = 1.0

    # ---- layer 2: BFS-expansion head and candidate head. Norms at layer-2 input (logical): latent/node/BOS
    # sqrt 2, `|` and [R] 2, [A] sqrt 3.
    l2 = zeros_layer()
    q, k, v, o = (l2["attn"][n]["kernel"] for n in "qkvo")
    qb = l2["attn"]["q"]["bias"]
    match_min = 2 * MARGIN  # smallest score of a matched edge: query [A] (norm sqrt 3), |V_c| = max_nodes
    lam = match_min * 2 * math.sqrt(3) * math.sqrt(max_nodes)
    q[C + nodes, 0, nodes] = lam * sqrt_h
    k[S + nodes, 0, nodes] = 1.0
    qb[0, n_node] = (match_min / 2) * math.sqrt(2) * sqrt_h  # BOS sink: score match_min / 2
    k[C + rd.EOS, 0, n_node] = 1.0
    v[TB + nodes, 0, nodes] = 1.0
    o[0, nodes, C + nodes] = 2.0  # undo the 1/2 of the `|` positions' norm
    kappa = 2 * math.sqrt(3) * 3 * MARGIN
    q[C + rd.ANSWER, 1, 0] = kappa * sqrt_h
    k[C + rd.REASON, 1, 0] = 1.0
    qb[1, 1] = MARGIN * math.sqrt(2) * sqrt_h
    k[C + rd.EOS, 1, 1] = 1.0
    v[Q + nodes, 1, nodes] = 1.0
    o[1, nodes, Q + nodes] = 2.0
    # MLP filter: z = content (or bufQ) coefficient / ||x||; every true member has z >= z_min, noise ~ 0.
    z_min = min(1 / math.sqrt(max_nodes), 1 / max_edges) / math.sqrt(8.0)
    a, b = z_min / 4, z_min / 2
    slope = 20.0 / a
    fc, fcb = l2["mlp"]["fc"]["kernel"], l2["mlp"]["fc"]["bias"]
    proj = l2["mlp"]["proj"]["kernel"]
    for ch, src in enumerate((C, Q)):
        for sign, thr in enumerate((a, b)):
            units = nodes + n_node * (2 * ch + sign)
            fc[src + nodes, units] = slope
            fcb[units] = -slope * thr
            proj[units, C + nodes] = (1.0 if sign == 0 else -1.0) * LAMBDA / (slope * (b - a))

    def physical(layer):
        out = {k_: dict(v_) for k_, v_ in layer.items()}
        att = layer["attn"]
        out["attn"] = {n: {"kernel": np.einsum("LD,LNh->DNh", lift, att[n]["kernel"]), "bias": att[n]["bias"]}
                       for n in "qkv"}
        out["attn"]["o"] = {"kernel": np.einsum("NhL,LD->NhD", att["o"]["kernel"], lift), "bias": att["o"]["bias"]}
        m = layer["mlp"]
        out["mlp"] = {"fc": {"kernel": lift.T @ m["fc"]["kernel"], "bias": m["fc"]["bias"]},
                      "proj": {"kernel": m["proj"]["kernel"] @ lift, "bias": m["proj"]["bias"]}}
        return out

    embed = np.zeros((V, d_log))
    embed[np.arange(V), C + np.arange(V)] = 1.0
    pos_log = np.zeros((max_seq_len, d_log))
    pos_log[:, POS:] = pos
    params = {"embed": embed @ lift, "pos_embed": pos_log @ lift, "layer_0": physical(l1), "layer_1": physical(l2),
              "final_norm": {"scale": np.full(D, 1 / math.sqrt(D)), "bias": np.zeros(D)}}
    params = _to_jnp(params)
    return cfg, params


def _to_jnp(tree):
    if isinstance(tree, dict):
        return {k: _to_jnp(v) for k, v in tree.items()}
    return jnp.asarray(tree, jnp.float32)


def node_embeddings(params) -> np.ndarray:
    """[31, D] physical u_v of the node tokens (rows of the tied embedding)."""
    return np.asarray(params["embed"])[: rd.N_NODE_IDS]


def oracle_report(n_graphs: int = 300, max_edges: int = 30, seed: int = 11, max_thoughts: int = 4) -> dict:
    """Run the construction on random graphs with C = hops thoughts: accuracy, Lemma-2 error, answer margin."""
    import jax

    from jaxllm.models import coconut

    cfg, params = construction(max_edges=max_edges, max_seq_len=rd.prompt_len(max_edges) + max_thoughts + 4)
    graphs = rd.GraphConfig(min_nodes=8, max_nodes=20, hops=tuple(range(1, max_thoughts + 1)), max_edges=max_edges)
    probs = rd.generate_problems(n_graphs, graphs, seed=seed)
    P = rd.prompt_len(max_edges)
    b = rd.latent_batch(probs, 99, np.random.default_rng(0), max_latent=max_thoughts, max_edges=max_edges,
                        final_only=True)
    run = jax.jit(lambda bb: coconut.latent_logits(cfg, params, bb, max_thoughts, P))
    logits, res = run({k: jnp.asarray(b[k]) for k in ("tokens", "positions", "attention_mask", "read_pos")})
    logits, thoughts = np.asarray(logits), np.asarray(res.thoughts)
    U = node_embeddings(params)
    err = 0.0
    for i, p in enumerate(probs):
        for c in range(1, int(b["n_latent"][i]) + 1):
            Vc = rd.reachable_within(p, c)
            err = max(err, float(np.abs(thoughts[i, c - 1] - U[Vc].sum(0) / math.sqrt(len(Vc))).max()))
    top2 = np.sort(logits, -1)[:, -2:]
    return {"graphs": n_graphs, "d_model": cfg.d_model, "accuracy": float((logits.argmax(-1) == b["target"]).mean()),
            "lemma2_max_abs_err": err, "min_answer_margin": float((top2[:, 1] - top2[:, 0]).min()),
            "hops_histogram": np.bincount([p.hops for p in probs]).tolist()}
