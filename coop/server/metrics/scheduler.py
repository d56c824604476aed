"""What the scheduler does, counted where it happens: in the process that holds the leader lock.

These live in memory (a restart starts them from zero, which ``rate()`` handles); everything that
can be read from the ledger is in :mod:`.collector` instead. Only a process that ran a scheduler
cycle lately reports them: with several workers (or coordinators) a scrape that reaches a standby
finds no such series, rather than zeros that ``rate()`` would read as counter resets. Labels are
fixed sets (job kind, preemption reason), initialised at zero so every series exists from the
leader's first cycle. Each coordinator (each database engine) has its own set, so several
coordinators in one process (as in the tests) do not mix their figures.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime

from prometheus_client import Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from coop.scheduler.model import MemberView, NodeView, Preemption
from coop.server.metrics.collector import JOB_KINDS
from coop.server.models import Job, JobEvent, aware
from coop.states import JobState

# owner_paused / owner_gpu_process: the donor wants its machine back (paused it, or runs its own GPU
# work); owner_job: the donor's own queued job needs its node; reclaim: a member with credit
# reclaims from one in debt (fair share); service: a job that ran long makes way for one with less
# service (least attained service)
# No *_created series beside each counter and histogram: Prometheus does not need them, and they
# would double what the dashboard's queries have to skip.
disable_created_metrics()

PREEMPTION_REASONS = ("owner_paused", "owner_gpu_process", "owner_job", "reclaim", "service")
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FRESH_S = 30.0  # a process that ran no cycle for this long is not the scheduler (any more)
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, 259200)


def preemption_reason(pre: Preemption, node: NodeView | None) -> str:
    if pre.kind in ("reclaim", "service"):
        return pre.kind
    if node is not None and node.paused:
        return "owner_paused"
    if node is not None and node.reclaim:
        return "owner_gpu_process"
    return "owner_job"


class SchedulerMetrics(Collector):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_cycle: float | None = None
        # registry=None: exposed through this collector, which each app's registry holds
        self.cycle_seconds = Histogram(
            "coop_scheduler_cycle_seconds", "Time one scheduler cycle took", buckets=CYCLE_BUCKETS, registry=None
        )
        self.placements = Counter("coop_placements", "Jobs placed on a node", ["kind"], registry=None)
        self.preemptions = Counter("coop_preemptions", "Running jobs preempted, by reason", ["reason"], registry=None)
        self.queue_wait = Histogram(
            "coop_queue_wait_seconds",
            "How long a job was pending before it was placed (since it last became pending)",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        for kind in JOB_KINDS:
            self.placements.labels(kind)
            self.queue_wait.labels(kind)
        for reason in PREEMPTION_REASONS:
            self.preemptions.labels(reason)
        self.usage: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        if self.last_cycle is None or self.clock() - self.last_cycle > FRESH_S:
            return
        for metric in (self.cycle_seconds, self.placements, self.preemptions, self.queue_wait):
            yield from metric.collect()
        usage = GaugeMetricFamily(
            "coop_member_fair_share_usage_credits",
            "Usage fair share orders members by: credits spent, decayed with the half-life (last cycle)",
            labels=["member"],
        )
        for name, value in sorted(self.usage.items()):
            usage.add_metric([name], value)
        yield usage

    def cycle_done(self, seconds: float) -> None:
        self.cycle_seconds.observe(seconds)
        self.last_cycle = self.clock()

    def placed(self, session: Session, jobs: Sequence[Job], now: datetime) -> None:
        """Count placements and their queue waits (one query for when each job last became pending)."""
        if not jobs:
            return
        since = dict(
            session.exec(
                select(JobEvent.job_id, func.max(JobEvent.at))
                .where(col(JobEvent.job_id).in_([j.id for j in jobs]), JobEvent.to_state == JobState.PENDING)
                .where(col(JobEvent.at) <= now)
                .group_by(col(JobEvent.job_id))
            ).all()
        )
        for job in jobs:
            self.placements.labels(job.kind).inc()
            pending_since = aware(since.get(job.id or 0) or job.submitted_at)
            self.queue_wait.labels(job.kind).observe(max(0.0, (now - pending_since).total_seconds()))

    def preempted(self, pre: Preemption, nodes: Iterable[NodeView]) -> None:
        node = next((n for n in nodes if n.id == pre.node_id), None)
        self.preemptions.labels(preemption_reason(pre, node)).inc()

    def members(self, members: Iterable[MemberView]) -> None:
        self.usage = {m.label: m.usage_gpu_hours for m in members}


_by_engine: weakref.WeakKeyDictionary[Engine, SchedulerMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def scheduler_metrics(engine: Engine) -> SchedulerMetrics:
    """The scheduler metrics of the coordinator that uses ``engine`` (created on first use)."""
    with _lock:
        metrics = _by_engine.get(engine)
        if metrics is None:
            metrics = _by_engine[engine] = SchedulerMetrics()
        return metrics
