"""Test setup: CPU, strict rank promotion (catches silent broadcasting), and the multi-device runner."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
