"""How the Ray backend judges a gang from its ranks' states (``RayBackend._gang_status``): one state
for the whole attempt, and the ranks still running stopped once one ended badly."""

from __future__ import annotations

import pytest

from coop.server.backends import RunStatus, gang_ref, gang_size, master_port, rank_ref, split_ref
from coop.server.backends.ray import RayBackend


class Recorded(RayBackend):
    """The real judge, with ``stop`` recorded instead of sent to a Ray cluster (none runs here)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9")
        self.stopped: list[str] = []

    def stop(self, ref: str) -> None:
        self.stopped.append(ref)


REF = gang_ref("coop-12-1", 3)


def judge(*states: RunStatus) -> tuple[RunStatus, list[str]]:
    backend = Recorded()
    return backend._gang_status(REF, list(states)), backend.stopped


def run(state: str, code: int | None = None) -> RunStatus:
    return RunStatus(state, code)  # type: ignore[arg-type]


def test_refs_carry_the_gang_size_and_each_rank() -> None:
    assert (REF, gang_size(REF), gang_ref("coop-12-1", 1)) == ("coop-12-1-x3", 3, "coop-12-1")
    assert rank_ref(REF, 2) == "coop-12-1-x3-rank2" and split_ref(rank_ref(REF, 2)) == (REF, 2)
    assert rank_ref("coop-12-1", 0) == "coop-12-1" and split_ref("coop-12-1-rank1") == ("coop-12-1-rank1", None)
    assert 20000 <= master_port(REF) < 30000 and master_port(REF) == master_port("coop-12-1-x3")


@pytest.mark.parametrize(
    ("states", "expected", "stops"),
    [
        (("RUNNING", "RUNNING", "PENDING"), ("RUNNING", None, None), False),
        (("PENDING", "PENDING", "PENDING"), ("PENDING", None, None), False),
        (("SUCCEEDED", "RUNNING", "RUNNING"), ("RUNNING", None, None), False),  # rank 0 done, the rest not yet
        (("SUCCEEDED", "SUCCEEDED", "SUCCEEDED"), ("SUCCEEDED", 0, None), False),
        (("RUNNING", "FAILED", "RUNNING"), ("RUNNING", None, None), True),  # stop the others first
        (("STOPPED", "FAILED", "STOPPED"), ("FAILED", 3, 1), False),  # then the failed rank decides
        (("STOPPED", "LOST", "FAILED"), ("LOST", None, 1), False),  # a lost node outranks a failure
        (("RUNNING", "MISSING", "PENDING"), ("MISSING", None, None), False),  # not all submitted yet
        (("STOPPED", "MISSING", "STOPPED"), ("LOST", None, 1), False),
        (("STOPPED", "STOPPED", "STOPPED"), ("STOPPED", None, 0), False),
    ],
)
def test_one_state_for_the_gang(states: tuple[str, ...], expected: tuple[object, ...], stops: bool) -> None:
    codes = {"FAILED": 3}
    status, stopped = judge(*(run(s, codes.get(s)) for s in states))
    assert (status.state, status.exit_code, status.rank) == expected
    assert stopped == ([REF] if stops else [])
