"""Group tables satisfy the group axioms; the split and the critical fraction follow the reference."""

import math

import numpy as np
import pytest

from jaxllm.config import ConfigError
from jaxllm.data.tasks import group_arithmetic as ga

GROUPS = [ga.cyclic_group(7), ga.product_group((2, 3)), ga.product_group((4, 6)), ga.dihedral_group(5),
          ga.symmetric_group(3), ga.symmetric_group(4)]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_group_axioms(group):
    t = group.table
    n = group.order
    h = np.arange(n)
    # closure and Latin square (every row / column a permutation)
    assert t.min() >= 0 and t.max() < n
    assert all(len(set(row)) == n for row in t) and all(len(set(col)) == n for col in t.T)
    # identity 0
    np.testing.assert_array_equal(t[0], h)
    np.testing.assert_array_equal(t[:, 0], h)
    # inverses
    np.testing.assert_array_equal(t[h, group.inverse], np.zeros(n))
    np.testing.assert_array_equal(t[group.inverse, h], np.zeros(n))
    # associativity over every triple
    a, b, c = np.meshgrid(h, h, h, indexing="ij")
    np.testing.assert_array_equal(t[t[a, b], c], t[a, t[b, c]])


def test_abelian_and_non_abelian_families():
    assert ga.cyclic_group(9).abelian and ga.product_group((3, 5)).abelian
    for g in (ga.dihedral_group(3), ga.dihedral_group(6), ga.symmetric_group(3), ga.symmetric_group(5)):
        assert not g.abelian, g.name
    assert ga.dihedral_group(5).order == 10 and ga.symmetric_group(4).order == 24
    assert ga.symmetric_group(4).max_irrep_degree == 3 and ga.dihedral_group(5).max_irrep_degree == 2


def test_cyclic_and_product_tables_are_addition():
    np.testing.assert_array_equal(ga.cyclic_group(5).table[3], [3, 4, 0, 1, 2])
    g = ga.product_group((2, 3))  # index = x0 + 2·x1, first factor fastest (reference's flattening)
    x0, x1 = np.divmod(np.arange(6), 2)[::-1]
    for i in range(6):
        for j in range(6):
            k = g.table[i, j]
            assert k % 2 == (x0[i] + x0[j]) % 2 and k // 2 == (x1[i] + x1[j]) % 3


def test_dihedral_relations():
    g = ga.dihedral_group(5)
    r, s = 1, 5  # r = rotation by one step, s = a reflection
    power = 0
    for _ in range(5):
        power = g.table[power, r]
    assert power == 0  # r^5 = e
    assert g.table[s, s] == 0  # s^2 = e
    assert g.table[g.table[s, r], s] == g.inverse[r]  # s r s = r^-1


def test_make_group_specs_and_errors():
    assert ga.make_group("cyclic", 11).name == "Z_11"
    assert ga.make_group("product:4x6", 0).order == 24
    assert ga.make_group("dihedral", 4).name == "D_4"
    assert ga.make_group("symmetric", 3).name == "S_3"
    with pytest.raises(ConfigError, match="group='quaternion'"):
        ga.make_group("quaternion", 8)
    with pytest.raises(ConfigError, match="modulus"):
        ga.cyclic_group(1)
    with pytest.raises(ConfigError, match="product"):
        ga.make_group("product:4xq", 0)
    with pytest.raises(ConfigError, match="S_7"):
        ga.symmetric_group(7)


def test_split_is_seeded_disjoint_and_complete():
    g = ga.cyclic_group(23)
    s = ga.split_pairs(g, 0.375, seed=3)
    assert len(s.train_a) == 529 - math.ceil(0.625 * 529) == 198  # sklearn's test_size rounding (reference)
    train = set(zip(s.train_a, s.train_b))
    test = set(zip(s.test_a, s.test_b))
    assert not train & test and len(train | test) == 529
    np.testing.assert_array_equal(s.train_y, (s.train_a + s.train_b) % 23)
    again = ga.split_pairs(g, 0.375, seed=3)
    np.testing.assert_array_equal(again.train_a, s.train_a)
    other = ga.split_pairs(g, 0.375, seed=4)
    assert not np.array_equal(other.train_a, s.train_a)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, 0.0001])
def test_bad_train_fraction_is_named(fraction):
    with pytest.raises(ConfigError, match="train_fraction"):
        ga.split_pairs(ga.cyclic_group(5), fraction, 0)


def test_critical_train_fraction_matches_reference_examples():
    # models_theory.md 2.1: M=23 -> 0.375, M=71 -> 0.165, M=127 -> 0.105
    assert ga.critical_train_fraction(23) == pytest.approx(0.3747, abs=1e-4)
    assert ga.critical_train_fraction(71) == pytest.approx(0.1650, abs=1e-4)
    assert ga.critical_train_fraction(127) == pytest.approx(0.1048, abs=1e-4)
    assert ga.critical_train_fraction(23, delta=1.0) == pytest.approx(1.7482 * math.log(23) / 23)
    # non-abelian correction d_max/2
    assert ga.critical_train_fraction(24, max_irrep_degree=3) == pytest.approx(1.5 * 2.7482 * math.log(24) / 24)
