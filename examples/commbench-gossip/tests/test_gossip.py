"""The suite's contract kit, run over this plugin: all a plugin author writes."""

import pytest

from suite.testing import NotApplicable, contract


@pytest.mark.parametrize("check", contract("gossip"), ids=lambda c: c.__name__)
def test_contract(check, tmp_path):
    try:
        check(tmp_path)
    except NotApplicable as why:
        pytest.skip(str(why))
