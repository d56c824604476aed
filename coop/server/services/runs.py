"""Launching attempts on a backend and reconciling what the backend reports with the ledger.

Reconciling is idempotent: after a coordinator restart the same code re-attaches to every
attempt that was starting or running (nothing is lost, nothing is submitted twice).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import Session

from coop.server.backends import Backend, Launch, RunStatus
from coop.server.config import Settings
from coop.server.errors import ApiError
from coop.server.models import Attempt, Job, Node, Pool, aware, utcnow
from coop.server.services import attempts, logs, nodes, pools, workdirs
from coop.spec import JobSpec, SpecError, validate_spec

log = logging.getLogger("coop.runs")
SLURM_LIMIT_SLACK_S = 300  # Slurm enforces max_runtime itself (--time); Coop's own check is only a backstop


def command(setup: str | None, run: str) -> str:
    """setup, then run, each in its own subshell; run only if setup succeeded."""
    return f"(\n{setup}\n) && (\n{run}\n)" if setup else run


def launch_for(settings: Settings, job: Job, attempt: Attempt, gres: str | None = None) -> Launch:
    spec = validate_spec(job.spec)
    checkpoint = spec.checkpoint_dir or f"{settings.checkpoint_root}/job-{job.id}"
    env = {
        **spec.env,
        "COOP_JOB_ID": str(job.id),
        "COOP_ATTEMPT": str(attempt.number),
        "COOP_CHECKPOINT_DIR": checkpoint,
    }
    return Launch(
        ref=attempt.backend_ref or attempts.submission_id(settings.instance, job.id, attempt.number),  # type: ignore[arg-type]
        command=command(spec.setup, spec.run),
        env=env,
        workdir=workdirs.path_of(settings, job.workdir_sha256) if job.workdir_sha256 else None,
        node_resource=f"coop_node_{attempt.node_id}",
        gpus=len(attempt.gpu_indices),
        cpus=attempt.cpus,
        grace_s=settings.preempt_grace_s,
        metadata={
            "coop_job": str(job.id),
            "coop_attempt": str(attempt.number),
            "name": job.name,
            **({} if spec.checkpoint_dir else {"checkpoint": "default"}),
        },
        memory_gb=spec.resources.memory_gb,
        time_limit_s=spec.max_runtime_s,
        gres=gres,
        owner=str(job.member_id),
    )


def unreadable(exc: SpecError) -> str:
    """The reason a job whose stored spec no longer validates (edited in the database, or stored by a
    version that accepted more) ends with."""
    problems = "; ".join(f"{e.field or '(document)'}: {e.message}" for e in exc.errors)
    return f"its stored spec no longer validates: {problems[:800]} (submit it again with a valid job.yaml)"


def submit(session: Session, settings: Settings, backend: Backend, job: Job, attempt: Attempt) -> Exception | None:
    """Ask the backend to start ``attempt``; returns why it was not started (None: it was).

    A launch the backend refused (Ray down, sbatch said no) never ran: the job goes back to PENDING
    with the backend's error as its reason and uses no retry (``attempts.refuse``). So that a broken
    backend is not hammered, the job then waits before its next try (2 s, doubling with each refusal
    up to 15 min; on a pool, until the pool answers again). It keeps waiting, never failing for it,
    until the backend takes it or its member cancels it: the error is the backend's, not the job's.
    A job whose stored spec no longer validates, or whose workdir the caps now refuse, cannot be
    launched at all: it fails with that reason.
    """
    try:
        launch = launch_for(settings, job, attempt, pools.gres_for(session, attempt))
    except SpecError as exc:
        attempts.finish(session, attempt, job, "FAILED", unreadable(exc), retry=False)
        return exc
    try:
        backend.submit(launch)
    except ApiError as exc:  # the job's own workdir is refused at unpacking (the caps were lowered since)
        attempts.finish(session, attempt, job, "FAILED", f"its workdir cannot be unpacked: {exc.message}", retry=False)
        return exc
    except Exception as exc:
        log.warning("could not start %s: %s", attempt.backend_ref, exc)
        if attempt.pool_id is not None:
            pools.submit_failed(session, attempt.pool_id, exc)
        pool = session.get(Pool, attempt.pool_id) if attempt.pool_id is not None else None
        where = f"pool {pool.name}" if pool is not None else backend.name.capitalize()
        attempts.refuse(session, attempt, job, f"{where} could not start it ({short_error(exc)})")
        return exc
    return None


def short_error(exc: BaseException) -> str:
    """One line for a reason a person reads: the error's kind and the start of its message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def save_logs(settings: Settings, backend: Backend, job: Job, attempt: Attempt) -> None:
    """Append what the backend has beyond what is already on disk (``coop logs -f`` reads the file)."""
    assert job.id is not None and attempt.backend_ref
    path = logs.log_path(settings, job.id, attempt.number)
    have = path.stat().st_size if path.exists() else 0
    read_from = getattr(backend, "read_logs", None)  # backends that can, send only what is new
    new = read_from(attempt.backend_ref, have) if read_from else backend.logs(attempt.backend_ref).encode()[have:]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(new)


def save_logs_or_warn(settings: Settings, backend: Backend, job: Job, attempt: Attempt) -> None:
    """``save_logs``, but a failure to read them never holds up the attempt's state change."""
    try:
        save_logs(settings, backend, job, attempt)
    except Exception as exc:
        log.warning("could not save the logs of %s: %s", attempt.backend_ref, exc)


def stop(
    session: Session, backend: Backend, attempt: Attempt, kind: str, reason: str, for_job_id: int | None = None
) -> None:
    """Record why the attempt stops, then tell the backend. Recorded first, so the backend's STOPPED is
    read right even after a crash in between; forgotten again when the backend could not be told
    (it raises), so the next cycle asks again instead of waiting for a stop that never comes."""
    attempts.request_stop(session, attempt, kind, reason, for_job_id)
    try:
        backend.stop(attempt.backend_ref or "")
    except Exception:
        attempts.request_stop(session, attempt, None, None)
        raise


def reconcile(
    session: Session, settings: Settings, backend: Backend, attempt: Attempt, job: Job, node: Node | None
) -> None:
    """Bring one active attempt's record in line with the backend (and with cancel/timeout/node loss)."""
    ref = attempt.backend_ref or ""
    if attempt.stop_requested is None:
        if job.state == "CANCELLED":
            stop(session, backend, attempt, "cancel", job.reason or "cancelled")
        elif attempt.pool_id is None and (node is None or node.state != "online"):  # Slurm reports NODE_FAIL
            backend.stop(ref)
            save_logs_or_warn(settings, backend, job, attempt)
            state = node.state if node else "gone"
            attempts.finish(session, attempt, job, "LOST", f"node {attempt.node_id} is {state}")
            return
        else:
            limit = _max_runtime_s(job)
            if limit and attempt.pool_id is not None:
                limit += SLURM_LIMIT_SLACK_S
            since = attempt.running_at
            if limit and since and utcnow() - aware(since) > timedelta(seconds=limit):
                stop(session, backend, attempt, "timeout", f"exceeded max_runtime of {limit} s")
    status = backend.status(ref)
    if status.state == "MISSING":
        if attempt.state == "STARTING":  # committed, then the coordinator died before submitting
            submit(session, settings, backend, job, attempt)
        else:
            attempts.finish(session, attempt, job, "LOST", f"the backend has no record of {ref}")
        return
    if status.state in ("PENDING", "RUNNING"):
        if status.state == "RUNNING" and attempt.state == "STARTING":
            attempts.mark_running(session, attempt, job)
        if status.state == "RUNNING":
            save_logs_or_warn(settings, backend, job, attempt)
        return
    save_logs_or_warn(settings, backend, job, attempt)
    if status.state == "LOST" and node is not None and node.pool_id is None:
        nodes.mark_offline(session, node)
    if attempt.state == "STARTING" and _it_ran(status):  # over before a cycle saw it running
        attempts.mark_running(session, attempt, job)
    outcome, reason = _outcome(attempt, status.state, status.exit_code, status.message)
    retry = status.retry and attempt.stop_requested != "timeout"
    attempts.finish(session, attempt, job, outcome, reason, status.exit_code, retry=retry)


def stored_spec(job: Job) -> JobSpec | None:
    """The job's spec, or None when what is stored no longer validates. A running attempt then runs on
    to its end (no memory held, no max_runtime) rather than being killed for it; the job fails if it
    comes back to PENDING (``scheduling``)."""
    try:
        return validate_spec(job.spec)
    except SpecError:
        return None


def _max_runtime_s(job: Job) -> int | None:
    spec = stored_spec(job)
    return spec.max_runtime_s if spec else None


def _it_ran(status: RunStatus) -> bool:
    return status.state == "SUCCEEDED" or (status.state == "FAILED" and status.exit_code is not None)


def _outcome(attempt: Attempt, state: str, exit_code: int | None, message: str) -> tuple[str, str]:
    asked = attempt.stop_requested
    if state == "SUCCEEDED":
        return "SUCCEEDED", "exited 0"
    if state == "LOST":
        return "LOST", f"its node went away ({message.strip()[:200]})"
    if asked == "cancel":
        return "CANCELLED", attempt.reason or "cancelled"
    if asked == "preempt":
        return "PREEMPTED", attempt.reason or "preempted"
    if asked == "timeout":
        return "FAILED", attempt.reason or "exceeded max_runtime"
    if state == "STOPPED":
        return "FAILED", "stopped outside Coop"
    return "FAILED", f"exited with code {exit_code}" if exit_code is not None else (message.strip()[:300] or "failed")
