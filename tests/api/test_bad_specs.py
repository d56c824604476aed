"""Every malformed job.yaml of the corpus is refused over HTTP with a clear message, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from coop.client import CoopError
from coop.server.models import Job, JobEvent
from tests.conftest import Coordinator

BAD = sorted((Path(__file__).parent.parent / "data" / "bad_jobs").glob("*.yaml"))


def expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} must start with '# expect: FIELD'"
    return first.split(":", 1)[1].strip()


def rows(coordinator: Coordinator) -> tuple[int, int]:
    with Session(coordinator.engine) as session:
        return (
            session.exec(select(func.count()).select_from(Job)).one(),
            session.exec(select(func.count()).select_from(JobEvent)).one(),
        )


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_job_is_refused_and_nothing_is_written(coordinator: Coordinator, path: Path) -> None:
    alice, _ = coordinator.new_member("alice")
    with pytest.raises(CoopError) as err:
        alice.submit(path.read_text())
    assert err.value.status == 422
    first = err.value.errors[0]
    field = expected_field(path)
    assert first["field"] == (f"spec.{field}" if field else "spec")
    assert first["message"] and first["fix"]
    assert rows(coordinator) == (0, 0)


def test_huge_strings_are_refused(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    with pytest.raises(CoopError) as err:
        alice.submit({"name": "big", "run": "x" * 70_000})
    assert err.value.status == 422 and err.value.errors[0]["field"] == "spec.run"
    with pytest.raises(CoopError) as err:
        alice.submit("name: big\nrun: echo\n# " + "y" * (1024 * 1024 + 10))
    assert err.value.status == 422
    assert rows(coordinator) == (0, 0)


def test_wrong_request_shapes_name_the_field(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    for body, field in [
        ({}, "spec"),
        ({"spec": 5}, "spec"),
        ({"spec": {"name": "a", "run": "b"}, "wd": 1}, "wd"),
        ({"spec": {"name": "a", "run": "b"}, "workdir_sha256": "nothex"}, "workdir_sha256"),
    ]:
        with pytest.raises(CoopError) as err:
            alice.request("POST", "/jobs", json=body)
        assert err.value.status == 422
        assert err.value.errors[0]["field"].startswith(field), (body, err.value.errors)
    assert rows(coordinator) == (0, 0)


def test_oversized_request_bodies_are_413(coordinator: Coordinator) -> None:
    import httpx

    alice, token = coordinator.new_member("alice")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = b'{"spec": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    resp = httpx.post(coordinator.url + "/v1/jobs", content=body, headers=headers)
    assert resp.status_code == 413 and resp.json()["errors"][0]["field"] == "body"
    chunked = httpx.post(
        coordinator.url + "/v1/jobs", content=iter([body[:1_000_000], body[1_000_000:]]), headers=headers
    )
    assert chunked.status_code == 413
    assert rows(coordinator) == (0, 0)
