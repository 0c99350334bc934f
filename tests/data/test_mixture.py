"""MobileLLM-R1 mixture formulas (Eqs. 1, 5, 6, 7) on hand-made numbers."""

import numpy as np
import pytest

from jaxllm.data import mixture


def test_loo_delta_is_loss_without_minus_loss_with():
    d = mixture.loo_deltas(2.0, {"a": 2.5, "b": 1.9})
    assert d == pytest.approx({"a": 0.5, "b": -0.1})


def test_weights_clip_harmful_sources_and_normalise():
    w = mixture.weights_from_scores({"a": 0.3, "b": 0.1, "noise": -0.2})
    assert w == pytest.approx({"a": 0.75, "b": 0.25, "noise": 0.0})
    w = mixture.weights_from_scores({"a": 0.3, "b": 0.1, "noise": -0.2}, floor=0.3)
    assert w == pytest.approx({"a": 0.7 * 0.75 + 0.1, "b": 0.7 * 0.25 + 0.1, "noise": 0.1})
    with pytest.raises(ValueError, match="no source has a positive score"):
        mixture.weights_from_scores({"a": -1.0, "b": 0.0})


def test_joint_influence_weights_later_checkpoints_more():
    inf = np.zeros((2, 3, 1))
    inf[0, :, 0] = [1.0, 2.0, 3.0]  # capability 0 at checkpoints t=1,2,3
    inf[1, :, 0] = [0.0, 0.0, 6.0]
    # alpha_{c,t} = t / (sum t) / C = t/12
    want = (1 * 1 + 2 * 2 + 3 * 3) / 12 + (3 * 6) / 12
    np.testing.assert_allclose(mixture.joint_influence(inf), [want])


def test_group_weights_eq6_length_weighted_mean_influence_per_token():
    w = mixture.group_weights(
        influence={"math": [1.0, 3.0], "web": [2.0], "spam": [-5.0]},
        sample_lengths={"math": [10, 20], "web": [10], "spam": [100]},
        group_tokens={"math": 70.0, "web": 10.0, "spam": 100.0},
    )
    rho_math, rho_web = (10 + 60) / 70.0, 20 / 10.0
    assert w == pytest.approx({"math": rho_math / (rho_math + rho_web), "web": rho_web / (rho_math + rho_web),
                               "spam": 0.0})
    np.testing.assert_array_equal(mixture.keep_positive([0.1, -0.2, 0.0]), [True, False, False])


def test_capability_weights_normalise_each_capability_then_average():
    deltas = {"math": {"arith": 2.0, "copy": 0.0, "noise": -0.1},
              "copying": {"arith": 0.0, "copy": 0.1, "noise": -0.05},
              "nothing_helps": {"arith": -0.1, "copy": -0.2, "noise": -0.3}}
    w = mixture.weights_from_capability_deltas(deltas)
    assert w == pytest.approx({"arith": 0.5, "copy": 0.5, "noise": 0.0})
