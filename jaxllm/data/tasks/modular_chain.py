"""Chains of modular arithmetic with a worked trace and a `\\boxed{}` answer (the DeepConf toy, deepconf_lsp.md C1).

A problem is x0 (op1 x1) (op2 x2) ... (opL xL) mod M, evaluated left to right. One token per residue, so the
vocabulary is 10 symbols + M residues and the top-20 of a next-token distribution is a real head of it, as with
a large tokenizer. Prompt and trace step have the same stride (3 tokens), so step i of the trace sits at a fixed
offset from step i of the prompt:

    prompt   <bos> x0 , op1 x1 , op2 x2 , ... , opL xL =
    trace    op1 x1 r1 op2 x2 r2 ... opL xL rL \\boxed{ rL } <eos>        r_i = r_{i-1} op_i x_i mod M

`decode` turns tokens into text ("+ 5 8 * 2 16 \\boxed{ 16 }") for the rewards' answer extraction.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from jaxllm.config import ConfigError

SYMBOLS = ("<pad>", "<bos>", "<eos>", "=", ",", "+", "-", "*", "\\boxed{", "}")
PAD, BOS, EOS, EQ, SEP, PLUS, MINUS, TIMES, BOX_OPEN, BOX_CLOSE = range(len(SYMBOLS))
OPS = (PLUS, MINUS, TIMES)


class ChainVocab(NamedTuple):
    modulus: int

    @property
    def size(self) -> int:
        return len(SYMBOLS) + self.modulus

    def residue(self, r) -> np.ndarray:
        return np.asarray(r) + len(SYMBOLS)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token list (specials other than the box dropped); ids outside the vocabulary raise."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.size:
                raise ValueError(f"token id {i} outside the vocabulary [0, {self.size})")
            if i >= len(SYMBOLS):
                out.append(str(i - len(SYMBOLS)))
            elif i not in (PAD, BOS, EOS):
                out.append(SYMBOLS[i])
        return " ".join(out)


class Chains(NamedTuple):
    prompts: np.ndarray  # [n, 3L + 3] int32
    traces: np.ndarray  # [n, 3L + 4] int32, eos last
    answers: np.ndarray  # [n] int32 residue r_L


def apply_op(op: np.ndarray, a: np.ndarray, x: np.ndarray, modulus: int) -> np.ndarray:
    return np.where(op == PLUS, a + x, np.where(op == MINUS, a - x, a * x)) % modulus


def generate(n: int, steps: int, modulus: int, seed: int, ops: str = "+-", max_operand: int = 0) -> Chains:
    """`n` random chains of `steps` operations mod `modulus`: x0 uniform, ops uniform over `ops` (from "+-*"),
    operands uniform in [1, max_operand] (0 = [1, modulus - 1]). Operands are non-zero, so every step is a
    bijection of the running value: one wrong step always changes the answer."""
    if modulus < 2 or steps < 1 or n < 1:
        raise ConfigError(f"modular chains need modulus >= 2, steps >= 1 and n >= 1; got {modulus}, {steps}, {n}")
    if not ops or any(o not in "+-*" for o in ops):
        raise ConfigError(f"ops={ops!r} must be a non-empty string over '+-*'")
    if not 0 <= max_operand < modulus:
        raise ConfigError(f"max_operand={max_operand} must lie in [0, modulus) (0 = any non-zero residue)")
    rng = np.random.default_rng(seed)
    v = ChainVocab(modulus)
    x0 = rng.integers(0, modulus, n)
    op_ids = np.asarray([OPS["+-*".index(o)] for o in ops])
    ops = rng.choice(op_ids, size=(n, steps))
    xs = rng.integers(1, (max_operand or modulus - 1) + 1, (n, steps))
    r = np.zeros((n, steps), np.int64)
    acc = x0
    for i in range(steps):
        acc = apply_op(ops[:, i], acc, xs[:, i], modulus)
        r[:, i] = acc
    prompt = np.zeros((n, 3 * steps + 3), np.int32)
    prompt[:, 0], prompt[:, 1], prompt[:, -1] = BOS, v.residue(x0), EQ
    prompt[:, 2:-1:3], prompt[:, 3:-1:3], prompt[:, 4:-1:3] = SEP, ops, v.residue(xs)
    trace = np.zeros((n, 3 * steps + 4), np.int32)
    trace[:, 0:3 * steps:3], trace[:, 1:3 * steps:3], trace[:, 2:3 * steps:3] = ops, v.residue(xs), v.residue(r)
    trace[:, -4:] = np.stack([np.full(n, BOX_OPEN), v.residue(r[:, -1]), np.full(n, BOX_CLOSE), np.full(n, EOS)], 1)
    return Chains(prompt, trace, r[:, -1].astype(np.int32))


def training_rows(chains: Chains) -> dict:
    """{tokens, loss_mask} [n, 6L + 7]: prompt + trace, loss on the trace tokens only."""
    tokens = np.concatenate([chains.prompts, chains.traces], axis=1)
    mask = np.zeros(tokens.shape, np.float32)
    mask[:, chains.prompts.shape[1]:] = 1.0
    return {"tokens": tokens, "loss_mask": mask}
