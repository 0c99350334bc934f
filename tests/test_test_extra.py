"""`require_extra`: under the Makefile's test targets (JAXLLM_TEST_EXTRA=1) a missing package of the `test` extra
fails the test that needs it; without the variable (plain pytest, no extra installed) the test is skipped."""

import pytest

from tests.conftest import TEST_EXTRA_ENV, require_extra

MISSING = "jaxllm_no_such_package_xyz"


def test_missing_extra_package_fails_when_the_extra_is_declared_installed(monkeypatch):
    monkeypatch.setenv(TEST_EXTRA_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} is part of the `test` extra"):
        require_extra(MISSING)


def test_missing_extra_package_skips_otherwise(monkeypatch):
    monkeypatch.delenv(TEST_EXTRA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require_extra(MISSING)


@pytest.mark.parametrize("flag", ["1", None])
def test_present_package_is_returned_either_way(monkeypatch, flag):
    if flag is None:
        monkeypatch.delenv(TEST_EXTRA_ENV, raising=False)
    else:
        monkeypatch.setenv(TEST_EXTRA_ENV, flag)
    assert require_extra("json").dumps([1]) == "[1]"
