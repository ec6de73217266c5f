"""The contract kit (suite.testing) over every registered protocol, shipped and plugin."""

import pytest

import protocols
from suite.testing import NotApplicable, contract

CHECKS = [check for name in sorted(protocols.load_all()) for check in contract(name)]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(check, tmp_path):
    try:
        check(tmp_path)
    except NotApplicable as why:
        pytest.skip(str(why))
