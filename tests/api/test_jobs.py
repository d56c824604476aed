"""Submit, show, list and cancel through the real HTTP app."""

from __future__ import annotations

import pytest

from coop.client import CoopError
from tests.api.helpers import job_spec
from tests.conftest import Coordinator


def test_submit_show_list_cancel(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    job = alice.submit(job_spec("first"))
    assert job["state"] == "PENDING" and job["member"] == "alice" and job["gpus"] == 1

    detail = alice.job(job["id"])
    assert detail["spec"]["resources"]["gpus"] == 1
    assert detail["spec"]["name"] == "first"
    assert [e["to_state"] for e in detail["events"]] == ["PENDING"]
    assert detail["attempts_detail"] == []

    second = alice.submit(job_spec("second", gpus=0))
    assert [j["id"] for j in alice.jobs()] == [second["id"], job["id"]]  # newest first

    cancelled = alice.cancel(job["id"])
    assert cancelled["state"] == "CANCELLED" and cancelled["finished_at"] is not None
    events = alice.job(job["id"])["events"]
    assert [(e["from_state"], e["to_state"]) for e in events] == [(None, "PENDING"), ("PENDING", "CANCELLED")]
    assert "alice" in events[-1]["reason"]

    assert [j["id"] for j in alice.jobs(states=["CANCELLED"])] == [job["id"]]
    assert [j["id"] for j in alice.jobs(states=["PENDING"])] == [second["id"]]
    assert [j["id"] for j in alice.jobs(name="seco")] == [second["id"]]


def test_cancel_twice_is_a_conflict(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    job = alice.submit(job_spec())
    alice.cancel(job["id"])
    with pytest.raises(CoopError) as err:
        alice.cancel(job["id"])
    assert err.value.status == 409
    assert "already ended" in err.value.message
    assert len(alice.job(job["id"])["events"]) == 2  # nothing written by the refused cancel


def test_yaml_text_is_accepted(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    job = alice.submit("name: yaml-job\nrun: echo hi\nresources:\n  gpus: 1\n  gpu_memory: 16GB..48GB\n")
    spec = alice.job(job["id"])["spec"]
    assert spec["resources"]["gpu_memory"] == {"min_gb": 16, "max_gb": 48}


def test_unknown_job_is_404(coordinator: Coordinator) -> None:
    with pytest.raises(CoopError) as err:
        coordinator.admin.job(424242)
    assert err.value.status == 404
    assert err.value.errors[0]["field"] == "job_id"


def test_logs_are_empty_until_a_backend_runs_the_job(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    job = alice.submit(job_spec())
    chunk = alice.logs(job["id"])
    assert chunk == {"data": "", "offset": 0, "next_offset": 0, "eof": False}
    alice.cancel(job["id"])
    assert alice.logs(job["id"])["eof"] is True


def test_admin_filters_by_member(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    a = alice.submit(job_spec("a"))
    b = bob.submit(job_spec("b"))
    assert {j["id"] for j in coordinator.admin.jobs()} == {a["id"], b["id"]}
    assert [j["id"] for j in coordinator.admin.jobs(member="bob")] == [b["id"]]


def test_health_and_docs(coordinator: Coordinator) -> None:
    health = coordinator.client().health()
    assert health["status"] == "ok"
    assert health["database"] in {"sqlite", "postgresql"}
    import httpx

    assert "/v1/jobs" in httpx.get(coordinator.url + "/openapi.json").json()["paths"]
    assert httpx.get(coordinator.url + "/docs").status_code == 200
