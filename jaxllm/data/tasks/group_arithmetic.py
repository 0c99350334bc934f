"""Group arithmetic data for Li2 grokking (arXiv 2509.21519): all pairs (h1, h2) -> h1·h2 of a finite group.

Groups (elements are integers 0..order-1, identity 0):
- `cyclic_group(M)`: Z_M, h1·h2 = (h1 + h2) mod M.
- `product_group((a, b, ...))`: Z_a × Z_b × ..., flattened with the first factor fastest (as the reference's
  `M="2x3x4"`: index = x0 + a·x1 + a·b·x2).
- `dihedral_group(n)`: D_n of order 2n (symmetries of the n-gon), element r^k s^f at index k + n·f.
- `symmetric_group(n)`: S_n of order n!, permutations in lexicographic order, (p·q)(i) = p[q[i]].

`make_group(spec, modulus)` builds one from a config string; `split_pairs` gives the seeded train/test split
of all order² pairs; `critical_train_fraction` is the reference code's boundary 2.7482·ln M/M.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import numpy as np

from jaxllm.config import ConfigError

# Reference default `critical_ratio_multiplier` (cogo/config/dyn_madd.yaml).
CRITICAL_RATIO_MULTIPLIER = 2.7482
GROUP_FAMILIES = ("cyclic", "dihedral", "symmetric", "product:AxB[xC...]")
# Largest irreducible-representation degree of S_n, n = 1..6 (the scaling-law correction is d_max / 2).
_SYMMETRIC_MAX_IRREP = {1: 1, 2: 1, 3: 2, 4: 3, 5: 6, 6: 16}


class Group(NamedTuple):
    """A finite group by its Cayley table.

    name: e.g. "Z_23", "Z_4xZ_6", "D_5", "S_4".
    table: [order, order] int32, table[h1, h2] = h1·h2.
    inverse: [order] int32, inverse[h] = h⁻¹.
    max_irrep_degree: largest irreducible-representation degree d_max (1 for abelian groups).
    """

    name: str
    table: np.ndarray
    inverse: np.ndarray
    abelian: bool
    max_irrep_degree: int

    @property
    def order(self) -> int:
        return int(self.table.shape[0])


def _from_table(name: str, table: np.ndarray, max_irrep_degree: int) -> Group:
    table = np.asarray(table, np.int32)
    order = table.shape[0]
    identity_hits = np.nonzero(table == 0)
    inverse = np.full(order, -1, np.int32)
    inverse[identity_hits[0]] = identity_hits[1]
    return Group(name, table, inverse, bool(np.array_equal(table, table.T)), max_irrep_degree)


def cyclic_group(modulus: int) -> Group:
    _check_positive("modulus", modulus, minimum=2)
    h = np.arange(modulus)
    return _from_table(f"Z_{modulus}", (h[:, None] + h[None, :]) % modulus, 1)


def product_group(orders: Sequence[int]) -> Group:
    orders = tuple(int(o) for o in orders)
    if len(orders) < 1:
        raise ConfigError("product group needs at least one factor, e.g. 'product:4x6'")
    for o in orders:
        _check_positive("product group factor", o, minimum=2)
    coords = np.array(list(itertools.product(*(range(o) for o in reversed(orders)))))[:, ::-1]  # [order, n_factors]
    strides = np.cumprod((1,) + orders[:-1])
    summed = (coords[:, None, :] + coords[None, :, :]) % np.array(orders)
    table = summed @ strides
    return _from_table("x".join(f"Z_{o}" for o in orders), table, 1)


def dihedral_group(n: int) -> Group:
    _check_positive("dihedral n", n, minimum=3)
    k = np.arange(2 * n) % n
    f = np.arange(2 * n) // n
    # (r^k1 s^f1)(r^k2 s^f2) = r^(k1 + (-1)^f1 k2) s^(f1 xor f2)
    k12 = (k[:, None] + np.where(f[:, None] == 1, -k[None, :], k[None, :])) % n
    f12 = f[:, None] ^ f[None, :]
    return _from_table(f"D_{n}", k12 + n * f12, 2)


def symmetric_group(n: int) -> Group:
    _check_positive("symmetric n", n, minimum=3)
    if n > 6:
        raise ConfigError(f"symmetric group S_{n} has {math.factorial(n)} elements; use n <= 6")
    perms = list(itertools.permutations(range(n)))
    index = {p: i for i, p in enumerate(perms)}
    arr = np.array(perms)  # [order, n]
    table = np.empty((len(perms), len(perms)), np.int32)
    for i, p in enumerate(arr):
        prod = p[arr]  # row j: p∘q_j, i.e. (p·q)(x) = p[q[x]]
        table[i] = [index[tuple(r)] for r in prod]
    return _from_table(f"S_{n}", table, _SYMMETRIC_MAX_IRREP[n])


def make_group(spec: str, modulus: int) -> Group:
    """`spec` is "cyclic" (Z_modulus), "dihedral" (D_modulus), "symmetric" (S_modulus) or "product:AxB[xC]"
    (modulus is then ignored)."""
    if spec == "cyclic":
        return cyclic_group(modulus)
    if spec == "dihedral":
        return dihedral_group(modulus)
    if spec == "symmetric":
        return symmetric_group(modulus)
    if spec.startswith("product:"):
        try:
            orders = [int(x) for x in spec[len("product:"):].lower().split("x")]
        except ValueError:
            raise ConfigError(f"group={spec!r}: expected 'product:AxB[xC...]' with integer factors, e.g. 'product:4x6'") from None
        return product_group(orders)
    raise ConfigError(f"group={spec!r} is not one of {list(GROUP_FAMILIES)}")


def _check_positive(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def all_pairs(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (a, b) and its product: three [order²] int32 arrays (a, b, a·b), row-major in (a, b)."""
    m = group.order
    a, b = np.divmod(np.arange(m * m, dtype=np.int32), m)
    return a.astype(np.int32), b.astype(np.int32), group.table[a, b].astype(np.int32)


class Split(NamedTuple):
    """Train and test pairs: a, b, y are [n] int32 arrays (operands and product)."""

    train_a: np.ndarray
    train_b: np.ndarray
    train_y: np.ndarray
    test_a: np.ndarray
    test_b: np.ndarray
    test_y: np.ndarray


def split_sizes(total: int, train_fraction: float) -> tuple[int, int]:
    """(n_train, n_test) as sklearn's train_test_split(test_size=1 - train_fraction) (the reference)."""
    if not (isinstance(train_fraction, (float, int)) and 0.0 < train_fraction < 1.0):
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    n_test = math.ceil(round((1.0 - train_fraction) * total, 9))
    n_train = total - n_test
    if n_train < 1 or n_test < 1:
        raise ConfigError(f"train_fraction={train_fraction} leaves {n_train} train / {n_test} test pairs of {total}")
    return n_train, n_test


def split_pairs(group: Group, train_fraction: float, seed: int) -> Split:
    """Seeded random split of all order² pairs into train (a fraction `train_fraction`) and test."""
    a, b, y = all_pairs(group)
    n_train, _ = split_sizes(len(a), train_fraction)
    perm = np.random.default_rng(seed).permutation(len(a))
    tr, te = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return Split(a[tr], b[tr], y[tr], a[te], b[te], y[te])


def critical_train_fraction(order: int, multiplier: float = CRITICAL_RATIO_MULTIPLIER, delta: float = 0.0,
                            max_irrep_degree: int = 1) -> float:
    """The reference's predicted memorisation/generalisation boundary p* = (d_max/2 if d_max > 1 else 1)
    · (multiplier − delta) · ln M / M, i.e. n_train ≈ 2.7482·M·ln M for Z_M (Li2 Thm 4)."""
    _check_positive("group order", order, minimum=2)
    correction = max_irrep_degree / 2 if max_irrep_degree > 1 else 1.0
    return correction * (multiplier - delta) * math.log(order) / order
