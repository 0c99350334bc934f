"""Enumerable toy models for the RL loss tests, and the exact (float64, numpy) quantities they admit.

`TableModel` is an any-order masked model given by a lookup table: the logits at every position depend on
the whole (partly masked) input, params = logits [(V+1)^L, L, V+1] (token V is the mask). With L ≤ 4 every
mask pattern, order and sequence can be enumerated, so the ELBO, the EUBO (SPG Corollary 1) and the exact
likelihood of the any-order sampler are known exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class TableModel:
    """model(params, tokens [B, L]) -> params[index(tokens)]: [B, L, V+1] (hashable, the loss protocol)."""

    length: int
    vocab: int  # real tokens 0..V-1; V is the mask id

    @property
    def mask_id(self) -> int:
        return self.vocab

    def index(self, tokens):
        return sum(tokens[..., i] * (self.vocab + 1) ** i for i in range(self.length))

    def __call__(self, params, tokens, *, attention_mask=None, positions=None):
        return params[self.index(tokens.astype(jnp.int32))]


@dataclasses.dataclass(frozen=True)
class ConstModel:
    """model(params, tokens) -> params: the logits themselves are the parameters ([rows, L, V])."""

    def __call__(self, params, tokens, *, attention_mask=None, positions=None):
        return params


def random_table(model: TableModel, seed: int, scale: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=((model.vocab + 1) ** model.length, model.length, model.vocab + 1)) * scale


def consistent_table(model: TableModel, seed: int, concentration: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose every conditional is the exact conditional of one joint over V^L: (table, joint)."""
    V, L = model.vocab, model.length
    joint = np.random.default_rng(seed).dirichlet(np.ones(V ** L) * concentration).reshape((V,) * L)
    table = np.full(((V + 1) ** L, L, V + 1), -1e9)
    for z in itertools.product(range(V + 1), repeat=L):
        idx = int(model.index(np.array(z)))
        sub = joint[tuple(slice(None) if zi == V else zi for zi in z)]
        masked = [i for i in range(L) if z[i] == V]
        for j, i in enumerate(masked):
            other = tuple(a for a in range(len(masked)) if a != j)
            marg = sub.sum(axis=other) if other else sub
            table[idx, i, :V] = np.log(marg / marg.sum())
    return table, joint


def log_softmax(table: np.ndarray) -> np.ndarray:
    x = np.asarray(table, np.float64)
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def cond_logp(model: TableModel, logp: np.ndarray, x, masked, i: int) -> float:
    """log π(x_i | x with the positions `masked` masked)."""
    z = np.array(x)
    z[list(masked)] = model.mask_id
    return float(logp[int(model.index(z)), i, x[i]])


def subsets(positions):
    for k in range(1, len(positions) + 1):
        yield from itertools.combinations(positions, k)


def any_order_loglik(model: TableModel, logp: np.ndarray, x, answer) -> float:
    """log π_AO(x_A | x_rest) = log E_σ Π_k π(x_σk | x_σ<k revealed, the rest of A masked): the likelihood of
    the sampler that unmasks one uniformly random position of A at a time (the T → ∞ limit of the reverse
    process, which SPG's bounds sandwich)."""
    probs = []
    for order in itertools.permutations(answer):
        lp, hidden = 0.0, list(answer)
        for i in order:
            lp += cond_logp(model, logp, x, hidden, i)
            hidden.remove(i)
        probs.append(math.exp(lp))
    return math.log(np.mean(probs))


def mask_pattern_weight(k: int, n: int, eps: float = 0.0) -> float:
    """E_t[w(t) q_t(M)] for one pattern M of k masked among n answer tokens, w = 1/p and p = (1−ε)t + ε with
    t ~ U(0,1): (1/(1−ε)) ∫_ε^1 p^(k−1) (1−p)^(n−k) dp (= (k−1)!(n−k)!/n! at ε = 0)."""
    poly = np.polynomial.Polynomial([0, 1]) ** (k - 1) * np.polynomial.Polynomial([1, -1]) ** (n - k)
    integ = poly.integ()
    return float((integ(1.0) - integ(eps)) / (1.0 - eps))


def exact_elbo(model, logp, x, answer, eps: float = 0.0) -> float:
    """E_{t,z_t}[w(t) Σ_i 1[z_i = M] log π(x_i | z_t)] (SPG eq. 2, linear schedule)."""
    n = len(answer)
    return sum(mask_pattern_weight(len(M), n, eps) * sum(cond_logp(model, logp, x, M, i) for i in M)
               for M in subsets(answer))


def exact_eubo(model, logp, x, answer, beta: float, eps: float = 0.0) -> float:
    """Σ_i (1/β) log E_{t,z_t}[w(t) 1[z_i = M] π^β(x_i | z_t)] (SPG Corollary 1, eq. 7)."""
    n = len(answer)
    total = 0.0
    for i in answer:
        s = sum(mask_pattern_weight(len(M), n, eps) * math.exp(beta * cond_logp(model, logp, x, M, i))
                for M in subsets(answer) if i in M)
        total += math.log(s) / beta
    return total


def all_patterns(answer, length: int):
    """Every non-empty mask pattern of the answer positions: ([K, L] bool masks, [K] sizes)."""
    pats = list(subsets(answer))
    masks = np.zeros((len(pats), length), bool)
    for r, M in enumerate(pats):
        masks[r, list(M)] = True
    return masks, np.array([len(M) for M in pats])


def block_draws(comp_len: int, prompt_len: int, gen_len: int, block_length: int, p_clean: float):
    """Every outcome of one draw of SPG's block-wise masks (`diffusion.block_random_masks`, m = 1) with its
    probability: yields (probability, set of masked positions)."""
    num_blocks = gen_len // block_length
    nb = max(-(-comp_len // block_length), 1)
    for b in range(nb):
        p_b = sum(1 for k in range(num_blocks) if k % nb == b) / num_blocks
        ml = min(block_length, comp_len - b * block_length)
        valid = [prompt_len + b * block_length + j for j in range(ml)]
        forced = [prompt_len + j for j in range(gen_len) if j >= comp_len or j // block_length > b]
        clean = list(range(prompt_len)) + [prompt_len + j for j in range(gen_len) if j // block_length < b]
        for n in range(1, ml + 1):
            for sub in itertools.combinations(valid, n):
                p_sub = p_b / ml / math.comb(ml, n)
                for k in range(len(clean) + 1):
                    for extra in itertools.combinations(clean, k):
                        yield p_sub * p_clean ** k * (1 - p_clean) ** (len(clean) - k), set(sub) | set(forced) | set(extra)


def block_limits(model, logp, x, comp_len, prompt_len, block_length, p_clean, beta):
    """The m → ∞ limits of SPG's length-normalised block-wise estimators (`sequence_bounds` with w = 1/t̂):
    ELBO = E[Σ_i M_i ℓ_i / Σ_i M_i], EUBO = (1/(β L)) Σ_i log E[M_i π_i^β / t̂] (every completion token is
    masked with positive probability, so S → all L of them)."""
    gen_len = len(x) - prompt_len
    completion = list(range(prompt_len, prompt_len + comp_len))
    elbo, s = 0.0, np.zeros(comp_len)
    for p, M in block_draws(comp_len, prompt_len, gen_len, block_length, p_clean):
        counted = [i for i in completion if i in M]
        elbo += p * sum(cond_logp(model, logp, x, M, i) for i in counted) / len(counted)
        t_hat = len(counted) / comp_len
        for i in counted:
            s[i - prompt_len] += p * math.exp(beta * cond_logp(model, logp, x, M, i)) / t_hat
    return elbo, float(np.sum(np.log(s)) / (beta * comp_len))
