"""Plain snapshots the scheduling policy works on: no database, no I/O.

The caller (``coop.server.services.scheduling``, or ``coop.sim``) builds these each cycle into a
``decide.Snapshot``; the policy reads them and never writes them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from coop.scheduler.feasibility import GpuShape
from coop.spec import Resources, normalise_gpu_model

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


@dataclass(frozen=True)
class GpuSlot:
    """One physical GPU of a node."""

    index: int
    gpu: GpuShape


@dataclass
class NodeView:
    """A node as the scheduler sees it this cycle."""

    id: int
    name: str
    member_id: int  # the donor
    tier: str
    cpus: int
    memory_gb: float
    gpus: tuple[GpuShape, ...]  # by index
    free_gpus: set[int]  # indices not used by running attempts
    free_cpus: int
    free_memory_gb: float
    online: bool = True
    paused: bool = False
    draining: bool = False
    reclaim: bool = False  # the owner wants it back: guests are preempted
    reclaim_reason: str | None = None  # e.g. "the owner paused it", "a GPU process Coop did not start"
    tflops_per_gpu: float | None = None
    approved: bool = True  # False: registered, awaiting an admin's approval (or revoked): takes no work
    pool_id: int | None = None  # an HPC pool's node class (Slurm picks the machine): the pool caps its jobs

    @property
    def schedulable(self) -> bool:
        return self.approved and self.online and not self.paused and not self.draining and not self.reclaim

    @property
    def slots(self) -> tuple[GpuSlot, ...]:
        return tuple(GpuSlot(i, g) for i, g in enumerate(self.gpus))


@dataclass(frozen=True)
class JobView:
    """A pending job."""

    id: int
    member_id: int
    resources: Resources
    priority: str  # "low" | "normal" | "high"
    submitted_at: float  # epoch seconds
    preemptible: bool
    max_runtime_s: float | None = None  # the declared limit: orders the member's own queue


@dataclass(frozen=True)
class MemberView:
    id: int
    share: float
    gpu_cap: int | None
    gpus_in_use: int
    usage_gpu_hours: float  # decayed usage; the caller applies the half-life
    balance: float
    name: str = ""  # for reasons users read; "member <id>" when empty

    @property
    def label(self) -> str:
        return self.name or f"member {self.id}"


@dataclass(frozen=True)
class RunningView:
    """A running attempt, for preemption.

    ``gpu_indices``, ``cpus`` and ``memory_gb`` say what stopping it frees. When they are left out
    the policy assumes the least useful case (no CPUs or RAM freed; the attempt's GPUs are the
    node's busy GPUs that match a waiting job worst), so it never preempts for a job that won't fit.
    """

    job_id: int
    member_id: int
    node_id: int
    gpus: int
    preemptible: bool
    started_at: float  # epoch seconds
    gpu_indices: tuple[int, ...] = ()
    cpus: int = 0
    memory_gb: float = 0.0
    stopping: bool = False  # already asked to stop: its room frees up without a new preemption


@dataclass(frozen=True)
class Policy:
    # False: FIFO by submit time only, and a donor's waiting jobs get no first claim on its own nodes
    # (the simulator's baseline). The owner's reclaim flag (pause, foreign GPU process) holds either way.
    fair_share: bool = True
    running_weight_hours: float = 1.0  # each GPU held counts as this many GPU-hours when ordering members
    reclaim_wait_s: float = 600  # a positive-balance member's job must have waited this long to reclaim
    min_runtime_s: float = 600  # a job runs at least this long before balance-based reclaim may stop it


@dataclass(frozen=True)
class Placement:
    job_id: int
    node_id: int
    gpu_indices: tuple[int, ...]


@dataclass
class CycleResult:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> reason a user understands


@dataclass(frozen=True)
class Preemption:
    job_id: int
    node_id: int
    reason: str
    kind: Literal["owner", "reclaim"]
    for_job_id: int | None = None  # the waiting job a reclaim makes room for


RequestKey = tuple[object, ...]


def request_key(res: Resources) -> RequestKey:
    """A hashable key for what placement depends on (Resources holds a list, so it is not hashable)."""
    mem = res.gpu_memory
    cc = res.compute_capability
    return (
        res.gpus,
        (mem.min_gb, mem.max_gb) if mem else None,
        tuple(sorted({normalise_gpu_model(m) for m in res.gpu})) if res.gpu else None,
        (cc.min, cc.max) if cc else None,
        res.cpus,
        res.memory_gb or 0.0,
        res.tier,
    )


def member_view(members: dict[int, MemberView], member_id: int) -> MemberView:
    """A member missing from the snapshot gets a neutral view: share 1, no cap, no usage."""
    return members.get(member_id) or MemberView(member_id, 1.0, None, 0, 0.0, 0.0)
