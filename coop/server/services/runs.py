"""Launching attempts on a backend and reconciling what the backend reports with the ledger.

Reconciling is idempotent: after a coordinator restart the same code re-attaches to every
attempt that was starting or running (nothing is lost, nothing is submitted twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from coop.server import security
from coop.server.backends import Backend, Launch, RunStatus, gang_size, rank_ref
from coop.server.config import Settings
from coop.server.models import Attempt, Job, Node, Pool, aware, ranks_of, utcnow
from coop.server.services import arrays, artifacts, attempts, logs, nodes, pools, workdirs
from coop.server.services.errors import InvalidWorkdir, TooLarge
from coop.server.store import open_store
from coop.spec import JobSpec, SpecError, validate_spec
from coop.states import AttemptState, JobState, NodeState

log = logging.getLogger("coop.runs")
SLURM_LIMIT_SLACK_S = 300  # Slurm enforces max_runtime itself (--time); Coop's own check is only a backstop


def command(setup: str | None, run: str) -> str:
    """setup, then run, each in its own subshell; run only if setup succeeded."""
    return f"(\n{setup}\n) && (\n{run}\n)" if setup else run


def launch_for(settings: Settings, job: Job, attempt: Attempt, gres: str | None = None) -> Launch:
    spec = validate_spec(job.spec)
    # unset: the backend gives each attempt a folder of its own, filled from the artifact store
    root = f"{settings.checkpoint_root}/job-{job.id}" if settings.checkpoint_root else None
    checkpoint = spec.checkpoint_dir or root
    env = {
        **spec.env,
        "COOP_JOB_ID": str(job.id),
        "COOP_ATTEMPT": str(attempt.number),
        **({"COOP_CHECKPOINT_DIR": checkpoint} if checkpoint else {}),
    }
    return Launch(
        ref=attempt.backend_ref or attempts.submission_id(settings.instance, job.id, attempt.number),  # type: ignore[arg-type]
        command=command(spec.setup, spec.run),
        env=env,
        workdir=workdirs.path_of(settings, job.workdir_sha256) if job.workdir_sha256 else None,
        node_resource=f"coop_node_{attempt.node_id}",
        node_resources=tuple(f"coop_node_{node_id}" for node_id, _ in ranks_of(attempt)) if attempt.gang else (),
        nodes=spec.resources.nodes,
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
        transfer_token=artifacts.credential(security.load_key(settings.transfer_key_path), attempt),
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
        if job.array_id is not None:  # a task of an array: its index and matrix values
            launch = dataclasses.replace(launch, env={**launch.env, **arrays.env_of(session, job)})
    except SpecError as exc:
        attempts.finish(session, attempt, job, AttemptState.FAILED, unreadable(exc), retry=False)
        return exc
    try:
        with _last_checkpoint(session, settings, job, attempt) as (folder, set_id):
            backend.submit(dataclasses.replace(launch, checkpoint=folder, checkpoint_set=set_id))
    except (InvalidWorkdir, TooLarge) as exc:  # its workdir is refused at unpacking (the caps were lowered since)
        attempts.finish(
            session, attempt, job, AttemptState.FAILED, f"its workdir cannot be unpacked: {exc.message}", retry=False
        )
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


@contextlib.contextmanager
def _last_checkpoint(
    session: Session, settings: Settings, job: Job, attempt: Attempt
) -> Iterator[tuple[Path | None, int | None]]:
    """For a pool attempt (its nodes cannot reach the store), the job's last checkpoint from the store
    in a local folder while the backend places it; (None, None) otherwise."""
    latest = artifacts.latest_checkpoint(session, job.id or 0) if attempt.pool_id is not None else None
    if latest is None:
        yield None, None
        return
    with tempfile.TemporaryDirectory(prefix="coop-checkpoint-", dir=settings.data_dir) as tmp:
        artifacts.materialize(session, open_store(settings), latest, Path(tmp))
        yield Path(tmp), latest.id


def short_error(exc: BaseException) -> str:
    """One line for a reason a person reads: the error's kind and the start of its message."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


LOG_READS_PER_SAVE = 4  # while an attempt runs: reads per save at most (Slurm: 4 MiB each); the rest next time


def save_logs(settings: Settings, backend: Backend, job: Job, attempt: Attempt, *, to_end: bool = False) -> int:
    """Store what the backend has of the attempt's output (a gang's: each rank's, in a file of its own)
    past what ``<data_dir>/logs`` holds (``coop logs -f`` reads the file); returns how many bytes were
    added. Only what is new is asked for (``Backend.read_logs`` from the stored size). While the attempt
    runs (``loops.LogShipLoop``), at most ``LOG_READS_PER_SAVE`` reads per rank; ``to_end``, once it has
    ended: until the backend has nothing more. Raises what the backend raised; what was stored before
    stays."""
    assert job.id is not None and attempt.backend_ref
    added = 0
    for rank in range(gang_size(attempt.backend_ref)):
        ref = rank_ref(attempt.backend_ref, rank)
        offset = start = logs.stored(settings, job.id, attempt.number, rank)
        reads = 0
        while True:
            read = backend.read_logs(ref, offset)
            reads += 1
            if read.next_offset != offset + len(read.data):
                raise ValueError(
                    f"{backend.name} gave {len(read.data)} bytes of {ref}'s output from {offset}, "
                    f"but said the next read starts at {read.next_offset}"
                )
            logs.store(settings, job.id, attempt.number, offset, read.data, rank)
            offset = read.next_offset
            if not (read.more and read.data) or (not to_end and reads >= LOG_READS_PER_SAVE):
                break
        added += offset - start
    return added


def save_final_logs(settings: Settings, backend: Backend, job: Job, attempt: Attempt) -> None:
    """The attempt has ended: store the rest of its output, once, before its end is recorded, so that
    its log is complete by the time anyone sees its job ended (``coop logs -f`` then stops). A failure to
    read it never holds up the state change (warned about; what was stored stays)."""
    try:
        save_logs(settings, backend, job, attempt, to_end=True)
    except Exception as exc:
        log.warning("could not save the last logs of %s: %s", attempt.backend_ref, short_error(exc))


def collect_files(session: Session, settings: Settings, backend: Backend, job: Job, attempt: Attempt) -> None:
    """The attempt has ended: bring back what it left in ``$COOP_CHECKPOINT_DIR`` and ``$COOP_OUTPUT_DIR``
    where no wrapper of ours sends them (Slurm: by SFTP), into the store, before its end is recorded.
    A failure (the cluster unreachable, the member over its storage quota) is warned about and never
    holds up the end."""
    with tempfile.TemporaryDirectory(prefix="coop-files-", dir=settings.data_dir) as tmp:
        try:
            if backend.fetch_files(attempt.backend_ref or "", Path(tmp)):
                store = open_store(settings)
                for kind in ("checkpoint", "output"):
                    artifacts.record_folder(session, settings, store, attempt, job, Path(tmp) / kind, kind)
        except Exception as exc:
            log.warning("could not bring back the files of %s: %s", attempt.backend_ref, short_error(exc))
            session.rollback()


def stop(
    session: Session, backend: Backend, attempt: Attempt, kind: str, reason: str, for_job_id: int | None = None
) -> None:
    """Record why the attempt stops, then tell the backend. Recorded first, so the backend's STOPPED is
    read right even after a crash in between; forgotten again when the backend could not be told (it
    raises), so the next scheduling cycle or reconcile pass asks again instead of waiting for a stop
    that never comes."""
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
        if job.state == JobState.CANCELLED:
            stop(session, backend, attempt, "cancel", job.reason or "cancelled")
        elif attempt.pool_id is None and (node is None or node.state != NodeState.ONLINE):  # Slurm reports NODE_FAIL
            backend.stop(ref)
            save_final_logs(settings, backend, job, attempt)
            where = node.id if node is not None else attempt.node_id  # a gang: the rank's node that went
            if node is None:
                said = f"node {where} is gone"
            elif node.retired_at is not None:
                said = f"node {where} was removed from the cooperative ({node.retired_by})"
            else:
                said = f"node {where} is {node.state}"
            attempts.finish(session, attempt, job, AttemptState.LOST, said)
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
        if attempt.state == AttemptState.STARTING:  # committed, then the coordinator died before submitting
            submit(session, settings, backend, job, attempt)  # (a gang: the ranks not yet submitted)
        else:
            if gang_size(ref) > 1:
                backend.stop(ref)  # the ranks the backend still has
            attempts.finish(session, attempt, job, AttemptState.LOST, f"the backend has no record of {ref}")
        return
    if status.state in ("PENDING", "RUNNING"):
        if status.state == "RUNNING" and attempt.state == AttemptState.STARTING:
            attempts.mark_running(session, attempt, job)
        return  # its output so far is the log loop's to copy (loops.LogShipLoop), not the reconcile pass's
    save_final_logs(settings, backend, job, attempt)
    collect_files(session, settings, backend, job, attempt)
    if status.state == "LOST" and node is not None and node.pool_id is None:
        nodes.mark_offline(session, node)
    if attempt.state == AttemptState.STARTING and _it_ran(status):  # over before a pass saw it running
        attempts.mark_running(session, attempt, job)
    outcome, reason = _outcome(attempt, status.state, status.exit_code, status.message)
    if status.rank is not None and outcome in (AttemptState.FAILED, AttemptState.LOST) and not attempt.stop_requested:
        reason = f"rank {status.rank} of {gang_size(ref)}: {reason}"  # the rank that ended the gang
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


def _outcome(attempt: Attempt, state: str, exit_code: int | None, message: str) -> tuple[AttemptState, str]:
    asked = attempt.stop_requested
    if state == "SUCCEEDED":
        return AttemptState.SUCCEEDED, "exited 0"
    if state == "LOST":
        return AttemptState.LOST, f"its node went away ({message.strip()[:200]})"
    if asked == "cancel":
        return AttemptState.CANCELLED, attempt.reason or "cancelled"
    if asked == "preempt":
        return AttemptState.PREEMPTED, attempt.reason or "preempted"
    if asked == "timeout":
        return AttemptState.FAILED, attempt.reason or "exceeded max_runtime"
    if state == "STOPPED":
        return AttemptState.FAILED, "stopped outside Coop"
    return AttemptState.FAILED, f"exited with code {exit_code}" if exit_code is not None else (
        message.strip()[:300] or "failed"
    )
