"""ProsQA-style graph reachability (Coconut arXiv 2412.06769 App. A.2; "Reasoning by Superposition" 2505.12514).

A problem is a random DAG, a root r and two candidate nodes, exactly one of them reachable from r; the
question is which. `generate_problems` builds ProsQA-like DAGs (Coconut Alg. 1: nodes added one by one with
Poisson(1.5) parents, restricted to the "descends from r only" / "descends from the decoy only" groups with
probability 0.35 each, parents weighted by depth), then keeps a graph only if the reachable candidate c* has
a shortest path of a chosen number of hops and the other candidate is not reachable from r.

Vocabulary (the reference's 40-token `STokenizer`): node ids 0..30 are tokens 0..30, then
    31 <|start-latent|>, 32 <|end-latent|>, 33 <|latent|>, 34 `|` (the edge token <e>), 35 [Q], 36 [R],
    37 [A], 38 <eos> (also BOS and pad), 39 <|no-answer|>.
Prompt (edge-separator convention of the paper's Fig. 1 / Table 3: `|` after EVERY edge, so the i-th edge
token sits at index 3i, i = 1..m, counting BOS as index 0; the reference code's "|".join has no final `|`):

    <eos> s1 t1 | s2 t2 | ... sm tm | [Q] c_a c_b [R] r

followed by the reasoning part (latents, or the path tokens for discrete CoT), `[A]` and the answer c*.
Edge order is reshuffled and the candidate order redrawn by `encode_prompt(problem, rng)` on every call
(every epoch); `relabel_problem` applies a fresh random permutation of the 31 node ids (Emergence paper's
`shuffle_nodes`). `split_problems` gives seeded train/val/test lists whose graphs are pairwise distinct.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from jaxllm.config import ConfigError, check

N_NODE_IDS = 31
START_LATENT, END_LATENT, LATENT, EDGE, QUESTION, REASON, ANSWER, EOS, NO_ANSWER = range(31, 40)
VOCAB_SIZE = 40
TOKEN_NAMES = [str(i) for i in range(N_NODE_IDS)] + [
    "<|start-latent|>", "<|end-latent|>", "<|latent|>", "|", "[Q]", "[R]", "[A]", "<eos>", "<|no-answer|>"]


class Problem(NamedTuple):
    """One reachability question.

    edges: [m, 2] int32 (source, target) node ids; root, target (reachable), neg_target (not reachable).
    n_nodes: nodes in the graph (ids are a permutation of range(n_nodes) or of 0..30 after relabelling).
    dist: [31] int32 shortest hop count from root, -1 if unreachable.
    neighbor_k: tuple over hops k = 0..h of the sorted nodes at hop k of some shortest root->target path.
    """

    edges: np.ndarray
    root: int
    target: int
    neg_target: int
    n_nodes: int
    dist: np.ndarray
    neighbor_k: tuple

    @property
    def hops(self) -> int:
        return len(self.neighbor_k) - 1


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    min_nodes: int = 10
    max_nodes: int = 16
    hops: tuple[int, ...] = (3, 4)  # allowed shortest-path lengths root -> target (the paper's "graph-4" set: 3-4)
    parent_rate: float = 1.5  # Poisson mean of parents per node (Coconut Alg. 1)
    max_edges: int = 40

    def __post_init__(self):
        check(2 <= self.min_nodes <= self.max_nodes <= N_NODE_IDS,
              f"need 2 <= min_nodes <= max_nodes <= {N_NODE_IDS}, got {self.min_nodes}, {self.max_nodes}")
        check(len(self.hops) > 0 and all(1 <= h < self.max_nodes for h in self.hops),
              f"hops={self.hops} must be non-empty values in [1, max_nodes)")
        check(self.parent_rate > 0, f"parent_rate must be positive, got {self.parent_rate}")
        check(self.max_edges >= 2, f"max_edges must be >= 2, got {self.max_edges}")


def bfs_distances(edges: np.ndarray, source: int, n: int = N_NODE_IDS, reverse: bool = False) -> np.ndarray:
    """[n] shortest hop counts from `source` along the edges (against them if `reverse`); -1 = unreachable."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for s, t in np.asarray(edges).reshape(-1, 2):
        if reverse:
            s, t = t, s
        adj[int(s)].append(int(t))
    dist = np.full(n, -1, np.int32)
    dist[source] = 0
    frontier = [source]
    while frontier:
        nxt = []
        for u in frontier:
            for v in adj[u]:
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    nxt.append(v)
        frontier = nxt
    return dist


def _make_problem(edges: np.ndarray, root: int, target: int, neg: int, n_nodes: int) -> Problem:
    dist = bfs_distances(edges, root)
    to_target = bfs_distances(edges, target, reverse=True)
    h = int(dist[target])
    on_path = (dist >= 0) & (to_target >= 0) & (dist + to_target == h)
    neighbor_k = tuple(tuple(int(v) for v in np.nonzero(on_path & (dist == k))[0]) for k in range(h + 1))
    return Problem(np.asarray(edges, np.int32).reshape(-1, 2), int(root), int(target), int(neg), int(n_nodes),
                   dist, neighbor_k)


def _sample_dag(rng: np.random.Generator, n: int, rate: float):
    """Coconut Alg. 1: node 0 = root (label bit 1), node 1 = decoy root (bit 2); labels are OR of parents."""
    label = np.zeros(n, np.int32)
    label[0], label[1] = 1, 2
    depth = np.zeros(n, np.int32)
    edges = []
    for idx in range(2, n):
        u = rng.random()
        existing = np.arange(idx)
        if u < 0.35:
            cand = existing[(label[:idx] & 2) == 0]  # cannot descend from the decoy root
        elif u < 0.70:
            cand = existing[(label[:idx] & 1) == 0]  # cannot descend from the root
        else:
            cand = existing
        k = min(max(1, rng.poisson(rate)), len(cand))
        if k == 0:
            continue
        w = depth[cand] * 1.5 + 1.0
        parents = rng.choice(cand, size=k, replace=False, p=w / w.sum())
        for p in parents:
            edges.append((int(p), idx))
            label[idx] |= label[p]
        depth[idx] = 1 + depth[parents].max()
    return np.asarray(edges, np.int32).reshape(-1, 2), label


def sample_problem(rng: np.random.Generator, cfg: GraphConfig, max_tries: int = 1000) -> tuple[Problem, tuple]:
    """One problem and its relabelling-free key (generation-order edges, root, target, neg) for dedup."""
    for _ in range(max_tries):
        n = int(rng.integers(cfg.min_nodes, cfg.max_nodes + 1))
        edges, label = _sample_dag(rng, n, cfg.parent_rate)
        if len(edges) > cfg.max_edges or len(edges) == 0:
            continue
        dist = bfs_distances(edges, 0, n)
        hops = int(rng.choice(cfg.hops))
        targets = np.nonzero((dist == hops) & (label == 1))[0]  # descends from root only
        negs = np.nonzero((dist < 0) & (label == 2))[0]
        if len(targets) == 0 or len(negs) == 0:
            continue
        # prefer candidates that are leaves, as ProsQA does, when there are some
        out_deg = np.bincount(edges[:, 0], minlength=n)
        targets = targets[out_deg[targets] == 0] if np.any(out_deg[targets] == 0) else targets
        negs = negs[out_deg[negs] == 0] if np.any(out_deg[negs] == 0) else negs
        target, neg = int(rng.choice(targets)), int(rng.choice(negs))
        key = (n, tuple(map(tuple, edges.tolist())), target, neg)
        perm = rng.permutation(n)  # node ids carry no generation-order information
        return _make_problem(perm[edges], int(perm[0]), int(perm[target]), int(perm[neg]), n), key
    raise ConfigError(f"no graph with hops={cfg.hops} found in {max_tries} tries; raise max_nodes or max_edges")


def generate_problems(count: int, cfg: GraphConfig, seed: int) -> list[Problem]:
    """`count` distinct problems (by generation-order graph), reproducible from `seed`."""
    check(count >= 0, f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    seen, out = set(), []
    while len(out) < count:
        problem, key = sample_problem(rng, cfg)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def split_problems(n_train: int, n_val: int, n_test: int, cfg: GraphConfig, seed: int = 0):
    """(train, val, test) lists of pairwise-distinct problems, reproducible from `seed`."""
    problems = generate_problems(n_train + n_val + n_test, cfg, seed)
    return problems[:n_train], problems[n_train:n_train + n_val], problems[n_train + n_val:]


def graph_key(p: Problem) -> tuple:
    """Labelled-graph identity (edge set, root, candidates), for disjointness checks."""
    return (tuple(sorted(map(tuple, p.edges.tolist()))), p.root, p.target, p.neg_target)


def relabel_problem(p: Problem, rng: np.random.Generator) -> Problem:
    """Rename the nodes with a random injection into the 31 node ids (a fresh permutation per call)."""
    perm = rng.permutation(N_NODE_IDS)
    dist = np.full(N_NODE_IDS, -1, np.int32)
    dist[perm] = p.dist
    return Problem(perm[p.edges], int(perm[p.root]), int(perm[p.target]), int(perm[p.neg_target]), p.n_nodes,
                   dist, tuple(tuple(sorted(int(perm[v]) for v in hop)) for hop in p.neighbor_k))


def encode_prompt(p: Problem, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """[3m + 6] int32 prompt `<eos> s t | ... [Q] c_a c_b [R] r`; edges shuffled, candidates ordered by `rng`."""
    edges = p.edges
    cands = [p.target, p.neg_target]
    if rng is not None:
        edges = edges[rng.permutation(len(edges))]
        if rng.random() < 0.5:
            cands = cands[::-1]
    body = np.concatenate([edges, np.full((len(edges), 1), EDGE, np.int32)], axis=1).reshape(-1)
    return np.concatenate([[EOS], body, [QUESTION, *cands, REASON, p.root]]).astype(np.int32)


def optimal_path(p: Problem, rng: Optional[np.random.Generator] = None) -> list[int]:
    """One shortest root -> target path [n_1, ..., n_h = target] (random among the optimal ones)."""
    adj = {}
    for s, t in p.edges.tolist():
        adj.setdefault(s, []).append(t)
    on = [set(h) for h in p.neighbor_k]
    path, u = [], p.root
    for k in range(1, p.hops + 1):
        nxt = sorted(v for v in adj.get(u, []) if v in on[k])
        u = nxt[0] if rng is None else nxt[int(rng.integers(len(nxt)))]
        path.append(u)
    return path


def frontier(p: Problem, k: int) -> np.ndarray:
    """Nodes exactly k hops from the root."""
    return np.nonzero(p.dist == k)[0]


def reachable_within(p: Problem, k: int) -> np.ndarray:
    """Nodes at most k hops from the root (root included): the Emergence paper's BFS label set."""
    return np.nonzero((p.dist >= 0) & (p.dist <= k))[0]


def decode(tokens) -> str:
    return " ".join(TOKEN_NAMES[int(t)] for t in tokens)


# ----------------------------------------------------------------------------------------------------------
# Batches in the static layout of `jaxllm.models.coconut` (left-padded prompts, K latent slots, then [A]).

LABEL_MODES = ("coconut", "bfs_uniform", "bfs_frontier", "bfs_reachable")


def prompt_len(max_edges: int) -> int:
    """P: the padded prompt length; the root r sits at index P - 1."""
    return 3 * max_edges + 6


def _label_set(p: Problem, s: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Multi-hot [V] supervision for the thought generated after s latents (hop s + 1), before the answer.

    coconut: one node drawn from neighbor_k[s+1] (an optimal path; paper 1 code); bfs_uniform: one node
    drawn uniformly from the frontier at hop s+1 (paper 1 §5.4); bfs_frontier: the set of nodes exactly s+1
    hops away (the set loss of the issue / Emergence Eq. 6); bfs_reachable: the set of nodes within s+1 hops,
    root included (the Emergence code's data files; predicting the root alone then satisfies every stage).
    """
    out = np.zeros(VOCAB_SIZE, np.float32)
    if mode == "coconut":
        out[rng.choice(p.neighbor_k[s + 1])] = 1
    elif mode == "bfs_uniform":
        out[rng.choice(frontier(p, s + 1))] = 1
    elif mode == "bfs_reachable":
        out[reachable_within(p, s + 1)] = 1
    else:
        out[frontier(p, s + 1)] = 1
    return out


def latent_batch(problems: list, stage: int, rng: np.random.Generator, *, max_latent: int, max_edges: int,
                 mode: str = "coconut", uniform_prob: float = 0.0, relabel: bool = False,
                 final_only: bool = False) -> dict:
    """One batch for continuous-thought training / evaluation.

    Per sample s = min(stage, hops) (with prob `uniform_prob` s ~ U{0..min(stage, hops)}); s < hops: the label
    is the hop-(s+1) node(s) read at the s-th thought's position (r's position when s = 0); s = hops: the
    answer read at `[A]`. `final_only` forces s = min(hops, max_latent) with the answer label (evaluation).
    Returns numpy arrays: tokens/positions/attention_mask [B, T], read_pos, n_latent, is_final [B],
    label_set [B, V], and per-edge bookkeeping edge_src/edge_tgt/edge_pos/edge_valid [B, max_edges].
    """
    check(mode in LABEL_MODES, f"label mode {mode!r} not in {list(LABEL_MODES)}")
    check(max_latent >= 0 and stage >= 0, f"max_latent={max_latent} and stage={stage} must be >= 0")
    P, K, B = prompt_len(max_edges), max_latent, len(problems)
    T = P + K + 1
    tokens = np.full((B, T), EOS, np.int32)
    positions = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), bool)
    out = {k: np.zeros(B, np.int32) for k in ("read_pos", "n_latent", "root", "target", "neg_target")}
    out["is_final"] = np.zeros(B, bool)
    out["label_set"] = np.zeros((B, VOCAB_SIZE), np.float32)
    out["dist"] = np.zeros((B, N_NODE_IDS), np.int32)
    for name in ("edge_src", "edge_tgt", "edge_pos"):
        out[name] = np.zeros((B, max_edges), np.int32)
    out["edge_valid"] = np.zeros((B, max_edges), bool)
    for b, p in enumerate(problems):
        if len(p.edges) > max_edges:
            raise ConfigError(f"a problem has {len(p.edges)} edges, more than max_edges={max_edges}")
        if relabel:
            p = relabel_problem(p, rng)
        prompt = encode_prompt(p, rng)
        L = len(prompt)
        off = P - L
        tokens[b, off:P] = prompt
        positions[b, off:P] = np.arange(L)
        mask[b, off:P] = True
        top = min(stage, p.hops, K)
        s = int(rng.integers(top + 1)) if rng.random() < uniform_prob else top
        if final_only:
            s = min(p.hops, K)
        final = final_only or s >= p.hops or (s == K and stage > K)
        tokens[b, P:P + K] = LATENT
        positions[b, P:P + K] = L + np.arange(K)
        mask[b, P:P + s] = True
        tokens[b, P + K] = ANSWER
        positions[b, P + K] = L + s
        mask[b, P + K] = True
        out["read_pos"][b] = P + K if final else P - 1 + s
        out["is_final"][b] = final
        if final:
            out["label_set"][b, p.target] = 1
        else:
            out["label_set"][b] = _label_set(p, s, mode, rng)
        out["n_latent"][b] = s
        out["root"][b], out["target"][b], out["neg_target"][b] = p.root, p.target, p.neg_target
        out["dist"][b] = p.dist
        m = len(p.edges)
        body = prompt[1:1 + 3 * m].reshape(m, 3)
        out["edge_src"][b, :m], out["edge_tgt"][b, :m] = body[:, 0], body[:, 1]
        out["edge_pos"][b, :m] = off + 3 * np.arange(1, m + 1)
        out["edge_valid"][b, :m] = True
    return dict(tokens=tokens, positions=positions, attention_mask=mask, **out)


def cot_batch(problems: list, rng: np.random.Generator, *, max_edges: int, max_hops: int, use_path: bool = True,
              relabel: bool = False) -> dict:
    """Discrete CoT (`... r n_1 .. n_h [A] c*`, loss on the continuation) or no-CoT (`... r [A] c*`).

    Returns tokens/positions/attention_mask/loss_mask [B, P + max_hops + 2] and the prompt-only part under
    `prompt_*` (left-padded to P) for greedy decoding, plus target/neg_target [B].
    """
    P, B = prompt_len(max_edges), len(problems)
    C = (max_hops if use_path else 0) + 2
    tokens = np.full((B, P + C), EOS, np.int32)
    positions = np.zeros((B, P + C), np.int32)
    mask = np.zeros((B, P + C), bool)
    loss_mask = np.zeros((B, P + C), bool)
    target, neg = np.zeros(B, np.int32), np.zeros(B, np.int32)
    for b, p in enumerate(problems):
        if len(p.edges) > max_edges or (use_path and p.hops > max_hops):
            raise ConfigError(f"a problem exceeds max_edges={max_edges} or max_hops={max_hops}")
        if relabel:
            p = relabel_problem(p, rng)
        prompt = encode_prompt(p, rng)
        L = len(prompt)
        cont = (optimal_path(p, rng) if use_path else []) + [ANSWER, p.target]
        seq = np.concatenate([prompt, cont])
        off = P - L
        tokens[b, off:off + len(seq)] = seq
        positions[b, off:off + len(seq)] = np.arange(len(seq))
        mask[b, off:off + len(seq)] = True
        loss_mask[b, P:P + len(cont)] = True
        target[b], neg[b] = p.target, p.neg_target
    return dict(tokens=tokens, positions=positions, attention_mask=mask, loss_mask=loss_mask,
                prompt_tokens=tokens[:, :P], prompt_positions=positions[:, :P], prompt_mask=mask[:, :P],
                target=target, neg_target=neg)


class ProblemBatches:
    """Endless seeded batches over `problems` (a fresh permutation, edge order and candidate order per epoch).

    `make(problems, rng)` builds one batch; the state is the step counter, so resume is exact.
    """

    def __init__(self, problems: list, batch_size: int, make, seed: int = 0):
        check(0 < batch_size <= len(problems), f"batch_size={batch_size} must be in [1, {len(problems)}]")
        self.problems, self.batch_size, self.make, self.seed = problems, batch_size, make, seed
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        per_epoch = len(self.problems) // self.batch_size
        epoch, i = divmod(self.step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))
        idx = order[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        self.step += 1
        return self.make([self.problems[j] for j in idx], rng)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(np.asarray(state["step"]))
