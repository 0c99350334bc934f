"""Test setup: CPU, strict rank promotion (catches silent broadcasting), and `require_extra` for the packages of
setup.cfg's `test` extra."""

import importlib
import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# `make test` / `make test-all` install the `test` extra (torch, galore-torch, transformers, nbclient, ...) and
# export this variable: there a missing package is a failure, so parity evidence is never silently skipped.
TEST_EXTRA_ENV = "JAXLLM_TEST_EXTRA"


def require_extra(module: str):
    """Import `module`, a package of the `test` extra, for a test that needs it (parity with a reference).

    With JAXLLM_TEST_EXTRA=1 (set by the Makefile's test targets) a missing package fails the test, naming the
    package and the install command; otherwise (plain `pytest` without the extra) the test is skipped.
    """
    if os.environ.get(TEST_EXTRA_ENV) == "1":
        try:
            return importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"{module} is part of the `test` extra, which {TEST_EXTRA_ENV}=1 says is installed, but "
                        f"importing it failed: {err!r} (run `make install-test` or `pip install -e '.[test]'`)",
                        pytrace=False)
    return pytest.importorskip(module, reason=f"{module} (the `test` extra) is not installed")
