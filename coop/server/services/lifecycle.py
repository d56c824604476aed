"""The one table of allowed job transitions; every change is recorded as a JobEvent."""

from __future__ import annotations

from sqlmodel import Session

from coop.schemas import TERMINAL_STATES
from coop.server.errors import ApiError
from coop.server.models import Job, JobEvent, utcnow

TRANSITIONS: dict[str, frozenset[str]] = {
    "PENDING": frozenset({"STARTING", "CANCELLED", "FAILED"}),
    # -> PENDING: the attempt failed by its own exit code (or could not start) and retries remain
    "STARTING": frozenset({"PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED", "LOST"}),
    "RUNNING": frozenset({"PENDING", "SUCCEEDED", "FAILED", "CANCELLED", "PREEMPTED", "LOST"}),
    "PREEMPTED": frozenset({"PENDING", "FAILED", "CANCELLED"}),
    "LOST": frozenset({"PENDING", "FAILED", "CANCELLED"}),
    "SUCCEEDED": frozenset(),
    "FAILED": frozenset(),
    "CANCELLED": frozenset(),
}


class IllegalTransition(ApiError):
    def __init__(self, job: Job, to_state: str) -> None:
        super().__init__(
            409,
            "conflict",
            f"job {job.id} is {job.state} and cannot become {to_state}",
            field="state",
            fix="a finished job cannot change; submit it again instead",
        )


def transition(session: Session, job: Job, to_state: str, reason: str, attempt: int | None = None) -> JobEvent:
    """Move ``job`` to ``to_state`` (caller commits). Refuses to leave a terminal state."""
    if to_state not in TRANSITIONS.get(job.state, frozenset()):
        raise IllegalTransition(job, to_state)
    assert job.id is not None
    event = JobEvent(job_id=job.id, attempt=attempt, from_state=job.state, to_state=to_state, reason=reason)
    now = utcnow()
    job.state = to_state
    job.reason = reason
    if to_state == "RUNNING" and job.started_at is None:
        job.started_at = now
    if to_state in TERMINAL_STATES:
        job.finished_at = now
    session.add(job)
    session.add(event)
    return event
