"""The one entry point of the scheduling policy: ``decide(snapshot) -> Decisions``.

The live coordinator (``coop.server.services.scheduling``) builds a ``Snapshot`` from the ledger each
cycle and applies the ``Decisions``; ``coop simulate`` (``coop.sim.engine``) builds one from its model
of the cluster and applies them to that. Both call exactly this function, so what the simulator
reports is what the coordinator would have done.

One call decides, in this order:

1. **placements**: the waiting jobs that go now, and where (``placement.place``: a reserved room goes
   to its job first, then a donor's own jobs on its own free nodes, then everyone in fair-share order
   (within a member, least attained service first), best fit first, backfilling past jobs that do not
   fit, except onto GPUs held for a wide job that waited long);
2. **pool caps**: placements past an HPC pool's ``max_jobs`` wait, saying so;
3. **preemptions**, on the cluster as it is once those placements run: guests on nodes their owners
   want back, guests in the way of a donor's own waiting jobs, balance reclaims, and jobs that ran
   long making way for jobs with less service (``preemption.preemptions``); only jobs on donated nodes
   are stopped (a pool's jobs are Slurm's);
4. **reservations**: the rooms those preemptions make are kept for the jobs they were made for, for
   ``RESERVATION_S``; the ones still in force come back, expired ones and those whose job just went
   are dropped.

Every waiting job gets a reason a user understands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from coop.scheduler.model import (
    Hold,
    JobView,
    MemberView,
    NodeView,
    Placement,
    Policy,
    Preemption,
    RunningView,
)
from coop.scheduler.placement import place
from coop.scheduler.preemption import preemptions

RESERVATION_S = 900.0  # a room made by preemption stays its job's this long after the victim stopped


@dataclass(frozen=True)
class Reservation:
    """Room a preemption made on ``node_id`` for the waiting job ``job_id``: that job takes it first."""

    job_id: int
    node_id: int
    until: float = math.inf  # epoch seconds; infinite while the job stopped for it has not yet ended


@dataclass(frozen=True)
class PoolCap:
    """An HPC pool's cap on Coop jobs: its node classes are the nodes whose ``pool_id`` is this pool."""

    name: str
    max_jobs: int
    free: int  # how many more jobs it may take now (its cap less its active attempts)


@dataclass
class Snapshot:
    """Everything the policy decides on, read at one moment (``now``, epoch seconds)."""

    jobs: list[JobView]  # the waiting jobs it may decide on
    nodes: list[NodeView]
    members: list[MemberView]
    running: list[RunningView]
    policy: Policy
    now: float
    reservations: list[Reservation] = field(default_factory=list)
    pools: Mapping[int, PoolCap] = field(default_factory=dict)  # pool id -> its cap
    holds: Mapping[int, int] = field(default_factory=dict)  # wide job id -> the node it held last cycle
    # None: the whole cycle (the coordinator). The simulator asks for each half in a call of its own,
    # "placements" then "preemptions" once it has started them, so that it can offer each call only the
    # jobs and nodes that half could use (checked exact by its tests)
    only: Literal["placements", "preemptions"] | None = None


@dataclass
class Decisions:
    placements: list[Placement] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it waits, for its owner
    # in force after these decisions: the snapshot's still in force, then those its preemptions make
    reservations: list[Reservation] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # nodes kept for wide jobs that waited long


def decide(snap: Snapshot) -> Decisions:
    """Placements, pool caps, preemptions and reservations for one cycle (see the module's doc)."""
    now = snap.now
    kept = [r for r in snap.reservations if r.until > now]
    decisions = Decisions()
    if snap.only != "preemptions":
        reserved = {r.job_id: r.node_id for r in kept}
        result = place(snap.jobs, snap.nodes, snap.members, snap.policy, now, reserved, snap.running, snap.holds)
        decisions = Decisions(result.placements, [], result.waiting, holds=result.holds)
        _cap_pools(decisions, snap)
    if snap.only != "placements":
        after = after_placements(snap, decisions.placements)
        pooled = {n.id for n in snap.nodes if n.pool_id is not None}  # a pool's jobs are Slurm's to stop
        donated = [r for r in after.running if r.node_id not in pooled]
        held = (
            {h.node_id: h.job_id for h in decisions.holds}
            if snap.only is None
            else {node_id: job_id for job_id, node_id in snap.holds.items()}
        )
        decisions.preemptions = preemptions(donated, after.jobs, after.nodes, after.members, snap.policy, now, held)
    placed = {p.job_id for p in decisions.placements}
    decisions.reservations = [r for r in kept if r.job_id not in placed] + [
        Reservation(p.for_job_id, p.node_id, now + RESERVATION_S)
        for p in decisions.preemptions
        if p.for_job_id is not None
    ]
    return decisions


def _cap_pools(decisions: Decisions, snap: Snapshot) -> None:
    """At most ``max_jobs`` Coop jobs in a pool at once: placements past its cap wait for a later cycle
    (where another node may take them), in the order placement chose them."""
    if not snap.pools:
        return
    pool_of = {n.id: n.pool_id for n in snap.nodes if n.pool_id is not None}
    free = {pool_id: cap.free for pool_id, cap in snap.pools.items()}
    kept = []
    for p in decisions.placements:
        pool_id = pool_of.get(p.node_id)
        if pool_id is None:
            kept.append(p)
        elif free.get(pool_id, 0) > 0:
            free[pool_id] -= 1
            kept.append(p)
        else:
            cap = snap.pools[pool_id]
            decisions.waiting[p.job_id] = f"waiting: pool {cap.name} already runs its cap of {cap.max_jobs} jobs"
    decisions.placements = kept


def after_placements(snap: Snapshot, placements: list[Placement]) -> Snapshot:
    """The snapshot as ``placements`` leave it: the placed jobs running where they were placed (with the
    room they take), no longer waiting, and counted in their members' GPUs. A copy: ``snap`` is the
    caller's and stays as it was."""
    if not placements:
        return snap
    jobs = {j.id: j for j in snap.jobs}
    nodes = {n.id: n for n in snap.nodes}
    running = list(snap.running)
    held: dict[int, int] = {}
    for p in placements:
        job = jobs.pop(p.job_id)
        res = job.resources
        for node_id, indices in p.parts:  # a gang: one running view per rank
            node = nodes[node_id]
            nodes[node_id] = replace(
                node,
                free_gpus=node.free_gpus - set(indices),
                free_cpus=node.free_cpus - res.cpus,
                free_memory_gb=node.free_memory_gb - (res.memory_gb or 0.0),
            )
            running.append(
                RunningView(job.id, job.member_id, node_id, len(indices), job.preemptible, snap.now,
                            indices, res.cpus, res.memory_gb or 0.0, attained_gpu_s=job.attained_gpu_s,
                            max_runtime_s=job.max_runtime_s, service_stops=job.service_stops,
                            submitted_at=job.submitted_at, nodes=res.nodes)
            )  # fmt: skip
        held[job.member_id] = held.get(job.member_id, 0) + res.total_gpus
    members = [replace(m, gpus_in_use=m.gpus_in_use + held[m.id]) if m.id in held else m for m in snap.members]
    return replace(snap, jobs=list(jobs.values()), nodes=list(nodes.values()), members=members, running=running)
