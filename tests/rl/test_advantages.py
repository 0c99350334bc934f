"""Group-relative advantages against a numpy re-derivation of the references' formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.rl import advantage_metrics, group_advantages, reward_metrics

REWARDS = np.array([1.0, 0.0, 2.0, 0.5, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 1.0, 4.0], np.float32)  # 3 groups of 4


def test_mean_advantages_are_reward_minus_group_mean():
    """SPG/d1/wd1/IGPO code: A = r − mean_group(r), no std; each group sums to zero."""
    adv = np.asarray(group_advantages(jnp.asarray(REWARDS), 4))
    r = REWARDS.reshape(3, 4)
    np.testing.assert_allclose(adv, (r - r.mean(1, keepdims=True)).ravel(), atol=1e-6)
    np.testing.assert_allclose(adv.reshape(3, 4).sum(1), 0.0, atol=1e-5)
    assert np.all(adv[4:8] == 0), "a group with equal rewards has zero advantages"


def test_std_normalised_advantages_follow_grpo():
    """GRPO: (r − mean) / (std + 1e-4), std with Bessel's correction (torch.std); equal rewards give 0."""
    adv = np.asarray(group_advantages(jnp.asarray(REWARDS), 4, normalise="mean_std"))
    r = REWARDS.reshape(3, 4).astype(np.float64)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(adv, want.ravel(), rtol=1e-5)
    assert np.all(adv[4:8] == 0)


def test_reward_and_advantage_metrics():
    m = reward_metrics(jnp.asarray(REWARDS), 4)
    r = REWARDS.reshape(3, 4)
    np.testing.assert_allclose(float(m["reward_mean"]), r.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(m["reward_std"]), r.std(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["zero_std_frac"]), 1 / 3, rtol=1e-6)
    a = advantage_metrics(group_advantages(jnp.asarray(REWARDS), 4))
    np.testing.assert_allclose([float(a["adv_pos_frac"]), float(a["adv_neg_frac"])], [3 / 12, 5 / 12], rtol=1e-6)


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="group_size=5 does not divide the rewards size 12"):
        group_advantages(jnp.asarray(REWARDS), 5)
    with pytest.raises(ValueError, match="normalise='std'"):
        group_advantages(jnp.asarray(REWARDS), 4, normalise="std")
