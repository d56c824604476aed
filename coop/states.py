"""The states a job, an attempt and a node can be in. str-valued, so the wire and the database hold
the same text as before; ``services/lifecycle.py`` holds which job transitions are allowed."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTING = "STARTING"  # placed; its attempt is being launched
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"  # stopped for another job; requeued at once (never counts against retries)
    LOST = "LOST"  # its node or the backend lost it; requeued while retries remain
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


JOB_STATES = tuple(JobState)
TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class AttemptState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    REFUSED = "REFUSED"  # the backend would not start it: it never ran, so it uses no retry
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    PREEMPTED = "PREEMPTED"
    LOST = "LOST"
    CANCELLED = "CANCELLED"


ACTIVE_ATTEMPT_STATES = (AttemptState.STARTING, AttemptState.RUNNING)


class NodeState(StrEnum):
    ONLINE = "online"  # heartbeating (a pool's node class: its pool answers and has usable nodes)
    OFFLINE = "offline"  # missed its heartbeats, or its pool is unreachable
    LEFT = "left"  # left the cooperative; kept for the ledger


class PoolState(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"  # answered but refused: host key, authentication, or a command failed
    REMOVED = "removed"
