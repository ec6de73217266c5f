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


def test_the_kit_catches_replicas_that_drift_apart(tmp_path):
    """A protocol whose rank 1 drifts from rank 0 after every sync fails the replica
    check (and the check says where), although rank 0 trains exactly as ddp does."""
    import drifting  # noqa: F401 - registers the test-only protocol (after CHECKS: not in them)

    from suite.testing import check_replicas_agree

    with pytest.raises(AssertionError, match="rank 1 holds other values than rank 0"):
        check_replicas_agree("drifting", tmp_path, workers=2)
