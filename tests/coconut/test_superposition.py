"""Theorem 1 / Lemma 2 of arXiv 2505.12514: the hand-set two-layer construction through the same forward."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.data.tasks import reachability as rd
from jaxllm.models import coconut, superposition

MAX_EDGES = 30
GRAPHS = rd.GraphConfig(min_nodes=8, max_nodes=20, hops=(1, 2, 3, 4), max_edges=MAX_EDGES)


def test_construction_answers_every_query_and_thoughts_are_superpositions():
    cfg, params = superposition.construction(max_edges=MAX_EDGES, max_seq_len=rd.prompt_len(MAX_EDGES) + 8)
    probs = rd.generate_problems(300, GRAPHS, seed=11)
    K = 4
    b = rd.latent_batch(probs, 99, np.random.default_rng(0), max_latent=K, max_edges=MAX_EDGES, final_only=True)
    # one extra, too-short budget: C = hops - 2 must leave the two candidates tied (no shortcut)
    short = dict(b)
    short_n = np.maximum(b["n_latent"] - 2, 0)
    P = rd.prompt_len(MAX_EDGES)
    short["attention_mask"] = b["attention_mask"].copy()
    short["positions"] = b["positions"].copy()
    for i, s in enumerate(short_n):
        short["attention_mask"][i, P + s:P + K] = False
        short["positions"][i, P + K] = b["positions"][i, P - 1] + s + 1
    run = jax.jit(lambda bb: coconut.latent_logits(cfg, params, bb, K, P))
    both = {k: jnp.asarray(np.concatenate([b[k], short[k]])) for k in ("tokens", "positions", "attention_mask",
                                                                        "read_pos")}
    logits, res = run(both)
    logits, thoughts = np.asarray(logits), np.asarray(res.thoughts)
    n = len(probs)
    # Theorem 1: C = hops >= dist(r, c*) thoughts answer every query
    assert (np.argmax(logits[:n], -1) == b["target"]).all()
    # too few thoughts: the reachable candidate is not yet in the superposition, both candidates tie
    far = (b["n_latent"] >= 2) & ([p.hops for p in probs] == b["n_latent"])
    idx = np.nonzero(far)[0]
    assert len(idx) > 30
    np.testing.assert_allclose(logits[n + idx, b["target"][idx]], logits[n + idx, b["neg_target"][idx]], atol=1e-4)
    # Lemma 2: thought c = (1/sqrt|V_c|) sum_{v in V_c} u_v, V_c = nodes within c hops of the root
    U = superposition.node_embeddings(params)
    worst = 0.0
    for i, p in enumerate(probs):
        for c in range(1, b["n_latent"][i] + 1):
            Vc = rd.reachable_within(p, c)
            worst = max(worst, np.abs(thoughts[i, c - 1] - U[Vc].sum(0) / np.sqrt(len(Vc))).max())
    assert worst < 1e-4, worst
    assert max(p.dist.max() for p in probs) >= 4 and len(probs) == 300
