"""The checkpoint store: atomic sets, the latest pointer, corrupt files named clearly."""

import pytest
import torch

from suite.checkpoint import Checkpoints


def test_save_commit_load_and_cleanup(tmp_path):
    ranks = [Checkpoints(tmp_path, r) for r in range(2)]
    assert ranks[0].latest_step() is None
    for c in ranks:
        c.save(10, {"rank": c.rank, "x": torch.arange(3)})
    assert ranks[0].latest_step() is None  # saved is not committed
    ranks[0].commit(10, 2)
    for c in ranks:
        c.save(20, {"rank": c.rank})
    # A newer set that is not committed yet must not replace the committed one.
    assert ranks[1].latest_step() == 10 and ranks[1].load(10)["rank"] == 1
    ranks[0].commit(20, 2)
    assert ranks[0].latest_step() == 20
    assert ranks[1].candidates() == [20, 10]  # the previous set stays as a fallback
    for c in ranks:
        c.save(30, {"rank": c.rank})
    ranks[0].commit(30, 2)
    assert ranks[0].candidates() == [30, 20]
    assert sorted(p.name for p in (tmp_path / "checkpoint").glob("*.pt")) == [
        "rank0-step20.pt",
        "rank0-step30.pt",
        "rank1-step20.pt",
        "rank1-step30.pt",
    ]
    ranks[0].commit(30, 2)  # saved twice at one step: the fallback is still the one before
    assert ranks[0].candidates() == [30, 20]
    ranks[0].remove()
    assert not (tmp_path / "checkpoint").exists()


def test_a_corrupt_checkpoint_is_named(tmp_path):
    c = Checkpoints(tmp_path, 0)
    c.save(5, {"a": 1})
    c.commit(5, 1)
    (tmp_path / "checkpoint" / "rank0-step5.pt").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match=r"rank0-step5\.pt is unreadable"):
        c.load(5)


def test_a_garbled_pointer_falls_back_to_the_newest_complete_set_on_disk(tmp_path):
    """An unreadable latest.json is not "no checkpoint": the complete sets on disk are
    the candidates, newest first; a set missing a rank's file is not complete."""
    ranks = [Checkpoints(tmp_path, r, 2) for r in range(2)]
    for step in (10, 20):
        for c in ranks:
            c.save(step, {"rank": c.rank})
        ranks[0].commit(step, 2)
    ranks[0].save(30, {"rank": 0})  # killed while rank 1 was still writing step 30
    ranks[0].latest_file.write_text("{not json")
    assert ranks[0].unreadable_pointer() and "latest.json" not in ranks[0].unreadable_pointer()
    assert ranks[1].candidates() == [20, 10] and ranks[0].latest_step() == 20
    assert Checkpoints(tmp_path, 0).candidates() == [20, 10]  # world size from the files
    ranks[0].latest_file.write_text("")  # truncated
    assert ranks[0].candidates() == [20, 10]
    ranks[0].latest_file.unlink()  # none at all: nothing committed, nothing to resume
    assert ranks[0].unreadable_pointer() is None and ranks[0].candidates() == []
