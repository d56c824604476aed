"""Submitting, listing and cancelling jobs.

Submissions are stored by group commit (``SubmitQueue``): the ones that arrive while a transaction is
being written wait for the next, which stores them all, so each costs one thread hop and a share of
one commit; each is acknowledged only after the transaction holding it committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from psycopg.types.json import Json
from sqlalchemy import JSON, Connection, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from coop.scheduler.feasibility import NodeShape, why_impossible
from coop.schemas import TERMINAL_STATES, JobSubmit
from coop.server.config import Settings
from coop.server.models import Attempt, Job, JobEvent, Member, utcnow
from coop.server.services import capacity, workdirs
from coop.server.services.errors import (
    Conflict,
    DomainError,
    Invalid,
    NotFound,
    QuotaExceeded,
    UnknownWorkdir,
    Unsatisfiable,
)
from coop.server.services.lifecycle import transition
from coop.spec import JobSpec, parse_job_yaml, validate_spec
from coop.states import JobState


def parse_spec(raw: dict[str, object] | str) -> JobSpec:
    return parse_job_yaml(raw) if isinstance(raw, str) else validate_spec(raw)


log = logging.getLogger("coop.server")

MAX_BATCH = 256  # submissions in one transaction at most


def one_job_spec(raw: dict[str, object] | str) -> JobSpec:
    """The spec of a ``POST /v1/jobs``: any valid spec but an array's."""
    spec = parse_spec(raw)
    if spec.array is not None:
        raise Invalid(
            "a job array is submitted to POST /v1/arrays, not /v1/jobs",
            field="spec.array",
            fix="post it to /v1/arrays (coop submit does), or remove array: for one job",
        )
    return spec


@dataclass(frozen=True)
class Submission:
    """One job to store: a spec already validated alone, and who submits it."""

    member_id: int
    user_id: int | None
    spec: JobSpec
    workdir_sha256: str | None


def submit(session: Session, settings: Settings, member: Member, user_id: int | None, req: JobSubmit) -> Job:
    """Store one job now, in ``session``'s transaction (the API goes through ``SubmitQueue``)."""
    spec = check(session, settings, member, one_job_spec(req.spec), req.workdir_sha256)
    job = new_job(spec, member, user_id, req.workdir_sha256)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, to_state=JobState.PENDING, reason="submitted"))  # type: ignore[arg-type]
    session.commit()
    return job


Stored = tuple[dict[str, Any], str]  # a job's row (with its id) and its member's name


def store_batch(engine: Engine, settings: Settings, batch: list[Submission]) -> list[Stored | Exception]:
    """Check and store ``batch`` in one transaction: per submission, its job's row and member's name, or what
    kept it out (a refusal, a ``DomainError``: nothing of it is written). Raises when the commit fails:
    then none of them is stored, and none may be acknowledged.

    A statement that fails before the commit (a row the database refuses) has the batch stored again
    one submission per transaction, so that it fails only its own request."""
    try:
        return _store(engine, settings, batch)
    except _BeforeCommit as failed:
        if len(batch) == 1:
            return [failed.cause]
        log.warning("a batch of %d submissions failed (%r): storing them one by one", len(batch), failed.cause)
    results: list[Stored | Exception] = []
    for one in batch:
        try:
            results += _store(engine, settings, [one])
        except _BeforeCommit as failed:
            results.append(failed.cause)
        except Exception as exc:  # its commit failed: it alone is not acknowledged
            results.append(exc)
    return results


class _BeforeCommit(Exception):
    """A batch failed before its commit: nothing of it was stored."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def _store(engine: Engine, settings: Settings, batch: list[Submission]) -> list[Stored | Exception]:
    results: list[Stored | Exception] = []
    with Session(engine, expire_on_commit=False) as session:
        try:
            ids = {s.member_id for s in batch}
            members = {m.id: m for m in session.exec(select(Member).where(col(Member.id).in_(ids)))}
            shapes: list[Any] = []  # one capacity snapshot for the whole batch, read when first needed

            def node_shapes(session: Session) -> list[NodeShape] | None:
                if not shapes:
                    shapes.append(capacity.node_shapes(session))
                return shapes[0]  # type: ignore[no-any-return]

            fresh: list[Stored] = []
            for one in batch:
                member = members.get(one.member_id)
                try:
                    if member is None:
                        raise NotFound(f"member {one.member_id} does not exist", field="member_id")
                    spec = check(session, settings, member, one.spec, one.workdir_sha256, node_shapes)
                except DomainError as refused:
                    results.append(refused)
                    continue
                fresh.append((job_row(spec, one.member_id, one.user_id, one.workdir_sha256), member.name))
                results.append(fresh[-1])
            if fresh:
                _insert(session, [row for row, _ in fresh])
        except Exception as exc:
            raise _BeforeCommit(exc) from exc
        session.commit()
    return results


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """The jobs and their first events by Core statements (the ORM's unit of work cost more than the
    database did); each row gets its id."""
    table, events = Job.__table__, JobEvent.__table__  # type: ignore[attr-defined]
    now = utcnow()
    for row in rows:
        row["submitted_at"] = now
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        ids = _insert_postgres(conn, rows, now)
    else:
        statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        ids = list(conn.execute(statement, rows).scalars())
        conn.execute(
            insert(events),
            [{"job_id": i, "to_state": JobState.PENDING.value, "reason": "submitted", "at": now} for i in ids],
        )
    for row, job_id in zip(rows, ids, strict=True):
        row["id"] = job_id


def _insert_postgres(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> list[int]:
    """On PostgreSQL, by psycopg itself: one single-row ``INSERT ... RETURNING id`` run for every row in
    one pipeline, and the events by one ``INSERT ... SELECT unnest(...)``. Both texts are the same whatever
    the batch's size, so psycopg converts each once; SQLAlchemy's multi-row VALUES made a new text of
    every size, which psycopg parsed again each time (a tenth of the server's time)."""
    columns = list(rows[0])
    json_columns = {c.name for c in Job.__table__.columns if isinstance(c.type, JSON)}  # type: ignore[attr-defined]
    values = ", ".join(["%s"] * len(columns))
    driver: Any = conn.connection.driver_connection  # psycopg's, in this transaction
    ids: list[int] = []
    with driver.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO job ({', '.join(columns)}) VALUES ({values}) RETURNING id",
            [[Json(row[c]) if c in json_columns and row[c] is not None else row[c] for c in columns] for row in rows],
            returning=True,
        )
        while True:
            ids.append(cursor.fetchone()[0])
            if not cursor.nextset():
                break
        cursor.execute(
            "INSERT INTO jobevent (job_id, to_state, reason, at) SELECT unnest(%s::integer[]), %s, %s, %s",
            [ids, JobState.PENDING.value, "submitted", now],
        )
    return ids


class SubmitQueue:
    """Group commit for one process's submissions, on its event loop.

    A submission waits in ``pending``; while no batch is being stored, the first one starts a drain,
    which stores everything pending in one transaction in a worker thread (one hop per batch, at most
    ``MAX_BATCH`` at a time), answers each waiting request once that transaction has committed, and goes
    on while more arrived meanwhile. Under load the batches grow by themselves; alone, a submission is a
    batch of one. ``committed`` is called after each batch that stored something (it wakes the scheduler).
    """

    def __init__(self, engine: Engine, settings: Settings, committed: Callable[[], None]) -> None:
        self.engine, self.settings, self.committed = engine, settings, committed
        self._pending: list[tuple[Submission, asyncio.Future[Stored]]] = []
        self._drain: asyncio.Task[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def submit(self, submission: Submission) -> Stored:
        answer: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self._pending.append((submission, answer))
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_pending())
        return await answer

    async def _drain_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await anyio.to_thread.run_sync(
                        store_batch, self.engine, self.settings, [s for s, _ in batch], limiter=self._limiter
                    )
                except Exception as exc:  # nothing of the batch is known stored: none is acknowledged
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for (_, answer), result in zip(batch, results, strict=True):
                    if answer.done():  # its request went away; the job is stored all the same
                        continue
                    if isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
                if any(not isinstance(r, Exception) for r in results):
                    self.committed()
        finally:
            self._drain = None


def check(
    session: Session,
    settings: Settings,
    member: Member,
    spec: JobSpec,
    workdir_sha256: str | None,
    node_shapes: Callable[[Session], list[NodeShape] | None] = capacity.node_shapes,
) -> JobSpec:
    """What a submission must pass before anything is stored (a job, or every task of an array): its
    inputs resolved, its workdir uploaded, within the member's cap, and runnable on some node or pool.
    Returns the spec with its inputs resolved to job ids. ``node_shapes`` reads the registered capacity
    (a batch of submissions reads it once)."""
    spec = _resolve_inputs(session, member, spec)
    if workdir_sha256 and not workdirs.exists(settings, workdir_sha256):
        raise UnknownWorkdir(
            f"no workdir with SHA-256 {workdir_sha256} was uploaded",
            field="workdir_sha256",
            fix="PUT the archive to /v1/workdirs/<sha256> before submitting",
        )
    res = spec.resources
    if spec.inputs and res.tier == "hpc":
        raise Invalid(
            "inputs: are not delivered on HPC pools yet (their nodes do not reach the artifact store)",
            field="spec.inputs",
            fix="use resources.tier: consumer (or any: a job with inputs then runs on donated nodes only)",
        )
    if member.gpu_cap is not None and res.gpus > member.gpu_cap:
        raise QuotaExceeded(
            f"{res.gpus} GPUs requested but member {member.name!r} may use at most {member.gpu_cap} at once",
            field="spec.resources.gpus",
            fix=f"ask for at most {member.gpu_cap} GPUs, or ask an admin to raise your quota",
        )
    shapes = node_shapes(session)
    refusal = why_impossible(res, shapes) if shapes is not None else None
    if refusal is not None:
        raise Unsatisfiable(
            f"no registered node or pool could ever run this job: {refusal.message}",
            field=f"spec.{refusal.field}",
            fix=refusal.fix,
        )
    return spec


def new_job(spec: JobSpec, member: Member, user_id: int | None, workdir_sha256: str | None) -> Job:
    """The row of a new PENDING job running ``spec`` (not added to the session)."""
    assert member.id is not None
    return Job(**job_row(spec, member.id, user_id, workdir_sha256))


def job_row(spec: JobSpec, member_id: int, user_id: int | None, workdir_sha256: str | None) -> dict[str, Any]:
    """Every column of a new PENDING job running ``spec`` but its id, as a Core insert takes them (building
    a ``Job`` costs about 0.3 ms, more than storing it: a batch of submissions inserts these)."""
    res = spec.resources
    return {
        "member_id": member_id,
        "user_id": user_id,
        "name": spec.name,
        "kind": spec.kind,
        "state": JobState.PENDING.value,
        "spec": spec.model_dump(mode="json", by_alias=True),
        "workdir_sha256": workdir_sha256,
        "gpus": res.gpus,
        "nodes": res.nodes,
        "priority": spec.priority,
        "preemptible": spec.preemptible,
        "retries": spec.retries,
        "attempts": 0,
        "reason": "waiting for the scheduler",
        "exit_code": None,
        "submitted_at": utcnow(),
        "started_at": None,
        "finished_at": None,
        "array_id": None,
        "array_index": None,
        "array_values": None,
    }


def _resolve_inputs(session: Session, member: Member, spec: JobSpec) -> JobSpec:
    """Each input must name one of the member's own jobs: by id, or by name (the latest job of that
    name now). The stored spec keeps the id, so a later job of the same name changes nothing."""
    resolved = []
    for i, wanted in enumerate(spec.inputs):
        field, fix = f"spec.inputs[{i}].job", "name one of your own jobs by its id or its name (coop status)"
        if isinstance(wanted.job, int):
            found = session.get(Job, wanted.job)
            if found is None or found.member_id != member.id:  # the same answer: no one learns others' job ids
                raise NotFound(f"you have no job {wanted.job}", field=field, fix=fix)
        else:
            found = session.exec(
                select(Job).where(Job.member_id == member.id, Job.name == wanted.job).order_by(col(Job.id).desc())
            ).first()
            if found is None:
                raise NotFound(f"you have no job named {wanted.job!r}", field=field, fix=fix)
        resolved.append(wanted.model_copy(update={"job": found.id, "to": wanted.folder}))
    return spec.model_copy(update={"inputs": resolved}) if resolved else spec


def get(session: Session, job_id: int) -> tuple[Job, str]:
    row = session.exec(select(Job, Member.name).join(Member).where(Job.id == job_id)).first()
    if row is None:
        raise NotFound(f"job {job_id} does not exist", field="job_id", fix="list your jobs with 'coop status'")
    return row[0], row[1]


def listing(
    session: Session,
    member_id: int | None,
    states: list[str],
    name: str | None,
    limit: int,
    offset: int,
    tasks: bool = True,
) -> list[tuple[Job, str]]:
    """Jobs, newest first; ``tasks=False``: not those of arrays (each array is listed as one)."""
    query = select(Job, Member.name).join(Member)
    if not tasks:
        query = query.where(col(Job.array_id).is_(None))
    if member_id is not None:
        query = query.where(Job.member_id == member_id)
    if states:
        query = query.where(col(Job.state).in_(states))
    if name:
        query = query.where(col(Job.name).contains(name))
    query = query.order_by(col(Job.id).desc()).offset(offset).limit(limit)
    return [(job, member) for job, member in session.exec(query)]


def history(session: Session, job_id: int) -> tuple[list[Attempt], list[JobEvent]]:
    attempts = session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))).all()
    events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))).all()
    return list(attempts), list(events)


def cancel(session: Session, job: Job, by: str) -> Job:
    """Cancel a job; a backend loop stops its running attempt."""
    if job.state in TERMINAL_STATES:
        raise Conflict(
            f"job {job.id} already ended ({job.state})",
            field="job_id",
            fix="nothing to cancel; submit it again if you want it to run",
        )
    transition(session, job, JobState.CANCELLED, f"cancelled by {by}", attempt=job.attempts or None)
    session.commit()
    return job
