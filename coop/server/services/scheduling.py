"""One scheduler cycle: reconcile running attempts, place pending jobs, apply preemptions.

The decisions come from the pure functions in ``coop.server.scheduler``; this module only builds
their input from the ledger and writes their output back.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from coop.server.backends import Backend
from coop.server.config import Settings
from coop.server.models import Gpu, Job, Member, Node, aware, pk, utcnow
from coop.server.scheduler.feasibility import GpuShape
from coop.server.scheduler.model import CycleResult, JobView, MemberView, NodeView, Policy, RunningView
from coop.server.scheduler.placement import place
from coop.server.scheduler.preemption import preemptions
from coop.server.services import accounts, attempts, ledger, runs
from coop.spec import validate_spec

log = logging.getLogger("coop.scheduler")


def policy_from(settings: Settings) -> Policy:
    return Policy(reclaim_wait_s=settings.reclaim_wait_s, min_runtime_s=settings.min_runtime_s)


@dataclass
class Snapshot:
    jobs: list[JobView]
    nodes: list[NodeView]
    members: list[MemberView]
    running: list[RunningView]
    pending: dict[int, Job]


def snapshot(session: Session, settings: Settings, now: datetime) -> Snapshot:
    active = attempts.active(session)
    used_gpus: dict[int, set[int]] = defaultdict(set)
    used_cpus: dict[int, int] = defaultdict(int)
    used_mem: dict[int, float] = defaultdict(float)
    held: dict[int, int] = defaultdict(int)
    running = []
    for attempt, job in active:
        node_id = attempt.node_id or 0
        used_gpus[node_id].update(attempt.gpu_indices)
        used_cpus[node_id] += attempt.cpus
        memory = validate_spec(job.spec).resources.memory_gb or 0.0
        used_mem[node_id] += memory
        held[job.member_id] += len(attempt.gpu_indices)
        running.append(
            RunningView(
                job_id=pk(job),
                member_id=job.member_id,
                node_id=node_id,
                gpus=len(attempt.gpu_indices),
                preemptible=job.preemptible,
                started_at=aware(attempt.running_at or attempt.started_at).timestamp(),
                gpu_indices=tuple(attempt.gpu_indices),
                cpus=attempt.cpus,
                memory_gb=memory,
                stopping=attempt.stop_requested is not None,
            )
        )
    gpus: dict[int, list[Gpu]] = defaultdict(list)
    for g in session.exec(select(Gpu).order_by(col(Gpu.index))):
        gpus[g.node_id].append(g)
    nodes = []
    for n in session.exec(select(Node).where(Node.state != "left", Node.tier == "consumer")):
        assert n.id is not None
        node_gpus = gpus[n.id]
        nodes.append(
            NodeView(
                id=n.id,
                name=n.name,
                member_id=n.member_id,
                tier=n.tier,
                cpus=n.cpus,
                memory_gb=n.memory_gb,
                gpus=tuple(GpuShape(g.model, g.memory_gb, g.compute_capability) for g in node_gpus),
                free_gpus={i for i in range(len(node_gpus))} - used_gpus[n.id],
                free_cpus=n.cpus - used_cpus[n.id],
                free_memory_gb=n.memory_gb - used_mem[n.id],
                online=n.state == "online",
                paused=n.paused,
                draining=n.draining,
                reclaim=n.reclaim,
                reclaim_reason=n.reclaim_reason,
                tflops_per_gpu=n.tflops_per_gpu,
            )
        )
    usage = ledger.usage_gpu_hours(session, settings.fair_share_half_life_h, now)
    balances = accounts.balances(session)
    members = [
        MemberView(
            id=pk(m),
            share=m.share,
            gpu_cap=m.gpu_cap,
            gpus_in_use=held[pk(m)],
            usage_gpu_hours=usage.get(pk(m), 0.0),
            balance=balances.get(pk(m), 0.0),
            name=m.name,
        )
        for m in session.exec(select(Member))
    ]
    pending = {pk(j): j for j in session.exec(select(Job).where(Job.state == "PENDING"))}
    jobs = [
        JobView(
            id=pk(j),
            member_id=j.member_id,
            resources=validate_spec(j.spec).resources,
            priority=j.priority,
            submitted_at=aware(j.submitted_at).timestamp(),
            preemptible=j.preemptible,
        )
        for j in pending.values()
    ]
    return Snapshot(jobs, nodes, members, running, pending)  # type: ignore[arg-type]


def cycle(session: Session, settings: Settings, backend: Backend, now: datetime | None = None) -> CycleResult:
    now = now or utcnow()
    nodes_by_id = {n.id: n for n in session.exec(select(Node))}
    for attempt, job in attempts.active(session):
        runs.reconcile(session, settings, backend, attempt, job, nodes_by_id.get(attempt.node_id))
    snap = snapshot(session, settings, now)
    policy = policy_from(settings)
    result = place(snap.jobs, snap.nodes, snap.members, policy, now.timestamp())
    for p in result.placements:
        job = snap.pending[p.job_id]
        cpus = validate_spec(job.spec).resources.cpus
        attempt = attempts.start(session, job, p.node_id, list(p.gpu_indices), cpus, backend.name, settings.instance)
        runs.submit(session, settings, backend, job, attempt)
    for job_id, reason in result.waiting.items():
        job = snap.pending[job_id]
        if job.reason != reason:
            job.reason = reason
            session.add(job)
    session.commit()
    decided = preemptions(snap.running, snap.jobs, snap.nodes, snap.members, policy, now.timestamp())
    if decided:
        running = {job.id: attempt for attempt, job in attempts.active(session)}
        for pre in decided:
            victim = running.get(pre.job_id)
            if victim is not None and victim.stop_requested is None:
                log.info("preempting job %s on node %s: %s", pre.job_id, pre.node_id, pre.reason)
                attempts.request_stop(session, victim, "preempt", pre.reason)
                backend.stop(victim.backend_ref or "")
    return result
