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
    network: str | None = None  # the network label its agent reports: a gang prefers nodes of one network
    machines: int = 1  # a pool's node class: how many machines Slurm may pick from (a gang needs enough)

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
    attained_gpu_s: float = 0.0  # GPU-seconds its earlier attempts ran: least attained service goes first
    service_stops: int = 0  # times it was stopped to let jobs with less service go first


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
    attained_gpu_s: float = 0.0  # GPU-seconds of its job's earlier attempts (this one's come on top)
    checkpoint_at: float | None = None  # its last checkpoint (epoch seconds); None: none yet
    max_runtime_s: float | None = None  # its job's declared limit: bounds when it ends
    service_stops: int = 0  # times its job was already stopped for service order
    submitted_at: float = 0.0  # its job's submit time (epoch seconds)
    nodes: int = 1  # a gang's size: it has one view per rank, and stopping one stops them all

    def attained(self, now: float) -> float:
        """GPU-seconds of service its job has had by ``now`` (a gang's: all its ranks')."""
        return self.attained_gpu_s + max(0.0, now - self.started_at) * self.gpus * self.nodes

    def unsaved(self, now: float) -> float:
        """Seconds of run time since its last checkpoint (an older one is where it resumed) or start."""
        return max(0.0, now - max(self.started_at, self.checkpoint_at or 0.0))

    def loss(self, now: float) -> float:
        """GPU-seconds of work stopping it at ``now`` would throw away (a gang's: on every rank)."""
        return self.unsaved(now) * self.gpus * self.nodes


@dataclass(frozen=True)
class Policy:
    # False: FIFO by submit time only, and a donor's waiting jobs get no first claim on its own nodes
    # (the simulator's baseline). The owner's reclaim flag (pause, foreign GPU process) holds either way.
    fair_share: bool = True
    running_weight_hours: float = 1.0  # each GPU held counts as this many GPU-hours when ordering members
    reclaim_wait_s: float = 600  # a positive-balance member's job must have waited this long to reclaim
    min_runtime_s: float = 600  # a job runs at least this long before balance-based reclaim may stop it
    # least attained service: a member's jobs go by the band of GPU-hours they have run (below the first
    # level, then below the next, ...); with ``service_preemption`` a job in a lower band may stop a
    # preemptible one in a higher band (once per level that one passed), where fair share allows it
    service_levels_gpu_h: tuple[float, ...] = (1.0, 8.0, 64.0)
    service_preemption: bool = True
    service_max_loss_s: float = 1800.0  # a service stop throws away at most this much run time (since
    # the attempt's last checkpoint, or its start): a job that never checkpoints makes way only early on
    # a job of 2+ GPUs that waited this long holds the node that frees soonest for it (by observed
    # progress); only jobs whose declared limit ends before then may use the held GPUs meanwhile
    wide_hold_after_s: float = 3600.0


@dataclass(frozen=True)
class Placement:
    job_id: int
    node_id: int  # a gang's rank 0
    gpu_indices: tuple[int, ...]
    ranks: tuple[tuple[int, tuple[int, ...]], ...] = ()  # a gang's ranks 1.. on other nodes: (node, GPUs)

    @property
    def parts(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """(node id, GPU indices) of every rank, rank 0 first."""
        return ((self.node_id, self.gpu_indices), *self.ranks)


@dataclass(frozen=True)
class Hold:
    """GPUs kept free on ``node_id`` for a wide job that waited long, until about ``until``."""

    job_id: int
    node_id: int
    until: float  # when the node's jobs are expected to have freed enough GPUs (by observed progress)
    member_id: int = 0  # the wide job's member


@dataclass
class CycleResult:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> reason a user understands
    holds: list[Hold] = field(default_factory=list)


@dataclass(frozen=True)
class Preemption:
    job_id: int
    node_id: int
    reason: str
    kind: Literal["owner", "reclaim", "service"]
    for_job_id: int | None = None  # the waiting job a reclaim makes room for


RequestKey = tuple[object, ...]


def request_key(res: Resources) -> RequestKey:
    """A hashable key for what placement depends on (Resources holds a list, so it is not hashable)."""
    mem = res.gpu_memory
    cc = res.compute_capability
    return (
        res.gpus,
        res.nodes,
        (mem.min_gb, mem.max_gb) if mem else None,
        tuple(sorted({normalise_gpu_model(m) for m in res.gpu})) if res.gpu else None,
        (cc.min, cc.max) if cc else None,
        res.cpus,
        res.memory_gb or 0.0,
        res.tier,
    )


def service_band(gpu_s: float, levels: tuple[float, ...]) -> int:
    """How many of the service ``levels`` (GPU-hours) ``gpu_s`` GPU-seconds have passed."""
    hours = gpu_s / 3600
    return sum(hours >= level for level in levels)


def fair_share_key(usage_gpu_hours: float, gpus_held: int, share: float, running_weight_hours: float) -> float:
    """A member's place in fair-share order (lower goes first): (decayed usage + GPUs held x
    ``running_weight_hours``) / share; a member with no share goes last."""
    if share <= 0:
        return float("inf")
    return (usage_gpu_hours + gpus_held * running_weight_hours) / share


def member_view(members: dict[int, MemberView], member_id: int) -> MemberView:
    """A member missing from the snapshot gets a neutral view: share 1, no cap, no usage."""
    return members.get(member_id) or MemberView(member_id, 1.0, None, 0, 0.0, 0.0)
