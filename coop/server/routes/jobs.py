from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response

from coop.schemas import (
    JOB_STATES,
    MAX_ID,
    MAX_NODES,
    MAX_OFFSET,
    ArtifactSetOut,
    AttemptOut,
    EventOut,
    JobDetail,
    JobOut,
    JobState,
    JobSubmit,
    LogChunk,
)
from coop.server import streaming
from coop.server.deps import Principal, SessionDep, SessionReleasingRoute, SettingsDep, UserDep
from coop.server.errors import ApiError
from coop.server.models import Job
from coop.server.services import accounts, artifacts, jobs, logs, workdirs

router = APIRouter(tags=["jobs"], route_class=SessionReleasingRoute)
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]  # bounded: a bigger int overflows the database's integer


def job_out(job: Job, member: str) -> JobOut:
    return JobOut.model_validate({**job.model_dump(), "member": member})


def _visible(session: SessionDep, principal: Principal, job_id: int) -> tuple[Job, str]:
    job, member = jobs.get(session, job_id)
    if not principal.can_see_member(job.member_id):
        raise ApiError(
            403,
            "forbidden",
            f"job {job_id} belongs to another member",
            field="job_id",
            fix="you can only see and cancel your own member's jobs",
        )
    return job, member


@router.put("/workdirs/{sha256}", status_code=201)
async def upload_workdir(sha256: str, request: Request, settings: SettingsDep, _: UserDep) -> dict[str, object]:
    """Upload a packed workdir (tar.gz, raw body); the URL names its SHA-256.

    The caller is authenticated before the body is read, and ``get_principal`` has given the
    connection back by then: an upload and its check may take seconds, and on SQLite there is one.
    """
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ApiError(
            422,
            "invalid_request",
            "not a lowercase hex SHA-256",
            field="sha256",
            fix="use the 64-character hex SHA-256 of the archive",
        )
    length = request.headers.get("content-length")
    size = await workdirs.store(settings, sha256, int(length) if length else None, request.stream())
    return {"sha256": sha256, "size": size}


@router.head("/workdirs/{sha256}")
def has_workdir(sha256: str, settings: SettingsDep, _: UserDep) -> Response:
    return Response(status_code=200 if workdirs.exists(settings, sha256) else 404)


@router.post("/jobs", status_code=201, response_model=JobOut)
async def submit_job(req: JobSubmit, request: Request, principal: UserDep) -> Response:
    """Submit one job. Answered once it is committed (``jobs.SubmitQueue``: group commit, with the
    submissions that arrive meanwhile)."""
    if isinstance(req.spec, str):  # YAML up to 1 MiB: parsed off the event loop
        spec = await anyio.to_thread.run_sync(jobs.one_job_spec, req.spec)
    else:
        spec = jobs.one_job_spec(req.spec)
    submission = jobs.Submission(principal.member_id, principal.user_id, spec, req.workdir_sha256)
    row, member = await _submissions(request).submit(submission)
    answer = JobOut.model_validate({**row, "member": member})
    return Response(answer.model_dump_json(), status_code=201, media_type="application/json")


def _submissions(request: Request) -> jobs.SubmitQueue:
    """This process's submission queue (made with the first submission, on the app's event loop)."""
    state = request.app.state
    queue: jobs.SubmitQueue | None = getattr(state, "submit_queue", None)
    if queue is None:
        queue = state.submit_queue = jobs.SubmitQueue(state.engine, state.settings, state.job_submitted)
    return queue


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(
    session: SessionDep,
    principal: UserDep,
    state: Annotated[list[JobState], Query(description=f"any of {', '.join(JOB_STATES)}")] = [],  # noqa: B006
    member: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    tasks: Annotated[bool, Query(description="false: leave out the tasks of job arrays (see /v1/arrays)")] = True,
) -> list[JobOut]:
    """Your member's jobs, newest first; admins see everyone's and may filter by member."""
    member_id: int | None = principal.member_id
    if principal.is_admin:
        member_id = accounts.member_by_name(session, member).id if member else None
    elif member and member != principal.member:
        raise ApiError(
            403, "forbidden", "members can only list their own jobs", field="member", fix="leave 'member' out"
        )
    return [job_out(j, m) for j, m in jobs.listing(session, member_id, list(state), name, limit, offset, tasks)]


@router.get("/jobs/{job_id}", response_model=JobDetail)
def show_job(job_id: JobId, session: SessionDep, principal: UserDep) -> JobDetail:
    job, member = _visible(session, principal, job_id)
    attempts, events = jobs.history(session, job_id)
    return JobDetail.model_validate(
        {
            **job.model_dump(),
            "member": member,
            "attempts_detail": [AttemptOut.model_validate(a) for a in attempts],
            "events": [EventOut.model_validate(e) for e in events],
            "outputs": artifacts.described(session, artifacts.outputs(session, job_id)),
        }
    )


@router.get("/jobs/{job_id}/outputs", response_model=list[ArtifactSetOut])
def job_outputs(
    job_id: JobId,
    session: SessionDep,
    principal: UserDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> list[ArtifactSetOut]:
    """What the job's attempts sent back from $COOP_OUTPUT_DIR, with each file's size and SHA-256."""
    _visible(session, principal, job_id)
    return artifacts.described(session, artifacts.outputs(session, job_id, attempt))


@router.get("/jobs/{job_id}/files/{file_id}")
def job_file(
    job_id: JobId, file_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, session: SessionDep,
    principal: UserDep,
) -> Response:  # fmt: skip
    """One output file's bytes; a ``Range: bytes=N-`` header resumes a download from byte N."""
    _visible(session, principal, job_id)
    sha256 = artifacts.job_file(session, job_id, file_id).sha256
    session.close()
    return streaming.blob(request, request.app.state.store, sha256)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: JobId, session: SessionDep, principal: UserDep) -> JobOut:
    job, member = _visible(session, principal, job_id)
    return job_out(jobs.cancel(session, job, principal.user or principal.member), member)


@router.get("/jobs/{job_id}/logs", response_model=LogChunk)
def job_logs(
    job_id: JobId,
    session: SessionDep,
    settings: SettingsDep,
    principal: UserDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    rank: Annotated[int, Query(ge=0, lt=MAX_NODES, description="a gang's rank (0: the first node)")] = 0,
) -> LogChunk:
    job, _ = _visible(session, principal, job_id)
    return logs.read(settings, job, attempt, offset, rank)
