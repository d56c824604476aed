"""Which ends of an attempt give a job another: ``retries`` for the infrastructure's doing (its node or
the backend lost it), ``retries_on_failure`` (0 by default) for the job's own failure; a preemption
never counts. The real services and ledger on SQLite and PostgreSQL, driven by the live scheduling
cycle; the backend says how each attempt ended, as Ray's and Slurm's status do (the Slurm states go
through the backend's own mapping). Ray runs the same in tests/e2e/test_run_on_ray.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from coop.schemas import Heartbeat
from coop.server.backends import RunStatus
from coop.server.backends.slurm.backend import run_status
from coop.server.services import scheduling
from tests.api.helpers import node
from tests.conftest import Coordinator, loopless_coordinator, own_postgres
from tests.observability.cooperative import InProcessBackend


class EndingBackend(InProcessBackend):
    """Every attempt runs until the test says how it ended (``end``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: dict[str, RunStatus] = {}

    def status(self, ref: str) -> RunStatus:
        return self.ends.get(ref) or super().status(ref)

    def end(self, status: RunStatus) -> None:
        (ref,) = [r for r, state in self.runs.items() if state == "RUNNING" and r not in self.ends]
        self.ends[ref] = status


EXIT_7 = RunStatus("FAILED", 7, "")
NODE_GONE = RunStatus("LOST", None, "its Ray node died")


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = own_postgres("coop_retries") if request.param == "postgres" else None
    with loopless_coordinator(tmp_path / "coop", url) as coordinator:
        coordinator.alice = coordinator.new_member("alice")[0]  # type: ignore[attr-defined]
        agent = coordinator.agent("alice")
        box = agent.register_node(node("box", gpus=0, cpus=16))
        coordinator.heartbeat = lambda: agent.heartbeat(box["id"], Heartbeat())  # type: ignore[attr-defined]
        yield coordinator


def cycle(c: Coordinator, backend: EndingBackend) -> None:
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)


def run(c: Coordinator, spec: dict[str, Any], ends: list[RunStatus]) -> dict[str, Any]:
    """Submit ``spec`` and end its attempts as ``ends`` say, one per attempt, while it keeps coming back."""
    backend = EndingBackend()
    job = c.alice.submit(  # type: ignore[attr-defined]
        {"name": "job", "run": "exit 7", **spec}
    )
    cycle(c, backend)
    for status in ends:
        if c.admin.job(job["id"])["state"] not in ("STARTING", "RUNNING"):
            break
        backend.end(status)
        cycle(c, backend)  # the end is recorded (a lost attempt's node is offline: its agent comes back)
        c.heartbeat()  # type: ignore[attr-defined]
        cycle(c, backend)  # a job given another attempt is placed again
    return c.admin.job(job["id"])  # type: ignore[no-any-return]


def attempt_states(job: dict[str, Any]) -> list[str]:
    return [a["state"] for a in job["attempts_detail"]]


def test_a_job_that_fails_on_its_own_runs_once_by_default(c: Coordinator) -> None:
    """The issue's case: exit 7 ran three times under retries: 2. Now once, and it says why."""
    done = run(c, {}, [EXIT_7, EXIT_7, EXIT_7])
    assert (done["state"], attempt_states(done), done["exit_code"]) == ("FAILED", ["FAILED"], 7)
    assert (done["retries"], done["retries_on_failure"]) == (2, 0)
    assert done["reason"] == "exited with code 7; not retried: it failed on its own and retries_on_failure is 0"


def test_retries_on_failure_reruns_a_failed_job_that_many_times(c: Coordinator) -> None:
    done = run(c, {"retries_on_failure": 2}, [EXIT_7, EXIT_7, EXIT_7, EXIT_7])
    assert (done["state"], attempt_states(done)) == ("FAILED", ["FAILED"] * 3)
    assert done["reason"] == "exited with code 7; no retries_on_failure left (2 used)"
    requeued = [e["reason"] for e in done["events"] if e["to_state"] == "PENDING" and e["attempt"]]
    assert requeued == [f"exited with code 7; retrying ({n} of 2 retries_on_failure used)" for n in (1, 2)]
    assert done["retries_on_failure"] == 2


def test_lost_nodes_use_retries_and_never_retries_on_failure(c: Coordinator) -> None:
    done = run(c, {}, [NODE_GONE, NODE_GONE, RunStatus("SUCCEEDED", 0)])
    assert (done["state"], attempt_states(done)) == ("SUCCEEDED", ["LOST", "LOST", "SUCCEEDED"])
    lost = run(c, {"retries": 1, "retries_on_failure": 5}, [NODE_GONE, NODE_GONE, NODE_GONE])
    assert (lost["state"], attempt_states(lost)) == ("FAILED", ["LOST", "LOST"])
    assert lost["reason"].endswith("; no retries left (1 retries for lost nodes used)")


def test_the_two_budgets_are_counted_apart(c: Coordinator) -> None:
    """A lost node does not spend the failure budget, nor a failure the lost-node one."""
    spec = {"retries": 1, "retries_on_failure": 1}
    done = run(c, spec, [NODE_GONE, EXIT_7, RunStatus("SUCCEEDED", 0)])
    assert (done["state"], attempt_states(done)) == ("SUCCEEDED", ["LOST", "FAILED", "SUCCEEDED"])
    done = run(c, spec, [EXIT_7, NODE_GONE, EXIT_7])
    assert (done["state"], attempt_states(done)) == ("FAILED", ["FAILED", "LOST", "FAILED"])
    assert done["reason"] == "exited with code 7; no retries_on_failure left (1 used)"


def test_a_failure_another_attempt_would_repeat_is_never_retried(c: Coordinator) -> None:
    timeout = run_status("TIMEOUT", None, None, limit="00:01:00")
    done = run(c, {"retries_on_failure": 3}, [timeout])
    assert (done["state"], attempt_states(done)) == ("FAILED", ["FAILED"])
    assert done["reason"].endswith("(TIMEOUT); not retried: another attempt would end the same way")


def test_slurm_states_count_as_infrastructure_or_application(c: Coordinator) -> None:
    """Slurm's words through the backend's mapping: NODE_FAIL and PREEMPTED are the cluster's doing
    (``retries``), FAILED with an exit code and OUT_OF_MEMORY the job's (``retries_on_failure``)."""
    ends = [run_status("NODE_FAIL", None, None), run_status("PREEMPTED", None, None), run_status("FAILED", 7, None)]
    done = run(c, {}, ends)
    assert (done["state"], attempt_states(done)) == ("FAILED", ["LOST", "LOST", "FAILED"])
    assert done["exit_code"] == 7 and "retries_on_failure is 0" in done["reason"]
    oom = run(c, {"retries_on_failure": 1}, [run_status("OUT_OF_MEMORY", None, None)] * 3)
    assert (oom["state"], attempt_states(oom)) == ("FAILED", ["FAILED", "FAILED"])
