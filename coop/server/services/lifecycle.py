"""The one table of allowed job transitions; every change is recorded as a JobEvent."""

from __future__ import annotations

from sqlmodel import Session

from coop.server.models import Job, JobEvent, utcnow
from coop.server.services.errors import Conflict
from coop.states import TERMINAL_STATES, JobState

TRANSITIONS: dict[str, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.STARTING, JobState.CANCELLED, JobState.FAILED}),
    # -> PENDING: the attempt failed by its own exit code and retries_on_failure remain, its node was
    # lost and retries remain (via LOST), or the backend refused to start it
    JobState.STARTING: frozenset(
        {
            JobState.PENDING,
            JobState.RUNNING,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PREEMPTED,
            JobState.LOST,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.PENDING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED, JobState.LOST}
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    JobState.LOST: frozenset({JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    def __init__(self, job: Job, to_state: str) -> None:
        super().__init__(
            f"job {job.id} is {job.state} and cannot become {to_state}",
            field="state",
            fix="a finished job cannot change; submit it again instead",
        )


def transition(session: Session, job: Job, to_state: JobState, reason: str, attempt: int | None = None) -> JobEvent:
    """Move ``job`` to ``to_state`` (caller commits). Refuses to leave a terminal state."""
    if to_state not in TRANSITIONS.get(job.state, frozenset()):
        raise IllegalTransition(job, to_state)
    assert job.id is not None
    event = JobEvent(job_id=job.id, attempt=attempt, from_state=job.state, to_state=to_state, reason=reason)
    now = utcnow()
    job.state = to_state
    job.reason = reason
    if to_state == JobState.RUNNING and job.started_at is None:
        job.started_at = now
    if to_state in TERMINAL_STATES:
        job.finished_at = now
    session.add(job)
    session.add(event)
    return event
