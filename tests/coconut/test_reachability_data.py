"""ProsQA-style reachability data: graph properties, prompt format, splits, batches."""

import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.data.tasks import reachability as rd

CFG = rd.GraphConfig(min_nodes=8, max_nodes=14, hops=(2, 3), max_edges=30)


def _closure_distances(edges, root, n=rd.N_NODE_IDS):
    """Independent shortest distances by boolean matrix powers."""
    A = np.zeros((n, n), bool)
    A[edges[:, 0], edges[:, 1]] = True
    dist = np.full(n, -1)
    cur = np.zeros(n, bool)
    cur[root] = True
    seen = cur.copy()
    dist[root] = 0
    for k in range(1, n):
        cur = (cur[:, None] & A).any(0) & ~seen
        dist[cur] = k
        seen |= cur
    return dist


def test_problems_have_requested_hops_and_exactly_one_reachable_candidate():
    for p in rd.generate_problems(100, CFG, seed=3):
        dist = _closure_distances(p.edges, p.root)
        np.testing.assert_array_equal(dist, p.dist)
        assert p.hops in CFG.hops and dist[p.target] == p.hops and dist[p.neg_target] == -1
        assert len(p.edges) <= CFG.max_edges and CFG.min_nodes <= p.n_nodes <= CFG.max_nodes
        assert p.neighbor_k[0] == (p.root,) and p.neighbor_k[-1] == (p.target,)
        path = rd.optimal_path(p, np.random.default_rng(0))
        edge_set = set(map(tuple, p.edges.tolist()))
        assert all((u, v) in edge_set for u, v in zip([p.root] + path[:-1], path)) and path[-1] == p.target
        for k, hop in enumerate(p.neighbor_k):
            assert all(p.dist[v] == k for v in hop)
        assert len(set(map(tuple, p.edges.tolist()))) == len(p.edges)


def test_splits_are_reproducible_and_disjoint():
    a = rd.split_problems(60, 10, 30, CFG, seed=5)
    b = rd.split_problems(60, 10, 30, CFG, seed=5)
    assert [rd.graph_key(p) for s in a for p in s] == [rd.graph_key(p) for s in b for p in s]
    keys = [set(map(rd.graph_key, s)) for s in a]
    assert not (keys[0] & keys[2]) and not (keys[0] & keys[1]) and len(keys[0]) == 60
    assert rd.graph_key(rd.split_problems(60, 10, 30, CFG, seed=6)[0][0]) != rd.graph_key(a[0][0])


def test_prompt_puts_edge_token_after_every_edge_and_shuffles_per_call():
    p = rd.generate_problems(1, CFG, seed=0)[0]
    m = len(p.edges)
    x1 = rd.encode_prompt(p, np.random.default_rng(1))
    x2 = rd.encode_prompt(p, np.random.default_rng(2))
    assert len(x1) == 3 * m + 6 and x1[0] == rd.EOS and x1[-1] == p.root
    assert all(x1[3 * i] == rd.EDGE for i in range(1, m + 1))
    assert list(x1[3 * m + 1:3 * m + 5:3]) == [rd.QUESTION, rd.REASON]
    assert set(x1[3 * m + 2:3 * m + 4]) == {p.target, p.neg_target}
    e1 = sorted(map(tuple, x1[1:3 * m + 1].reshape(m, 3)[:, :2].tolist()))
    assert e1 == sorted(map(tuple, p.edges.tolist()))
    assert not np.array_equal(x1, x2)  # edge order redrawn
    assert max(x1) < rd.VOCAB_SIZE == len(rd.TOKEN_NAMES) == 40


def test_relabel_is_an_isomorphism():
    p = rd.generate_problems(1, CFG, seed=0)[0]
    q = rd.relabel_problem(p, np.random.default_rng(0))
    np.testing.assert_array_equal(_closure_distances(q.edges, q.root), q.dist)
    assert q.dist[q.target] == p.hops and q.dist[q.neg_target] == -1
    assert sorted(np.bincount(q.dist + 1)) == sorted(np.bincount(p.dist + 1))


def test_latent_batch_labels_follow_stage_and_mode():
    probs = rd.generate_problems(16, CFG, seed=1)
    P = rd.prompt_len(CFG.max_edges)
    for mode in rd.LABEL_MODES:
        b = rd.latent_batch(probs, 1, np.random.default_rng(0), max_latent=3, max_edges=CFG.max_edges, mode=mode)
        for i, p in enumerate(probs):
            assert b["n_latent"][i] == 1 and not b["is_final"][i] and b["read_pos"][i] == P
            labels = set(np.nonzero(b["label_set"][i])[0])
            want = {"coconut": set(p.neighbor_k[2]), "bfs_uniform": set(rd.frontier(p, 2)),
                    "bfs_reachable": set(rd.reachable_within(p, 2)), "bfs_frontier": set(rd.frontier(p, 2))}[mode]
            assert labels <= want and (len(labels) == 1 if mode in ("coconut", "bfs_uniform") else labels == want)
            assert b["attention_mask"][i, P] and not b["attention_mask"][i, P + 1]
            assert b["positions"][i, -1] == b["positions"][i, P - 1] + 2  # [A] follows the one thought
    b = rd.latent_batch(probs, 9, np.random.default_rng(0), max_latent=3, max_edges=CFG.max_edges)
    assert b["is_final"].all() and (b["read_pos"] == P + 3).all()
    np.testing.assert_array_equal(np.argmax(b["label_set"], 1), [p.target for p in probs])


def test_batches_resume_exactly():
    probs = rd.generate_problems(20, CFG, seed=2)
    make = lambda ps, rng: rd.cot_batch(ps, rng, max_edges=CFG.max_edges, max_hops=3)
    it = rd.ProblemBatches(probs, 8, make, seed=4)
    [next(it) for _ in range(3)]
    state = it.get_state()
    want = [next(it)["tokens"] for _ in range(3)]
    it2 = rd.ProblemBatches(probs, 8, make, seed=4)
    it2.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(it2)["tokens"], w)


def test_bad_inputs_name_the_field():
    with pytest.raises(ConfigError, match="max_nodes"):
        rd.GraphConfig(min_nodes=5, max_nodes=40)
    with pytest.raises(ConfigError, match="label mode"):
        rd.latent_batch([], 0, np.random.default_rng(0), max_latent=2, max_edges=10, mode="dfs")
    big = rd.generate_problems(1, CFG, seed=0)
    with pytest.raises(ConfigError, match="max_edges"):
        rd.latent_batch(big, 0, np.random.default_rng(0), max_latent=2, max_edges=3)
