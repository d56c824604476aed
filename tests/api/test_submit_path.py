"""The fast submission path: cached token lookups that still honour revocation, and group commit
(several submissions per transaction, each acknowledged only once committed, refusals writing nothing)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from coop.client import CoopError
from coop.server.app import create_app
from coop.server.models import Job, JobEvent, Member
from coop.server.services import jobs
from coop.server.services.errors import QuotaExceeded, UnknownWorkdir
from tests.api.helpers import job_spec
from tests.conftest import Coordinator, serve


def counts(coordinator: Coordinator) -> tuple[int, int]:
    with Session(coordinator.engine) as session:
        return (
            session.exec(select(func.count()).select_from(Job)).one(),
            session.exec(select(func.count()).select_from(JobEvent)).one(),
        )


def member_id(coordinator: Coordinator, name: str) -> int:
    with Session(coordinator.engine) as session:
        found = session.exec(select(Member.id).where(Member.name == name)).one()
        assert found is not None
        return found


def submission(member: int, name: str, user_id: int | None = None, **kwargs: Any) -> jobs.Submission:
    return jobs.Submission(member, user_id, jobs.one_job_spec(job_spec(name, **kwargs)), None)


def test_a_revoked_token_fails_at_once_though_it_was_cached(coordinator: Coordinator) -> None:
    alice, token = coordinator.new_member("alice")
    for _ in range(3):  # looked up once, then answered from the cache
        assert alice.me()["member"] == "alice"
    token_id = next(t["id"] for t in coordinator.admin.tokens() if t["member"] == "alice")
    coordinator.admin.revoke_token(token_id)
    with pytest.raises(CoopError) as err:
        coordinator.client(token).me()
    assert err.value.status == 401
    with pytest.raises(CoopError):
        coordinator.client(token).submit(job_spec("after-revoke"))
    assert counts(coordinator) == (0, 0)


def test_another_worker_stops_trusting_a_revoked_token_within_token_cache_s(coordinator: Coordinator) -> None:
    """A second app on the same database stands for a second uvicorn worker: its cache does not hear of
    the revocation, so it honours it once ``token_cache_s`` has passed."""
    settings = coordinator.settings.model_copy(update={"token_cache_s": 0.5})
    app = create_app(settings, start_loops=False)
    server, thread, url = serve(app)
    try:
        _, token = coordinator.new_member("alice")
        other = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        assert other.get("/v1/me").status_code == 200  # now in the other worker's cache
        token_id = next(t["id"] for t in coordinator.admin.tokens() if t["member"] == "alice")
        coordinator.admin.revoke_token(token_id)
        time.sleep(0.6)
        answer = other.get("/v1/me")
        assert answer.status_code == 401, answer.text
        assert answer.json()["errors"][0]["field"] == "Authorization"
        other.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_concurrent_submissions_are_all_stored_with_their_events(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: alice.submit(job_spec(f"job-{i}")), range(200)))
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 200
    assert [a["name"] for a in answers] == [f"job-{i}" for i in range(200)]
    with Session(coordinator.engine) as session:
        stored = {j.id: j.name for j in session.exec(select(Job))}
        events = session.exec(select(JobEvent).where(col(JobEvent.job_id).in_(ids))).all()
    assert stored == {a["id"]: a["name"] for a in answers}
    assert sorted(e.job_id for e in events) == sorted(ids)
    assert {(e.to_state, e.reason) for e in events} == {("PENDING", "submitted")}
    shown = alice.job(ids[7])
    assert shown["state"] == "PENDING" and shown["member"] == "alice" and len(shown["events"]) == 1
    assert {k: v for k, v in shown.items() if k in answers[7]} == answers[7]  # the answer is the stored job


def test_refused_submissions_among_good_ones_write_nothing_and_name_their_field(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice", gpu_cap=2)

    def send(i: int) -> dict[str, Any]:
        if i % 3 == 1:
            spec: dict[str, Any] = job_spec(f"greedy-{i}", gpus=4)
        elif i % 3 == 2:
            spec = {**job_spec(f"typo-{i}"), "resources": {"gpus": 1, "gpu_memroy": "16GB"}}
        else:
            spec = job_spec(f"good-{i}")
        try:
            return alice.submit(spec)  # type: ignore[no-any-return]
        except CoopError as exc:
            return {"status": exc.status, "fields": [e["field"] for e in exc.errors]}

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(60)))
    for i, answer in enumerate(answers):
        if i % 3 == 1:
            assert answer == {"status": 422, "fields": ["spec.resources.gpus"]}
        elif i % 3 == 2:
            assert answer["status"] == 422 and answer["fields"][0].startswith("spec.resources"), answer
        else:
            assert answer["name"] == f"good-{i}"
    assert counts(coordinator) == (20, 20)


def test_one_batch_stores_the_good_and_refuses_the_bad(coordinator: Coordinator) -> None:
    coordinator.new_member("alice", gpu_cap=2)
    alice = member_id(coordinator, "alice")
    batch = [
        submission(alice, "a"),
        submission(alice, "greedy", gpus=4),
        jobs.Submission(alice, None, jobs.one_job_spec(job_spec("b")), "0" * 64),  # never uploaded
        submission(alice, "c"),
    ]
    results = jobs.store_batch(coordinator.engine, coordinator.settings, batch)
    assert isinstance(results[1], QuotaExceeded) and results[1].field == "spec.resources.gpus"
    assert isinstance(results[2], UnknownWorkdir) and results[2].field == "workdir_sha256"
    stored = [r for r in results if isinstance(r, tuple)]
    assert [(row["name"], member) for row, member in stored] == [("a", "alice"), ("c", "alice")]
    with Session(coordinator.engine) as session:
        assert sorted(j.name for j in session.exec(select(Job))) == ["a", "c"]
    assert counts(coordinator) == (2, 2)


def test_a_row_the_database_refuses_fails_only_its_own_submission(coordinator: Coordinator) -> None:
    """A statement failing in a batch (here a user that does not exist: a foreign key) has the batch
    stored one by one: the others are stored, that one gets the error."""
    coordinator.new_member("alice")
    alice = member_id(coordinator, "alice")
    batch = [submission(alice, "a"), submission(alice, "ghost", user_id=999_999), submission(alice, "b")]
    results = jobs.store_batch(coordinator.engine, coordinator.settings, batch)
    assert isinstance(results[0], tuple) and isinstance(results[2], tuple)
    assert isinstance(results[1], Exception)
    with Session(coordinator.engine) as session:
        assert sorted(j.name for j in session.exec(select(Job))) == ["a", "b"]
    assert counts(coordinator) == (2, 2)


def test_nothing_is_acknowledged_when_the_commit_fails(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator.new_member("alice")
    alice = member_id(coordinator, "alice")

    real_commit = Session.commit

    def commit_fails(self: Session) -> None:  # in the queue's worker thread only: the loops go on
        if threading.current_thread().name.startswith("AnyIO worker thread"):
            raise RuntimeError("disk full")
        real_commit(self)

    monkeypatch.setattr(Session, "commit", commit_fails)
    woken: list[int] = []
    queue = jobs.SubmitQueue(coordinator.engine, coordinator.settings, lambda: woken.append(1))

    async def submit_all() -> list[Any]:
        return await asyncio.gather(
            *(queue.submit(submission(alice, f"j{i}")) for i in range(10)), return_exceptions=True
        )

    answers = asyncio.run(submit_all())
    assert all(isinstance(a, RuntimeError) for a in answers)
    assert woken == []
    monkeypatch.undo()
    assert counts(coordinator) == (0, 0)


def test_the_queue_groups_concurrent_submissions_into_batches(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator.new_member("alice")
    alice = member_id(coordinator, "alice")
    sizes: list[int] = []
    store = jobs.store_batch

    def recording(engine: Any, settings: Any, batch: list[jobs.Submission]) -> Any:
        sizes.append(len(batch))
        return store(engine, settings, batch)

    monkeypatch.setattr(jobs, "store_batch", recording)
    woken: list[int] = []
    queue = jobs.SubmitQueue(coordinator.engine, coordinator.settings, lambda: woken.append(1))

    async def submit_all() -> list[Any]:
        return await asyncio.gather(*(queue.submit(submission(alice, f"j{i}")) for i in range(50)))

    answers = asyncio.run(submit_all())
    assert [row["name"] for row, _ in answers] == [f"j{i}" for i in range(50)]
    assert sum(sizes) == 50 and len(sizes) < 50  # grouped: the first alone, the rest in what followed
    assert len(woken) == len(sizes)
    assert counts(coordinator) == (50, 50)


def test_job_row_fills_every_column_but_the_id() -> None:
    """A batch inserts ``job_row`` by Core, past the model's defaults: it must name every column."""
    row = jobs.job_row(jobs.one_job_spec(job_spec("x")), 1, None, None)
    columns = {c.name for c in Job.__table__.columns}  # type: ignore[attr-defined]
    assert set(row) == columns - {"id"}
    defaults = Job(member_id=1, name="x", kind="finetune", spec={}).model_dump(exclude={"id", "submitted_at"})
    assert {k: row[k] for k in ("state", "attempts", "exit_code", "array_id", "started_at")} == {
        k: defaults[k] for k in ("state", "attempts", "exit_code", "array_id", "started_at")
    }
