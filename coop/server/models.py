"""Ledger tables. Only ``services/`` writes to them.

JobEvent and LedgerEntry are append-only: no code updates or deletes a row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, DateTime, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from coop.states import AttemptState, JobState, NodeState, PoolState

LEDGER_BOUND = 1_000_000_000_000  # credits or GPU-hours in one ledger row; migration 0003 checks the same


def utcnow() -> datetime:
    return datetime.now(UTC)


def pk(row: Any) -> int:
    """The primary key of a row that has been flushed (typed as an int, not ``int | None``)."""
    assert row.id is not None, f"{type(row).__name__} has not been flushed"
    return int(row.id)


def aware(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; every timestamp Coop stores is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _ts(nullable: bool = False) -> Any:
    """A timezone-aware timestamp column: now by default, or NULL for the nullable ones."""
    if nullable:
        return Field(default=None, sa_type=DateTime(timezone=True), nullable=True)  # type: ignore[call-overload]
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), nullable=False)  # type: ignore[call-overload]


class Member(SQLModel, table=True):
    """A participant of the cooperative (a lab or a person): owns nodes, runs jobs, holds credit."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    share: float = Field(default=1.0, description="fair-share weight")
    gpu_cap: int | None = Field(default=None, description="max concurrent GPUs; None = unlimited")
    storage_bytes: int | None = Field(
        default=None,
        sa_column=Column(BigInteger, nullable=True),
        description="artifact store quota; None = the coordinator's default (COOP_STORAGE_QUOTA_GB)",
    )
    created_at: datetime = _ts()


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    name: str = Field(unique=True, max_length=64)
    role: str = Field(default="member", max_length=16)  # admin | member
    created_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    """A bearer token, stored as its SHA-256. ``kind`` is "user" or "agent" (agent: the member's nodes only)."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    kind: str = Field(default="user", max_length=8)
    member_id: int = Field(foreign_key="member.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id")
    name: str = Field(default="", max_length=64)
    created_at: datetime = _ts()
    revoked_at: datetime | None = _ts(nullable=True)


RETIRED_NOT_SET = text("retired_at IS NULL")


class Node(SQLModel, table=True):
    """A donated machine (an agent's) or an HPC pool's node class. A node an admin or its donor removed
    is retired (``retired_at``): its row stays for the ledger's history, with state ``left``, and its
    name is free for a new node of the member (the name is unique among the member's nodes in service)."""

    __table_args__ = (
        Index(
            "uq_node_member_name",
            "member_id",
            "name",
            unique=True,
            sqlite_where=RETIRED_NOT_SET,
            postgresql_where=RETIRED_NOT_SET,
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    name: str = Field(max_length=128)
    state: str = Field(default=NodeState.ONLINE, max_length=16)  # a NodeState
    paused: bool = Field(default=False, description="paused by its owner (agent) or from the coordinator")
    coordinator_paused: bool = Field(default=False, description="paused through the API: heartbeats keep it")
    draining: bool = False
    approved: bool = Field(
        default=False, description="an admin approved it: only then does it get the Ray token and jobs"
    )
    reclaim: bool = Field(default=False, description="the owner wants the machine back")
    reclaim_reason: str | None = None
    tier: str = Field(default="consumer", max_length=16)
    network: str | None = Field(default=None, max_length=64, description="its agent's network label: gangs keep to one")
    pool_id: int | None = Field(default=None, foreign_key="pool.id", index=True, description="a pool's node class")
    cpus: int = 0
    memory_gb: float = 0
    disk_gb: float = 0
    os: str = Field(default="", max_length=128)
    python_version: str = Field(default="", max_length=32)
    ray_version: str | None = Field(default=None, max_length=32)
    tflops_per_gpu: float | None = None
    cpu_tflops: float | None = None
    telemetry: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    registered_at: datetime = _ts()
    last_heartbeat_at: datetime | None = _ts(nullable=True)
    # the machine, whatever the node's name (agent/identity.py): keyed hashes, never the raw machine-id
    hardware_id: str | None = Field(
        default=None, max_length=64, description="HMAC-SHA256 of the machine-id over its GPU UUIDs (agent-made)"
    )
    host_id: str | None = Field(default=None, max_length=64, description="HMAC-SHA256 of the machine-id alone")
    retired_at: datetime | None = _ts(nullable=True)
    retired_by: str | None = Field(default=None, max_length=160, description="who removed it, and why")


class Gpu(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("node_id", "index"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: int = Field(foreign_key="node.id", index=True)
    index: int
    uuid: str | None = Field(default=None, max_length=128)
    name: str = Field(max_length=128)
    model: str = Field(max_length=64, description="normalised model name, e.g. RTX4090")
    memory_gb: float
    compute_capability: float | None = None
    driver_version: str | None = Field(default=None, max_length=32)
    cuda_version: str | None = Field(default=None, max_length=32)
    mig_mode: str | None = Field(default=None, max_length=16)


class Pool(SQLModel, table=True):
    """An HPC allocation (Slurm over SSH). ``capacity`` lists node classes once known."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=64)
    member_id: int = Field(foreign_key="member.id", index=True)
    kind: str = Field(default="slurm", max_length=16)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    capacity: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    max_jobs: int = 10
    enabled: bool = True
    state: str = Field(default=PoolState.UNKNOWN, max_length=16)  # a PoolState
    detail: str | None = Field(default=None, description="the last refresh's error, for people")
    refreshed_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()


class JobArray(SQLModel, table=True):
    """A job array: one submission of many tasks, each an ordinary ``Job`` (``array_id``, ``array_index``).
    Its id is its first task's job id, so array and job ids never clash. Its state is its tasks'."""

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    member_id: int = Field(foreign_key="member.id", index=True)
    name: str = Field(max_length=63)
    kind: str = Field(max_length=16)
    gpus: int = Field(default=0, description="per task and node")
    nodes: int = Field(default=1, description="per task")
    size: int = Field(description="tasks")
    max_parallel: int | None = Field(default=None, description="tasks that may run at once; None: no limit")
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False), description="as submitted, array: included")
    submitted_at: datetime = _ts()


class Job(SQLModel, table=True):
    __table_args__ = (
        Index("ix_job_member_state", "member_id", "state"),
        Index("ix_job_array", "array_id", "array_index", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id")
    user_id: int | None = Field(default=None, foreign_key="user.id")
    name: str = Field(max_length=63)
    kind: str = Field(max_length=16)
    state: str = Field(default=JobState.PENDING, max_length=16, index=True)  # a JobState
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    workdir_sha256: str | None = Field(default=None, max_length=64)
    gpus: int = Field(default=0, description="per node")
    nodes: int = Field(default=1, sa_column_kwargs={"server_default": "1"}, description="a gang's size")
    priority: str = Field(default="normal", max_length=8)
    preemptible: bool = True
    retries: int = 2
    attempts: int = 0
    reason: str | None = Field(default=None, description="why it waits or how it ended")
    exit_code: int | None = None
    submitted_at: datetime = _ts()
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
    array_id: int | None = Field(default=None, foreign_key="jobarray.id", description="the array it is a task of")
    array_index: int | None = Field(default=None, description="its index in the array (COOP_ARRAY_INDEX)")
    array_values: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True), description="its matrix values"
    )


class Attempt(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    number: int
    state: str = Field(default=AttemptState.STARTING, max_length=16)  # an AttemptState
    backend: str = Field(max_length=16)  # ray | slurm
    node_id: int | None = Field(default=None, foreign_key="node.id")
    pool_id: int | None = Field(default=None, foreign_key="pool.id")
    backend_ref: str | None = Field(default=None, max_length=128)
    gpu_indices: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # a gang's ranks, rank 0 first, as [node id, [GPU indices]] (rank 0 is also node_id/gpu_indices); empty
    # for one node. A pool's gang has each rank on its node class (Slurm picks the machines)
    gang: list[list[Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    cpus: int = 0
    reason: str | None = None
    exit_code: int | None = None
    stop_requested: str | None = Field(default=None, max_length=16, description="cancel | preempt | timeout")
    preempted_for: int | None = Field(default=None, description="the waiting job this preemption makes room for")
    started_at: datetime = _ts()
    running_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)


def ranks_of(attempt: Attempt) -> list[tuple[int | None, list[int]]]:
    """(node id, GPU indices) of each of the attempt's ranks on a node of its own, rank 0 first."""
    if attempt.gang:
        return [(int(node_id), list(indices)) for node_id, indices in attempt.gang]
    return [(attempt.node_id, list(attempt.gpu_indices))]


class JobEvent(SQLModel, table=True):
    """Append-only history of a job's transitions."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    attempt: int | None = None
    from_state: str | None = Field(default=None, max_length=16)
    to_state: str = Field(max_length=16)
    reason: str = ""
    at: datetime = _ts()


class LedgerEntry(SQLModel, table=True):
    """Append-only credit movement. A member's balance is the sum of its entries. The database
    refuses non-finite or absurd amounts (NaN and infinities fail the range checks)."""

    __table_args__ = (
        CheckConstraint(f"amount >= {-LEDGER_BOUND} AND amount <= {LEDGER_BOUND}", name="ck_ledgerentry_amount_finite"),
        CheckConstraint(
            f"gpu_hours >= {-LEDGER_BOUND} AND gpu_hours <= {LEDGER_BOUND}", name="ck_ledgerentry_gpu_hours_finite"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    amount: float
    kind: str = Field(max_length=16, index=True)  # grant | spend | earn | own | idle
    gpu_hours: float = Field(default=0.0, description="GPU-hours behind a spend/earn/own/idle entry")
    job_id: int | None = Field(default=None, foreign_key="job.id")
    attempt_id: int | None = Field(default=None, foreign_key="attempt.id", index=True)
    node_id: int | None = Field(default=None, foreign_key="node.id")
    note: str = ""
    at: datetime = _ts()


class ForeignWork(SQLModel, table=True):
    """Work on the Ray cluster that Coop did not start (a Ray job submitted straight to the Jobs API,
    a driver's actors or tasks), one row per Ray id: written when first seen (the event), kept up to
    date while it is seen, ``gone_at`` once a check no longer finds it. Only
    ``services/foreign_work.py`` writes it."""

    __table_args__ = (UniqueConstraint("kind", "ray_id"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=8)  # job | actor | task (a Ray job's running tasks on one Ray node)
    ray_id: str = Field(max_length=128, description="submission or job id, actor id, or <job id>@<node id>")
    ray_job_id: str | None = Field(default=None, max_length=64, description="Ray's job id it belongs to")
    node_id: int | None = Field(default=None, foreign_key="node.id", index=True, description="the Coop node")
    ray_node_id: str | None = Field(default=None, max_length=64)
    place: str = Field(max_length=8, description="node (a Coop node), head, or unknown")
    name: str = Field(default="", max_length=200, description="job entrypoint, actor class and name, or task names")
    first_seen: datetime = _ts()
    last_seen: datetime = _ts()
    gone_at: datetime | None = _ts(nullable=True)


class ArtifactSet(SQLModel, table=True):
    """Files one attempt sent to the artifact store: its outputs once it stopped, or one sync of its
    checkpoint directory. ``complete`` once every file's blob is stored: only complete sets are listed,
    pulled or restored; a set that never completes is dropped by the expiry pass. Only
    ``services/artifacts.py`` writes it (and ArtifactFile)."""

    __table_args__ = (Index("ix_artifactset_job_kind", "job_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id")
    member_id: int = Field(foreign_key="member.id", index=True)
    attempt: int
    kind: str = Field(max_length=16)  # output | checkpoint
    files: int = 0
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    complete: bool = False
    created_at: datetime = _ts()
    completed_at: datetime | None = _ts(nullable=True)


class ArtifactFile(SQLModel, table=True):
    """One file of a set: where it goes (relative to the set's folder), its size and its blob."""

    __table_args__ = (UniqueConstraint("set_id", "path"),)

    id: int | None = Field(default=None, primary_key=True)
    set_id: int = Field(foreign_key="artifactset.id", index=True)
    path: str = Field(max_length=1024)
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64, index=True)
