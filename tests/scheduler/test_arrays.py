"""Job arrays in the live scheduling cycle: tasks are placed as any of their member's jobs, at most
``max_parallel`` of an array at once (the lowest indices first), each launched with its index and matrix
values in its environment. The real services and ledger, SQLite and PostgreSQL; the backend is the
in-process stand-in of tests/observability (Ray runs arrays in tests/e2e/test_arrays.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from coop.server.backends import Launch
from coop.server.services import scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, loopless_coordinator, own_postgres
from tests.observability.cooperative import InProcessBackend


class RecordingBackend(InProcessBackend):
    def __init__(self) -> None:
        super().__init__()
        self.launches: dict[str, Launch] = {}

    def submit(self, launch: Launch) -> None:
        super().submit(launch)
        self.launches[launch.ref] = launch

    def finish_all(self) -> None:
        for ref, state in self.runs.items():
            if state == "RUNNING":
                self.runs[ref] = "SUCCEEDED"


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = own_postgres("coop_arrays_scheduler") if request.param == "postgres" else None
    with loopless_coordinator(tmp_path / "coop", url) as coordinator:
        yield coordinator


def cycle(c: Coordinator, backend: RecordingBackend) -> None:
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)


def states(c: Coordinator, array_id: int) -> list[tuple[int, str]]:
    return [(t["array_index"], t["state"]) for t in c.admin.array_tasks(array_id)]


def test_max_parallel_runs_the_lowest_indices_first_with_their_values(c: Coordinator) -> None:
    alice = c.new_member("alice")[0]
    c.agent("alice").register_node(node("box", gpus=2, cpus=16))
    backend = RecordingBackend()
    shards = ["a", "b", "c", "d", "e"]
    array = alice.submit_array({"name": "shards", "run": "true", "array": {"shard": shards}, "max_parallel": 2})
    held = "waiting: its array runs at most 2 tasks at once (max_parallel)"

    most = 0
    for _ in range(10):
        cycle(c, backend)
        now = states(c, array["id"])
        active = [i for i, s in now if s in ("STARTING", "RUNNING")]
        most = max(most, len(active))
        assert len(active) <= 2
        waiting = [i for i, s in now if s == "PENDING"]
        assert all(i > j for i in waiting for j in active)  # the lowest indices first
        assert all(t["reason"] == held for t in c.admin.array_tasks(array["id"]) if t["array_index"] in waiting)
        backend.finish_all()
        if all(s == "SUCCEEDED" for _, s in now):
            break
    assert states(c, array["id"]) == [(i, "SUCCEEDED") for i in range(5)] and most == 2
    assert c.admin.array(array["id"])["state"] == "SUCCEEDED"

    by_index: dict[int, dict[str, str]] = {}
    for launch in backend.launches.values():
        by_index[int(launch.env["COOP_ARRAY_INDEX"])] = launch.env
    assert sorted(by_index) == [0, 1, 2, 3, 4]
    for index, env in by_index.items():
        task = c.admin.array_task(array["id"], index)
        assert env["COOP_JOB_ID"] == str(task["id"])
        assert (env["COOP_ARRAY_ID"], env["COOP_ARRAY_SIZE"]) == (str(array["id"]), "5")
        assert env["COOP_ARRAY_SHARD"] == shards[index]


def test_tasks_share_the_member_fairly_with_other_members(c: Coordinator) -> None:
    """An array is its member's jobs: a big one does not keep another member's job waiting."""
    alice, bob = c.new_member("alice")[0], c.new_member("bob")[0]
    c.new_member("carol")
    c.agent("carol").register_node(node("box", gpus=2, cpus=16))
    backend = RecordingBackend()
    array = alice.submit_array(job_spec("sweep", gpus=1) | {"array": 20})
    cycle(c, backend)
    assert [s for _, s in states(c, array["id"])].count("STARTING") == 2  # both GPUs, nobody else waits
    backend.finish_all()
    job = bob.submit(job_spec("bobs", gpus=1))
    cycle(c, backend)  # the two tasks end; bob's usage is lower, so his job gets one of the two GPUs
    assert c.admin.job(job["id"])["state"] == "STARTING"
    assert [s for _, s in states(c, array["id"])].count("STARTING") == 1


def test_a_requeued_task_keeps_its_place_within_max_parallel(c: Coordinator) -> None:
    """A task that failed and is retried counts again once it runs: never more than max_parallel."""
    alice = c.new_member("alice")[0]
    c.agent("alice").register_node(node("box", gpus=0, cpus=16))
    backend = RecordingBackend()
    array = alice.submit_array({"name": "flaky", "run": "true", "array": 4, "max_parallel": 1, "retries_on_failure": 1})
    cycle(c, backend)
    (ref,) = backend.runs
    backend.runs[ref] = "FAILED"
    cycle(c, backend)  # task 0 failed; retried, and it is still first in line
    now = dict(states(c, array["id"]))
    assert [i for i, s in now.items() if s in ("STARTING", "RUNNING")] == [0]
    attempts: Any = c.admin.job(c.admin.array_task(array["id"], 0)["id"])["attempts_detail"]
    assert [a["state"] for a in attempts] == ["FAILED", "STARTING"]
