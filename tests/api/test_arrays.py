"""Job arrays through the real HTTP app, on SQLite and PostgreSQL: one request stores every task, each an
ordinary job; arrays list as one row with counts; cancelling one cancels every task; bad arrays are
refused naming the field, and store nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from coop.client import CoopError
from coop.server.models import Job, JobArray, JobEvent
from tests.api.helpers import job_spec
from tests.conftest import Coordinator


def sweep(array: object, **extra: Any) -> dict[str, Any]:
    return {"name": "sweep", "kind": "eval", "run": "python eval.py", "array": array, **extra}


def stored(c: Coordinator) -> tuple[int, int, int]:
    """Jobs, arrays and events in the ledger."""
    with Session(c.engine) as session:
        return (
            session.exec(select(func.count()).select_from(Job)).one(),
            session.exec(select(func.count()).select_from(JobArray)).one(),
            session.exec(select(func.count()).select_from(JobEvent)).one(),
        )


def test_a_count_array_is_one_request_of_ordinary_jobs(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    single = alice.submit(job_spec("before"))
    array = alice.submit_array(sweep(4))
    assert array["size"] == 4 and array["state"] == "PENDING" and array["counts"] == {"PENDING": 4}
    assert (array["name"], array["kind"], array["member"], array["max_parallel"]) == ("sweep", "eval", "alice", None)
    assert array["id"] > single["id"]

    tasks = alice.array_tasks(array["id"])
    assert [t["array_index"] for t in tasks] == [0, 1, 2, 3]
    assert tasks[0]["id"] == array["id"]  # the array's id is its first task's job id
    assert len({t["id"] for t in tasks}) == 4 and all(t["array_id"] == array["id"] for t in tasks)
    assert all(t["state"] == "PENDING" and t["name"] == "sweep" and t["array_values"] is None for t in tasks)

    task = alice.job(tasks[2]["id"])  # a task is a job: its details, events and spec
    assert task["array_id"] == array["id"] and task["array_index"] == 2
    assert "array" not in task["spec"] and task["spec"]["run"] == "python eval.py"
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in task["events"]] == [(None, "PENDING", "submitted")]
    assert alice.array_task(array["id"], 3)["id"] == tasks[3]["id"]

    detail = alice.array(array["id"])
    assert detail["spec"]["array"] == 4 and detail["counts"] == {"PENDING": 4}
    assert [j["id"] for j in alice.jobs(tasks=False)] == [single["id"]]  # arrays list on their own
    assert len(alice.jobs()) == 5  # the default listing still has every job
    assert [a["id"] for a in alice.arrays()] == [array["id"]]
    assert stored(coordinator) == (5, 1, 5)


def test_a_matrix_is_the_cross_product_with_values_per_task(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    array = alice.submit_array("name: m\nrun: x\narray: {model: [a, b], task: [mmlu, gsm8k, arc]}\n")
    tasks = alice.array_tasks(array["id"])
    assert [(t["array_index"], t["array_values"]) for t in tasks] == [
        (0, {"model": "a", "task": "mmlu"}), (1, {"model": "a", "task": "gsm8k"}), (2, {"model": "a", "task": "arc"}),
        (3, {"model": "b", "task": "mmlu"}), (4, {"model": "b", "task": "gsm8k"}), (5, {"model": "b", "task": "arc"}),
    ]  # fmt: skip
    assert alice.array(array["id"])["spec"]["array"] == {"model": ["a", "b"], "task": ["mmlu", "gsm8k", "arc"]}


def test_indices_max_parallel_and_tasks_by_index(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    array = alice.submit_array(sweep("0-9:3", max_parallel=2))
    assert array["max_parallel"] == 2
    tasks = alice.array_tasks(array["id"])
    assert [t["array_index"] for t in tasks] == [0, 3, 6, 9]
    # past max_parallel, a task says why it waits from the start (the scheduler's loop says the same)
    assert [t["reason"] for t in tasks][2:] == ["waiting: its array runs at most 2 tasks at once (max_parallel)"] * 2
    assert "max_parallel" not in tasks[1]["reason"]
    assert alice.array_task(array["id"], 6)["array_index"] == 6
    with pytest.raises(CoopError) as err:
        alice.array_task(array["id"], 1)
    assert err.value.status == 404 and err.value.errors[0]["field"] == "index"
    assert [t["array_index"] for t in alice.array_tasks(array["id"], states=["PENDING"])] == [0, 3, 6, 9]


def test_cancelling_an_array_cancels_every_task_not_ended(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    array = alice.submit_array(sweep(5))
    first = alice.array_tasks(array["id"])[1]["id"]
    alice.cancel(first)  # one task alone, as any job
    assert alice.array(array["id"])["counts"] == {"PENDING": 4, "CANCELLED": 1}

    cancelled = alice.cancel_array(array["id"])
    assert cancelled["state"] == "CANCELLED" and cancelled["counts"] == {"CANCELLED": 5}
    for task in alice.array_tasks(array["id"]):
        detail = alice.job(task["id"])
        assert detail["finished_at"] is not None
        assert [(e["from_state"], e["to_state"]) for e in detail["events"]] == [
            (None, "PENDING"),
            ("PENDING", "CANCELLED"),
        ]
        if task["id"] != first:
            assert detail["reason"] == f"cancelled by alice (its array {array['id']})"
            assert detail["events"][-1]["reason"] == detail["reason"]
    with pytest.raises(CoopError) as err:
        alice.cancel_array(array["id"])
    assert err.value.status == 409 and "already ended" in err.value.message
    assert alice.arrays(states=["CANCELLED"])[0]["id"] == array["id"] and alice.arrays(states=["PENDING"]) == []


def test_ten_thousand_tasks_in_one_request(coordinator: Coordinator) -> None:
    """The acceptance speed is bench/array_bench.py's to print; here, that all of it is stored."""
    alice, _ = coordinator.new_member("alice")
    array = alice.submit_array(sweep({"seed": list(range(100)), "lr": [f"1e-{i}" for i in range(100)]}))
    assert array["size"] == 10_000 and array["counts"] == {"PENDING": 10_000}
    assert stored(coordinator) == (10_000, 1, 10_000)
    last = alice.array_task(array["id"], 9_999)
    assert last["array_values"] == {"seed": "99", "lr": "1e-99"}
    assert alice.job(last["id"])["spec"]["name"] == "sweep"
    assert len(alice.array_tasks(array["id"])) == 10_000
    assert alice.cancel_array(array["id"])["counts"] == {"CANCELLED": 10_000}
    assert stored(coordinator) == (10_000, 1, 20_000)


BAD_ARRAYS = [
    ({}, "spec.array", "the matrix is empty"),
    ({"model": ["a"], "task": []}, "spec.array.task", "empty"),
    (100_001, "spec.array", "more than an array may hold (100000)"),
    ({"a": list(range(1000)), "b": list(range(101))}, "spec.array.b", "100000"),
    ({"model": ["a", {"name": "b"}]}, "spec.array.model[1]", "got a mapping"),
    ({"model": [["a"]]}, "spec.array.model[0]", "got a list"),
    (0, "spec.array", "at least 1"),
    (True, "spec.array", "got true"),
    (1.5, "spec.array", "got 1.5"),
    ("0-9,5", "spec.array", "named twice"),
    ({"bad-key": [1]}, "spec.array.bad-key", "environment variable"),
]


@pytest.mark.parametrize(("array", "field", "says"), BAD_ARRAYS, ids=[b[1] + ":" + b[2] for b in BAD_ARRAYS])
def test_bad_arrays_are_refused_naming_the_field_and_nothing_is_stored(
    coordinator: Coordinator, array: object, field: str, says: str
) -> None:
    alice, _ = coordinator.new_member("alice")
    before = stored(coordinator)
    with pytest.raises(CoopError) as err:
        alice.submit_array(sweep(array))
    assert err.value.status == 422, err.value
    assert err.value.errors[0]["field"] == field and says in err.value.errors[0]["message"], err.value.errors
    assert err.value.errors[0]["fix"]
    assert stored(coordinator) == before


def test_an_array_goes_to_its_own_endpoint(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    with pytest.raises(CoopError) as err:
        alice.submit(sweep(3))
    assert err.value.status == 422 and err.value.errors[0]["field"] == "spec.array"
    assert "/v1/arrays" in err.value.errors[0]["fix"]
    with pytest.raises(CoopError) as err:
        alice.submit_array(job_spec("no-array"))
    assert err.value.status == 422 and err.value.errors[0]["field"] == "spec.array"
    with pytest.raises(CoopError) as err:  # checked as one job is: here, more GPUs than the member's cap
        coordinator.new_member("capped", gpu_cap=1)[0].submit_array(job_spec("big", gpus=2) | {"array": 3})
    assert err.value.status == 422 and err.value.errors[0]["field"] == "spec.resources.gpus"
    assert stored(coordinator) == (0, 0, 0)


def test_members_see_and_cancel_only_their_own_arrays(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    array = alice.submit_array(sweep(2))
    for call in (bob.array, bob.array_tasks, bob.cancel_array, lambda i: bob.array_task(i, 0)):
        with pytest.raises(CoopError) as err:
            call(array["id"])
        assert err.value.status == 403
    assert bob.arrays() == []
    with pytest.raises(CoopError) as err:
        bob.arrays(member="alice")
    assert err.value.status == 403
    assert [a["id"] for a in coordinator.admin.arrays(member="alice")] == [array["id"]]
    assert coordinator.admin.cancel_array(array["id"])["state"] == "CANCELLED"
    with pytest.raises(CoopError) as err:
        alice.array(424242)
    assert err.value.status == 404 and err.value.errors[0]["field"] == "array_id"


def test_every_task_stores_the_spec_exactly_whatever_its_text(coordinator: Coordinator) -> None:
    """Tasks go in by COPY on PostgreSQL: tabs, newlines, backslashes, quotes and other scripts survive."""
    alice, _ = coordinator.new_member("alice")
    run = 'printf "a\\tb\\n" && echo \'\\\\N\' "ü 日本" \\\n  --flag\n\tend'
    spec = {"name": "odd", "run": run, "env": {"X": "tab\there", "Y": "\\N"}, "array": {"v": ["a\tb", "\\N", "é"]}}
    array = alice.submit_array(spec)
    for task in alice.array_tasks(array["id"]):
        detail = alice.job(task["id"])
        assert detail["spec"]["run"] == run and detail["spec"]["env"] == {"X": "tab\there", "Y": "\\N"}
    assert [t["array_values"]["v"] for t in alice.array_tasks(array["id"])] == ["a\tb", "\\N", "é"]
