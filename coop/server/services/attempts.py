"""Attempts: starting one, watching it, ending it. The only code that writes the attempt table."""

from __future__ import annotations

from sqlmodel import Session, col, select

from coop.schemas import TERMINAL_STATES
from coop.server.backends import gang_ref
from coop.server.models import Attempt, Job, utcnow
from coop.server.services.lifecycle import transition
from coop.states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState

REFUSAL_BACKOFF_S = 2  # after a refused launch the job waits this long, doubling with each refusal ...
MAX_REFUSAL_BACKOFF_S = 900  # ... up to this


def submission_id(instance: str, job_id: int, number: int) -> str:
    """Deterministic per attempt, so the backend refuses a second launch of the same attempt."""
    return f"{instance}-{job_id}-{number}"


def active(session: Session) -> list[tuple[Attempt, Job]]:
    rows = session.exec(
        select(Attempt, Job)
        .join(Job, col(Job.id) == Attempt.job_id)
        .where(col(Attempt.state).in_(ACTIVE_ATTEMPT_STATES))
    )
    return [(a, j) for a, j in rows]


def start(
    session: Session,
    job: Job,
    node_id: int,
    gpu_indices: list[int],
    cpus: int,
    backend: str,
    instance: str,
    pool_id: int | None = None,
    ranks: list[tuple[int, list[int]]] | None = None,
    nodes: int = 1,
) -> Attempt:
    """PENDING -> STARTING with a new attempt, committed before the backend is asked to run it. A gang
    of ``nodes``: ``ranks`` are (node, GPUs) of each rank, rank 0 first, where each has a node of its own
    (on a pool, Slurm picks the machines and ``ranks`` is None)."""
    assert job.id is not None
    number = job.attempts + 1
    if pool_id is not None and nodes > 1:  # its machines are Slurm's to pick: each rank on the class
        ranks = [(node_id, gpu_indices)] * nodes
    attempt = Attempt(
        job_id=job.id,
        number=number,
        state=AttemptState.STARTING,
        backend=backend,
        node_id=node_id,
        pool_id=pool_id,
        backend_ref=gang_ref(submission_id(instance, job.id, number), nodes),
        gpu_indices=gpu_indices,
        gang=[[n, list(g)] for n, g in ranks] if ranks and len(ranks) > 1 else [],
        cpus=cpus,
    )
    job.attempts = number
    session.add(attempt)
    where = f"node {node_id} (GPUs {gpu_indices or 'none'})"
    if ranks and len(ranks) > 1 and pool_id is None:
        where = f"{len(ranks)} nodes, started together: " + ", ".join(
            f"rank {k} on node {n} (GPUs {g or 'none'})" for k, (n, g) in enumerate(ranks)
        )
    if pool_id is not None:  # Slurm picks the machine and the GPUs
        machines = f"{nodes} machines" if nodes > 1 else "node class"
        where = f"HPC pool {pool_id}, {machines} of class {node_id} ({len(gpu_indices)} GPUs each), queued in Slurm"
    transition(session, job, JobState.STARTING, f"placed on {where}", number)
    session.commit()
    return attempt


def mark_running(session: Session, attempt: Attempt, job: Job) -> None:
    now = utcnow()
    attempt.state = AttemptState.RUNNING
    attempt.running_at = now
    session.add(attempt)
    if job.state == JobState.STARTING:
        transition(session, job, JobState.RUNNING, "running", attempt.number)
    session.commit()


def request_stop(
    session: Session, attempt: Attempt, kind: str | None, reason: str | None, for_job_id: int | None = None
) -> None:
    """Remember why we stop it (cancel | preempt | timeout), so the backend's STOPPED maps right, and
    for which waiting job, so that job gets the room first (a ``decide.Reservation``). ``kind=None``:
    forget it (the backend could not be told)."""
    attempt.stop_requested = kind
    attempt.reason = reason
    attempt.preempted_for = for_job_id
    session.add(attempt)
    session.commit()


def refusal_backoff_s(refusals: int) -> int:
    return min(MAX_REFUSAL_BACKOFF_S, REFUSAL_BACKOFF_S * 2 ** max(0, refusals - 1))


def refusals(session: Session, job_ids: list[int]) -> dict[int, int]:
    """How many launches of each job a backend refused."""
    rows = session.exec(
        select(Attempt.job_id).where(Attempt.state == AttemptState.REFUSED, col(Attempt.job_id).in_(job_ids))
    )
    counts: dict[int, int] = {}
    for job_id in rows:
        counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def refuse(session: Session, attempt: Attempt, job: Job, reason: str) -> None:
    """The backend refused to start ``attempt``: it never ran, so the job goes back to PENDING without
    using a retry. The reason says when it is tried again: on Ray, after ``refusal_backoff_s``
    (``scheduling`` holds it back until then); on a pool, once a refresh finds the pool working again
    (``pools.submit_failed`` took it offline)."""
    attempt.state = AttemptState.REFUSED
    attempt.reason = reason
    attempt.finished_at = utcnow()
    session.add(attempt)
    session.flush()
    if job.state == JobState.STARTING:  # not if it was cancelled meanwhile
        if attempt.pool_id is None:
            wait = refusal_backoff_s(refusals(session, [job.id]).get(job.id, 1))  # type: ignore[list-item, arg-type]
            then = f"trying again in {wait} s"
        else:
            then = "trying again once the pool answers"
        transition(session, job, JobState.PENDING, f"waiting: {reason}; no retry used, {then}", attempt.number)
    session.commit()


def retries_used(session: Session, job_id: int) -> tuple[int, int]:
    """(attempts its nodes lost, attempts that failed on their own) so far: what ``retries`` and
    ``retries_on_failure`` count. Preempted and refused attempts count against neither."""
    states = session.exec(select(Attempt.state).where(Attempt.job_id == job_id)).all()
    return states.count(AttemptState.LOST), states.count(AttemptState.FAILED)


def failure_retries(job: Job) -> int:
    """``retries_on_failure`` of the stored spec (0 for a job stored before there was one)."""
    value = (job.spec or {}).get("retries_on_failure", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _after_failure(job: Job, outcome: AttemptState, lost: int, failed: int, retry: bool) -> tuple[bool, str]:
    """Whether the job gets another attempt after a LOST or FAILED one, and the words that say why.
    A lost node is the infrastructure's doing (``retries``); a failure is the job's own
    (``retries_on_failure``, 0 unless asked for); ``retry=False`` is a failure another attempt would
    only repeat (a time limit)."""
    if not retry:
        return False, "not retried: another attempt would end the same way"
    if outcome == AttemptState.LOST:
        if lost <= job.retries:
            return True, f"retrying ({lost} of {job.retries} retries for lost nodes used)"
        return False, f"no retries left ({job.retries} retries for lost nodes used)"
    allowed = failure_retries(job)
    if failed <= allowed:
        return True, f"retrying ({failed} of {allowed} retries_on_failure used)"
    if allowed == 0:
        return False, "not retried: it failed on its own and retries_on_failure is 0"
    return False, f"no retries_on_failure left ({allowed} used)"


def finish(
    session: Session,
    attempt: Attempt,
    job: Job,
    outcome: AttemptState,
    reason: str,
    exit_code: int | None = None,
    retry: bool = True,
) -> None:
    """End an attempt and move its job on: done, failed, or back to PENDING for another attempt
    (``retry=False``: a failure that another attempt would only repeat, such as a timeout)."""
    attempt.state = outcome
    attempt.reason = reason
    attempt.exit_code = exit_code
    attempt.finished_at = utcnow()
    session.add(attempt)
    session.flush()
    n = attempt.number
    if job.state in TERMINAL_STATES:  # e.g. cancelled while running: the job already ended
        session.commit()
        return
    if outcome == AttemptState.SUCCEEDED:
        job.exit_code = exit_code
        transition(session, job, JobState.SUCCEEDED, reason, n)
    elif outcome == AttemptState.PREEMPTED:  # never counts against retries
        transition(session, job, JobState.PREEMPTED, reason, n)
        transition(session, job, JobState.PENDING, "requeued after preemption", n)
    elif outcome in (AttemptState.FAILED, AttemptState.LOST):
        lost, failed = retries_used(session, job.id)  # type: ignore[arg-type]
        job.exit_code = exit_code
        if outcome == AttemptState.LOST:
            transition(session, job, JobState.LOST, reason, n)
        again, why = _after_failure(job, outcome, lost, failed, retry)
        transition(session, job, JobState.PENDING if again else JobState.FAILED, f"{reason}; {why}", n)
    elif outcome == AttemptState.CANCELLED:
        transition(session, job, JobState.CANCELLED, reason, n)
    session.commit()
