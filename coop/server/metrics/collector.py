"""Gauges of the cooperative's state, computed from the ledger at scrape time.

Nothing here is kept in memory between scrapes, so the figures survive restarts and agree across
several coordinator workers. Each scrape runs a fixed handful of queries (aggregates, or one row per
node, GPU or member), never one query per node. Liveness is judged here too: a node whose heartbeats
stopped shows as down in the first scrape after its timeout, whether or not the liveness loop has
marked it offline yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, get_args

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import coop
from coop.schemas import JOB_STATES
from coop.server.config import Settings
from coop.server.models import (
    Attempt,
    ForeignWork,
    Gpu,
    Job,
    JobEvent,
    LedgerEntry,
    Member,
    Node,
    Pool,
    aware,
    ranks_of,
    utcnow,
)
from coop.server.services import artifacts
from coop.spec import JobSpec
from coop.states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState, NodeState, PoolState

JOB_KINDS: tuple[str, ...] = get_args(JobSpec.model_fields["kind"].annotation)
NODE_STATES = ("online", "paused", "owner_busy", "draining", "unapproved", "offline")
GPU_STATES = ("allocated", "idle", "unavailable")
GIB = 2**30

# What a pending job waits for, read from the reason the scheduler last gave it (placement.py).
# "scheduler": no reason says anything is missing, so the job could be placed (the scheduler has not
# looked at it since it became pending, or has not started it).
WAITING_FOR = ("scheduler", "capacity", "quota", "matching_node")
CAPACITY_PREFIX = "waiting: no node has "  # matching nodes exist, none has room (busy, paused, offline)
QUOTA_PREFIXES = ("waiting: member at its GPU cap", "waiting: the job needs ")
WAITING_PREFIX = "waiting: "  # any other: no registered node matches the request


def waiting_for(reason: str | None) -> str:
    """The ``waiting_for`` label of a pending job's reason (the SQL below applies the same rules)."""
    text = reason or ""
    if text.startswith(CAPACITY_PREFIX):
        return "capacity"
    if text.startswith(QUOTA_PREFIXES):
        return "quota"
    return "matching_node" if text.startswith(WAITING_PREFIX) else "scheduler"


@dataclass
class NodeRow:
    id: int
    name: str
    member: str
    tier: str
    state: str  # effective, at scrape time: one of NODE_STATES
    up: bool
    last_heartbeat: datetime | None
    telemetry: dict[str, Any]
    cpus: int = 0


def node_state(node: Node, now: datetime, timeout: timedelta) -> tuple[str, bool]:
    """(state label, up): a node past its heartbeat timeout is offline now, not when the loop notices.

    A Slurm pool's node class (``pool_id`` set) has no agent: its pool's refresh sets its state."""
    last = aware(node.last_heartbeat_at) if node.last_heartbeat_at else None
    agentless = getattr(node, "pool_id", None) is not None
    up = node.state == NodeState.ONLINE and (agentless or (last is not None and now - last <= timeout))
    if not up:
        return "offline", False
    if not getattr(node, "approved", True):  # registered, awaiting an admin's approval (or revoked)
        return "unapproved", True
    if node.paused:
        return "paused", True
    if node.reclaim:
        return "owner_busy", True
    return ("draining" if node.draining else "online"), True


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class LedgerCollector(Collector):
    """The ``coop_*`` gauges (and ledger-derived counters) read from the database on every scrape."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.timeout = timedelta(seconds=settings.heartbeat_interval_s * settings.missed_heartbeats_offline)
        self.foreign_checked = bool(settings.ray_dashboard_url) and settings.foreign_work_interval_s > 0

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        with Session(self.engine) as session:
            yield from self._jobs(session)
            yield from self._pending(session)
            nodes = self._node_rows(session, now)
            allocated, held, cores = self._allocations(session)
            yield from self._nodes(session, nodes, allocated, cores)
            yield from self._members(session, held)
            pool_jobs = yield from self._attempts(session)
            yield from self._pools(session, pool_jobs)
            if self.foreign_checked:
                yield from self._foreign(session, nodes)
        info = _gauge("coop_build_info", "Coop version of this coordinator (always 1)", ["version"])
        info.add_metric([coop.__version__], 1)
        yield info

    # --- jobs ------------------------------------------------------------------------------------

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = {(s, k): 0 for s in JOB_STATES for k in JOB_KINDS}
        for state, kind, n in session.exec(
            select(Job.state, Job.kind, func.count()).group_by(col(Job.state), col(Job.kind))
        ):
            counts[(state, kind)] = n
        g = _gauge("coop_jobs", "Jobs by state and kind", ["state", "kind"])
        for (state, kind), n in sorted(counts.items()):
            g.add_metric([state, kind], n)
        yield g

    def _pending(self, session: Session) -> Iterator[Metric]:
        reason = col(Job.reason)
        label = case(
            (reason.like(CAPACITY_PREFIX + "%"), "capacity"),
            (or_(*(reason.like(p + "%") for p in QUOTA_PREFIXES)), "quota"),
            (reason.like(WAITING_PREFIX + "%"), "matching_node"),
            else_="scheduler",
        ).label("waiting_for")
        # pending since it last became PENDING (a requeued job's wait starts again)
        since = func.coalesce(func.max(JobEvent.at), func.min(Job.submitted_at)).label("since")
        per_job = (
            select(label, since)
            .select_from(Job)
            .outerjoin(JobEvent, (col(JobEvent.job_id) == Job.id) & (col(JobEvent.to_state) == JobState.PENDING))
            .where(Job.state == JobState.PENDING)
            .group_by(col(Job.id), reason)
            .subquery()
        )
        rows = session.exec(
            select(per_job.c.waiting_for, func.count(), func.min(per_job.c.since)).group_by(per_job.c.waiting_for)
        )
        count = _gauge(
            "coop_pending_jobs",
            "Pending jobs by what they wait for (scheduler: nothing is missing, they could be placed)",
            ["waiting_for"],
        )
        oldest = _gauge(
            "coop_pending_job_oldest_timestamp_seconds",
            "When the longest-waiting pending job became pending, by what it waits for",
            ["waiting_for"],
        )
        seen = dict.fromkeys(WAITING_FOR, 0)
        for what, n, first in rows:
            seen[what] = n
            if first is not None:
                oldest.add_metric([what], _epoch(first))
        for what, n in seen.items():
            count.add_metric([what], n)
        yield count
        yield oldest

    # --- nodes and GPUs --------------------------------------------------------------------------

    def _node_rows(self, session: Session, now: datetime) -> list[NodeRow]:
        rows = []
        for node, member in session.exec(select(Node, Member.name).join(Member).where(Node.state != NodeState.LEFT)):
            state, up = node_state(node, now, self.timeout)
            hb = aware(node.last_heartbeat_at) if node.last_heartbeat_at else None
            rows.append(
                NodeRow(node.id or 0, node.name, member, node.tier, state, up, hb, node.telemetry or {}, node.cpus)
            )
        return rows

    def _allocations(self, session: Session) -> tuple[dict[int, set[int]], dict[int, int], dict[int, int]]:
        """GPU indices held by active attempts (every rank of a gang), per node; GPUs held per member; CPU
        cores held per node."""
        by_node: dict[int, set[int]] = defaultdict(set)
        by_member: dict[int, int] = defaultdict(int)
        cores: dict[int, int] = defaultdict(int)
        for attempt, member_id in session.exec(
            select(Attempt, Job.member_id)
            .join(Job, col(Job.id) == Attempt.job_id)
            .where(col(Attempt.state).in_(ACTIVE_ATTEMPT_STATES))
        ):
            for node_id, indices in ranks_of(attempt):
                by_node[node_id or 0].update(indices)
                by_member[member_id] += len(indices)
                cores[node_id or 0] += attempt.cpus
        return by_node, by_member, cores

    def _nodes(
        self, session: Session, nodes: list[NodeRow], allocated: dict[int, set[int]], cores: dict[int, int]
    ) -> Iterator[Metric]:
        by_id = {n.id: n for n in nodes}
        gpus: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
        for node_id, index, model, memory_gb in session.exec(
            select(Gpu.node_id, Gpu.index, Gpu.model, Gpu.memory_gb).order_by(col(Gpu.node_id), col(Gpu.index))
        ):
            if node_id in by_id:
                gpus[node_id].append((index, model, memory_gb))

        up = _gauge(
            "coop_node_up", "1 while the node heartbeats within its timeout, else 0", ["node", "member", "tier"]
        )
        last = _gauge(
            "coop_node_last_heartbeat_timestamp_seconds", "When the node last heartbeated", ["node", "member"]
        )
        node_counts: dict[tuple[str, str, str], int] = {}
        gpu_counts: dict[tuple[str, str], int] = {}
        mem_total = _gauge("coop_gpu_memory_total_bytes", "Memory of each GPU", ["node", "member", "gpu", "gpu_model"])
        for n in nodes:
            up.add_metric([n.name, n.member, n.tier], 1 if n.up else 0)
            if n.last_heartbeat is not None:
                last.add_metric([n.name, n.member], n.last_heartbeat.timestamp())
            models = sorted({m for _, m, _ in gpus[n.id]})
            model = "+".join(models) or "cpu"
            for state in NODE_STATES:
                node_counts.setdefault((state, n.tier, model), 0)
            node_counts[(n.state, n.tier, model)] += 1
            for index, gpu_model, memory_gb in gpus[n.id]:
                if index in allocated.get(n.id, ()):
                    state = "allocated"
                else:
                    state = "idle" if n.state == NodeState.ONLINE else "unavailable"
                for s in GPU_STATES:
                    gpu_counts.setdefault((gpu_model, s), 0)
                gpu_counts[(gpu_model, state)] += 1
                mem_total.add_metric([n.name, n.member, str(index), gpu_model], memory_gb * GIB)
        by_state = _gauge(
            "coop_nodes", "Nodes that have not left, by state, tier and GPU model", ["state", "tier", "gpu_model"]
        )
        for (state, tier, model), count in sorted(node_counts.items()):
            by_state.add_metric([state, tier, model], count)
        gpu_g = _gauge(
            "coop_gpus",
            "GPUs of nodes that have not left: allocated to a job, idle (on a node taking work) or unavailable",
            ["gpu_model", "state"],
        )
        for (model, state), count in sorted(gpu_counts.items()):
            gpu_g.add_metric([model, state], count)
        yield from (up, last, by_state, gpu_g, mem_total)
        yield from self._telemetry(nodes, gpus)
        yield from self._capacity(nodes, gpus, allocated, cores)

    def _telemetry(self, nodes: list[NodeRow], gpus: dict[int, list[tuple[int, str, float]]]) -> Iterator[Metric]:
        """Per-GPU readings from each node's last heartbeat; only for nodes that are up (no stale heat)."""
        labels = ["node", "member", "gpu", "gpu_model"]
        families = {
            "utilization_pct": (_gauge("coop_gpu_utilization_ratio", "GPU utilisation (0-1)", labels), 0.01),
            "memory_used_gb": (_gauge("coop_gpu_memory_used_bytes", "GPU memory in use", labels), float(GIB)),
            "temperature_c": (_gauge("coop_gpu_temperature_celsius", "GPU temperature", labels), 1.0),
            "power_w": (_gauge("coop_gpu_power_watts", "GPU power draw", labels), 1.0),
        }
        for n in nodes:
            if not n.up:
                continue
            models = {index: model for index, model, _ in gpus[n.id]}
            for reading in n.telemetry.get("gpus") or []:
                index = reading.get("index")
                if not isinstance(index, int):
                    continue
                values = [n.name, n.member, str(index), models.get(index, "unknown")]
                for key, (family, scale) in families.items():
                    value = reading.get(key)
                    if isinstance(value, int | float):
                        family.add_metric(values, float(value) * scale)
        for family, _ in families.values():
            yield family

    def _capacity(
        self,
        nodes: list[NodeRow],
        gpus: dict[int, list[tuple[int, str, float]]],
        allocated: dict[int, set[int]],
        cores: dict[int, int],
    ) -> Iterator[Metric]:
        """Per node, for the dashboard's node table and the CPU-only capacity: what it is (``coop_node_info``),
        its GPUs and CPU cores allocated to jobs, idle (taking work) or unavailable."""
        info = _gauge(
            "coop_node_info",
            "One series per node that has not left (always 1): its state, tier and GPU model (cpu: none)",
            ["node", "member", "tier", "state", "gpu_model"],
        )
        node_gpus = _gauge(
            "coop_node_gpus", "GPUs of each node: allocated, idle or unavailable", ["node", "member", "state"]
        )
        node_cpus = _gauge(
            "coop_node_cpus",
            "CPU cores of each node: allocated to jobs, idle (taking work) or unavailable; gpu_model cpu: CPU-only",
            ["node", "member", "gpu_model", "state"],
        )
        for n in nodes:
            model = "+".join(sorted({m for _, m, _ in gpus[n.id]})) or "cpu"
            info.add_metric([n.name, n.member, n.tier, n.state, model], 1)
            held_gpus = len({i for i, _, _ in gpus[n.id]} & allocated.get(n.id, set()))
            for family, total, held, labels in (
                (node_gpus, len(gpus[n.id]), held_gpus, [n.name, n.member]),
                (node_cpus, n.cpus, min(cores.get(n.id, 0), n.cpus), [n.name, n.member, model]),
            ):
                taking = n.state == NodeState.ONLINE
                family.add_metric([*labels, "allocated"], held)
                family.add_metric([*labels, "idle"], total - held if taking else 0)
                family.add_metric([*labels, "unavailable"], 0 if taking else total - held)
        yield from (info, node_gpus, node_cpus)

    def _attempts(self, session: Session) -> Generator[Metric, None, dict[int, int]]:
        """Attempts that ended, by how and where (job outcomes over time, retries and requeues included);
        returns the attempts starting or running on each HPC pool (the same one query)."""
        ended = [s.value for s in AttemptState if s not in ACTIVE_ATTEMPT_STATES]
        counts = {(state, backend): 0 for state in ended for backend in ("ray", "slurm")}
        on_pools: dict[int, int] = defaultdict(int)
        for state, backend, pool_id, n in session.exec(
            select(Attempt.state, Attempt.backend, Attempt.pool_id, func.count()).group_by(
                col(Attempt.state), col(Attempt.backend), col(Attempt.pool_id)
            )
        ):
            if state in ended:
                counts[(state, backend)] = counts.get((state, backend), 0) + n
            elif pool_id is not None:
                on_pools[pool_id] += n
        family = CounterMetricFamily(
            "coop_attempts_ended",
            "Attempts that ended, by state (SUCCEEDED, FAILED, LOST, PREEMPTED, CANCELLED, REFUSED) and backend",
            labels=["state", "backend"],
        )
        for (state, backend), n in sorted(counts.items()):
            family.add_metric([state, backend], n)
        yield family
        return on_pools

    def _pools(self, session: Session, active: dict[int, int]) -> Iterator[Metric]:
        """HPC pools (Slurm over SSH) that are not removed: reachable or not, their machines, their jobs."""
        labels = ["pool", "member"]
        up = _gauge("coop_pool_up", "1 while the pool's last refresh reached Slurm and it takes jobs, else 0", labels)
        state = _gauge(
            "coop_pool_state",
            "1 for the pool's state: ok, unknown (not refreshed yet), unreachable, refused",
            [*labels, "state"],
        )
        machines = _gauge(
            "coop_pool_nodes", "Machines in the pool's partition: usable (taking work) or not", [*labels, "state"]
        )
        jobs = _gauge("coop_pool_jobs", "Coop's attempts starting or running on the pool", labels)
        cap = _gauge("coop_pool_max_jobs", "Most attempts Coop runs on the pool at once", labels)
        refreshed = _gauge(
            "coop_pool_last_refresh_timestamp_seconds", "When the pool was last refreshed (sinfo)", labels
        )
        states = [s.value for s in PoolState if s != PoolState.REMOVED]
        pools = session.exec(
            select(Pool, Member.name).join(Member).where(Pool.state != PoolState.REMOVED).order_by(col(Pool.name))
        )
        for pool, member in pools:
            values = [pool.name, member]
            current = pool.state if pool.state in states else PoolState.UNKNOWN
            up.add_metric(values, 1 if current == PoolState.OK and pool.enabled else 0)
            for s in states:
                state.add_metric([*values, s], 1 if s == current else 0)
            total = sum(int(c.get("nodes", 0)) for c in pool.capacity)
            usable = sum(int(c.get("usable", c.get("nodes", 0))) for c in pool.capacity)
            machines.add_metric([*values, "usable"], usable)
            machines.add_metric([*values, "unusable"], max(total - usable, 0))
            jobs.add_metric(values, active.get(pool.id or 0, 0))
            cap.add_metric(values, pool.max_jobs)
            if pool.refreshed_at is not None:
                refreshed.add_metric(values, aware(pool.refreshed_at).timestamp())
        yield from (up, state, machines, jobs, cap, refreshed)

    # --- members ---------------------------------------------------------------------------------

    def _foreign(self, session: Session, nodes: list[NodeRow]) -> Iterator[Metric]:
        """Foreign Ray work (``services/foreign_work.py``) seen in the last check, per node: the Coop
        node's name, ``head`` or ``unknown``; 0 for the head and each agent's node with none."""
        g = _gauge(
            "coop_foreign_ray_work",
            "Ray jobs, actors and task groups that Coop did not start, seen in the last check, by node",
            ["node", "member"],
        )
        counts: dict[tuple[str, str], int] = {("head", ""): 0}
        for n in nodes:
            if n.tier != "hpc":
                counts[(n.name, n.member)] = 0
        for place, node, member, count in session.exec(
            select(ForeignWork.place, Node.name, Member.name, func.count())
            .select_from(ForeignWork)
            .outerjoin(Node, col(Node.id) == ForeignWork.node_id)
            .outerjoin(Member, col(Member.id) == Node.member_id)
            .where(col(ForeignWork.gone_at).is_(None))
            .group_by(col(ForeignWork.place), col(Node.name), col(Member.name))
        ):
            key = (node, member) if node is not None else (place, "")
            counts[key] = counts.get(key, 0) + count
        for (node, member), count in sorted(counts.items()):
            g.add_metric([node, member], count)
        yield g

    def _members(self, session: Session, held: dict[int, int]) -> Iterator[Metric]:
        # One pass over the ledger, grouped kind first: a plain scan (by member it would walk the
        # member index, several times slower on SQLite). Members come from their own small table.
        sums: dict[int, dict[str, tuple[float, float]]] = defaultdict(dict)
        for kind, member_id, amount, gpu_hours in session.exec(
            select(
                LedgerEntry.kind, LedgerEntry.member_id, func.sum(LedgerEntry.amount), func.sum(LedgerEntry.gpu_hours)
            ).group_by(col(LedgerEntry.kind), col(LedgerEntry.member_id))
        ):
            sums[member_id][kind] = (float(amount or 0.0), float(gpu_hours or 0.0))
        m = ["member"]
        balance = _gauge("coop_member_balance_credits", "Credit balance (sum of the member's ledger entries)", m)
        share = _gauge("coop_member_share", "Fair-share weight", m)
        cap = _gauge("coop_member_gpu_cap", "Most GPUs the member may hold at once (capped members only)", m)
        in_use = _gauge("coop_member_gpus_in_use", "GPUs held by the member's starting or running jobs", m)
        used = CounterMetricFamily("coop_member_gpu_hours_used", "GPU-hours the member's jobs ran", labels=m)
        donated = CounterMetricFamily(
            "coop_member_gpu_hours_donated", "GPU-hours other members' jobs ran on the member's nodes", labels=m
        )
        idle = CounterMetricFamily(
            "coop_member_gpu_hours_idle", "GPU-hours the member's nodes were offered but idle", labels=m
        )
        stored = _gauge(
            "coop_member_storage_bytes", "Bytes of outputs and checkpoints the member holds in the store", m
        )
        quota = _gauge("coop_member_storage_quota_bytes", "Bytes the member may hold in the artifact store", m)
        stored_by = artifacts.usage_by_member(session)
        for member in session.exec(select(Member).order_by(col(Member.id))):
            mid, name, weight, gpu_cap = member.id, member.name, member.share, member.gpu_cap
            entries = sums.get(mid or 0, {})
            balance.add_metric([name], sum(amount for amount, _ in entries.values()))
            share.add_metric([name], float(weight))
            if gpu_cap is not None:
                cap.add_metric([name], gpu_cap)
            in_use.add_metric([name], held.get(mid or 0, 0))
            used.add_metric([name], _hours(entries, "spend", "own"))
            donated.add_metric([name], _hours(entries, "earn"))
            idle.add_metric([name], _hours(entries, "idle"))
            stored.add_metric([name], stored_by.get(mid or 0, 0))
            quota.add_metric([name], artifacts.quota_bytes(self.settings, member))
        yield from (balance, share, cap, in_use, used, donated, idle, stored, quota)


def _hours(entries: dict[str, tuple[float, float]], *kinds: str) -> float:
    return sum(entries.get(kind, (0.0, 0.0))[1] for kind in kinds)


def _epoch(value: datetime | str) -> float:
    if isinstance(value, str):  # SQLite hands back text from an aggregate over a subquery
        value = datetime.fromisoformat(value)
    return aware(value).timestamp()
