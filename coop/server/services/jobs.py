"""Submitting, listing and cancelling jobs."""

from __future__ import annotations

from sqlmodel import Session, col, select

from coop.scheduler.feasibility import why_impossible
from coop.schemas import TERMINAL_STATES, JobSubmit
from coop.server.config import Settings
from coop.server.models import Attempt, Job, JobEvent, Member
from coop.server.services import capacity, workdirs
from coop.server.services.errors import Conflict, Invalid, NotFound, QuotaExceeded, UnknownWorkdir, Unsatisfiable
from coop.server.services.lifecycle import transition
from coop.spec import JobSpec, parse_job_yaml, validate_spec
from coop.states import JobState


def parse_spec(raw: dict[str, object] | str) -> JobSpec:
    return parse_job_yaml(raw) if isinstance(raw, str) else validate_spec(raw)


def submit(session: Session, settings: Settings, member: Member, user_id: int | None, req: JobSubmit) -> Job:
    spec = parse_spec(req.spec)
    if spec.array is not None:
        raise Invalid(
            "a job array is submitted to POST /v1/arrays, not /v1/jobs",
            field="spec.array",
            fix="post it to /v1/arrays (coop submit does), or remove array: for one job",
        )
    spec = check(session, settings, member, spec, req.workdir_sha256)
    job = new_job(spec, member, user_id, req.workdir_sha256)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, to_state=JobState.PENDING, reason="submitted"))  # type: ignore[arg-type]
    session.commit()
    return job


def check(session: Session, settings: Settings, member: Member, spec: JobSpec, workdir_sha256: str | None) -> JobSpec:
    """What a submission must pass before anything is stored (a job, or every task of an array): its
    inputs resolved, its workdir uploaded, within the member's cap, and runnable on some node or pool.
    Returns the spec with its inputs resolved to job ids."""
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
    shapes = capacity.node_shapes(session)
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
    res = spec.resources
    return Job(
        member_id=member.id,
        user_id=user_id,
        name=spec.name,
        kind=spec.kind,
        spec=spec.model_dump(mode="json", by_alias=True),
        workdir_sha256=workdir_sha256,
        gpus=res.gpus,
        nodes=res.nodes,
        priority=spec.priority,
        preemptible=spec.preemptible,
        retries=spec.retries,
        reason="waiting for the scheduler",
    )


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
