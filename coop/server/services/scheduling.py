"""The live scheduling cycle: load a snapshot of the ledger, ``decide`` (the pure policy in
``coop.scheduler.decide``, which ``coop simulate`` calls too), apply the decisions (``schedule``).
Bringing active attempts in line with their backends is ``reconcile``, run by a loop of its own.
This module only builds the policy's input from the ledger and writes its output back.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_
from sqlmodel import Session, col, select

from coop.scheduler.decide import RESERVATION_S, Decisions, Reservation, Snapshot, decide
from coop.scheduler.feasibility import GpuShape
from coop.scheduler.model import JobView, MemberView, NodeView, Policy, RunningView
from coop.scheduler.preemption import SERVICE_MARK
from coop.server.backends import Backend
from coop.server.backends.dispatch import Backends
from coop.server.backends.slurm.ssh import CommandError, SshError
from coop.server.config import Settings
from coop.server.metrics import scheduler_metrics
from coop.server.models import ArtifactSet, Attempt, Gpu, Job, Member, Node, aware, pk, ranks_of, utcnow
from coop.server.services import arrays, artifacts, attempts, ledger, pools, runs
from coop.server.services import nodes as nodes_service
from coop.server.services.lifecycle import transition
from coop.spec import JobSpec, SpecError, validate_spec
from coop.states import ACTIVE_ATTEMPT_STATES, AttemptState, JobState, NodeState

log = logging.getLogger("coop.scheduler")


def policy_from(settings: Settings) -> Policy:
    return Policy(reclaim_wait_s=settings.reclaim_wait_s, min_runtime_s=settings.min_runtime_s)


@dataclass
class Loaded:
    """A snapshot for ``decide`` and the ledger rows it was read from."""

    snapshot: Snapshot
    pending: dict[int, Job]  # readable ones; those held back after a refused launch are not in the snapshot
    specs: dict[int, JobSpec]  # of the pending jobs
    cannot_run: dict[int, tuple[Job, str]]  # pending jobs that can never run (unreadable spec, inputs gone): why
    for_inputs: dict[int, str]  # pending jobs left out of the snapshot (waiting for inputs, past max_parallel): why


def load(
    session: Session, settings: Settings, now: datetime, consumer: bool = True, tally: ledger.LedgerTally | None = None
) -> Loaded:
    """The ledger as ``decide`` sees it. Per-job isolation: a pending job whose stored spec no longer
    validates is left out (and listed, to be failed with the reason). ``consumer=False``: leave donated
    nodes out (no Ray to run jobs on them). ``tally``: the scheduler's running usage and balances
    (without it, both are summed from the whole ledger)."""
    active = attempts.active(session)
    pending_rows = list(session.exec(select(Job).where(Job.state == JobState.PENDING)))
    served = _service_so_far(
        session, [pk(j) for j in pending_rows if j.attempts] + [a.job_id for a, _ in active if a.number > 1]
    )
    checkpoints = _checkpoint_times(session, [a for a, _ in active])
    used_gpus: dict[int, set[int]] = defaultdict(set)
    used_cpus: dict[int, int] = defaultdict(int)
    used_mem: dict[int, float] = defaultdict(float)
    held: dict[int, int] = defaultdict(int)
    running = []
    for attempt, job in active:
        spec = runs.stored_spec(job)  # None: it no longer validates; it runs on without memory or limit
        memory = (spec.resources.memory_gb or 0.0) if spec else 0.0
        ranks = ranks_of(attempt)
        for node_id, indices in ranks:  # one view per rank of a gang
            node_id = node_id or 0
            used_gpus[node_id].update(indices)
            used_cpus[node_id] += attempt.cpus
            used_mem[node_id] += memory
            running.append(
                RunningView(
                    job_id=pk(job),
                    member_id=job.member_id,
                    node_id=node_id,
                    gpus=len(indices),
                    preemptible=job.preemptible,
                    started_at=aware(attempt.running_at or attempt.started_at).timestamp(),
                    gpu_indices=tuple(indices),
                    cpus=attempt.cpus,
                    memory_gb=memory,
                    stopping=attempt.stop_requested is not None,
                    attained_gpu_s=served.get(pk(job), (0.0, 0))[0],
                    checkpoint_at=checkpoints.get(pk(job)),
                    max_runtime_s=spec.max_runtime_s if spec else None,
                    service_stops=served.get(pk(job), (0.0, 0))[1],
                    submitted_at=aware(job.submitted_at).timestamp(),
                    nodes=len(ranks),
                )
            )
        held[job.member_id] += sum(len(indices) for _, indices in ranks)
    gpus: dict[int, list[Gpu]] = defaultdict(list)
    for g in session.exec(select(Gpu).order_by(col(Gpu.index))):
        gpus[g.node_id].append(g)
    nodes = []
    caps = pools.caps(session)
    machines = pools.machines(session)
    kinds = [col(Node.pool_id).is_not(None)] + ([col(Node.tier) == "consumer"] if consumer else [])
    for n in session.exec(select(Node).where(Node.state != NodeState.LEFT, or_(*kinds))):
        assert n.id is not None
        node_gpus = gpus[n.id]
        free_gpus = {i for i in range(len(node_gpus))} - used_gpus[n.id]
        free_cpus, free_mem = n.cpus - used_cpus[n.id], n.memory_gb - used_mem[n.id]
        if n.pool_id is not None:  # a pool's node class: Slurm picks the node, Coop only caps the jobs it sends
            has_room = n.pool_id in caps and caps[n.pool_id].free > 0
            free_gpus = set(range(len(node_gpus))) if has_room else set()
            free_cpus, free_mem = (n.cpus, n.memory_gb) if has_room else (0, 0.0)
        nodes.append(
            NodeView(
                id=n.id,
                name=n.name,
                member_id=n.member_id,
                tier=n.tier,
                cpus=n.cpus,
                memory_gb=n.memory_gb,
                gpus=tuple(GpuShape(g.model, g.memory_gb, g.compute_capability) for g in node_gpus),
                free_gpus=free_gpus,
                free_cpus=free_cpus,
                free_memory_gb=free_mem,
                online=n.state == NodeState.ONLINE,
                paused=n.paused,
                draining=n.draining,
                reclaim=n.reclaim,
                reclaim_reason=nodes_service.reclaim_reason(n, names=False),  # guests read it: no process names
                tflops_per_gpu=n.tflops_per_gpu,
                approved=n.approved,
                pool_id=n.pool_id,
                network=n.network,
                machines=machines.get(n.id, 1),
            )
        )
    totals = (tally or ledger.LedgerTally(settings.fair_share_half_life_h)).read(session, now)
    usage, balances = totals.usage, totals.balances
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
    pending, specs, cannot_run = {}, {}, {}
    shared: dict[int, JobSpec] = {}  # an array's tasks store one spec: validated once
    for j in pending_rows:
        try:
            if j.array_id is None:
                specs[pk(j)] = validate_spec(j.spec)
            else:
                specs[pk(j)] = shared.get(j.array_id) or shared.setdefault(j.array_id, validate_spec(j.spec))
            pending[pk(j)] = j
        except SpecError as exc:  # one bad row fails its own job, not the cycle
            cannot_run[pk(j)] = (j, runs.unreadable(exc))
    wanted = {job_id: [int(i.job) for i in spec.inputs] for job_id, spec in specs.items() if spec.inputs}
    for_inputs, never = artifacts.inputs_state(session, wanted)
    for job_id, reason in never.items():
        cannot_run[job_id] = (pending.pop(job_id), reason)
    backing_off = _refused_recently(session, pending, now)
    waiting = {job_id: j for job_id, j in pending.items() if job_id not in backing_off and job_id not in for_inputs}
    for_inputs.update(arrays.held_back(session, waiting, [job for _, job in active]))  # past max_parallel
    jobs = [
        JobView(
            id=job_id,
            member_id=j.member_id,
            # inputs reach donated nodes only (Slurm jobs cannot fetch them yet): tier any means consumer
            resources=specs[job_id].resources.model_copy(update={"tier": "consumer"})
            if specs[job_id].inputs
            else specs[job_id].resources,
            priority=j.priority,
            submitted_at=aware(j.submitted_at).timestamp(),
            preemptible=j.preemptible,
            max_runtime_s=specs[job_id].max_runtime_s,
            attained_gpu_s=served.get(job_id, (0.0, 0))[0],
            service_stops=served.get(job_id, (0.0, 0))[1],
        )
        for job_id, j in pending.items()
        if job_id not in backing_off and job_id not in for_inputs
    ]
    reservations = _reservations(session, pending, now)
    snap = Snapshot(jobs, nodes, members, running, policy_from(settings), now.timestamp(), reservations, caps)
    return Loaded(snap, pending, specs, cannot_run, for_inputs)


def _service_so_far(session: Session, job_ids: list[int]) -> dict[int, tuple[float, int]]:
    """Per job, the GPU-seconds its ended attempts ran and how often one was stopped for service order
    (least attained service reads both). Only jobs that ran before: most waiting jobs never did."""
    out: dict[int, tuple[float, int]] = {}
    if not job_ids:
        return out
    ended = session.exec(select(Attempt).where(col(Attempt.job_id).in_(job_ids), col(Attempt.finished_at).is_not(None)))
    for a in ended:
        gpu_s, stops = out.get(a.job_id, (0.0, 0))
        if a.running_at is not None and a.finished_at is not None:
            ran_s = max(0.0, (aware(a.finished_at) - aware(a.running_at)).total_seconds())
            gpu_s += ran_s * sum(len(indices) for _, indices in ranks_of(a))
        if a.state == AttemptState.PREEMPTED and SERVICE_MARK in (a.reason or ""):
            stops += 1
        out[a.job_id] = (gpu_s, stops)
    return out


def _checkpoint_times(session: Session, active: list[Attempt]) -> dict[int, float]:
    """Per running job, when its current attempt last completed a checkpoint set (what a service
    preemption would lose is the work since then)."""
    if not active:
        return {}
    current = {a.job_id: a.number for a in active}
    rows = session.exec(
        select(ArtifactSet.job_id, ArtifactSet.attempt, ArtifactSet.completed_at).where(
            col(ArtifactSet.job_id).in_(list(current)), ArtifactSet.kind == "checkpoint", col(ArtifactSet.complete)
        )
    ).all()
    out: dict[int, float] = {}
    for job_id, attempt, completed_at in rows:
        if attempt == current[job_id] and completed_at is not None:
            out[job_id] = max(out.get(job_id, 0.0), aware(completed_at).timestamp())
    return out


def _refused_recently(session: Session, pending: dict[int, Job], now: datetime) -> set[int]:
    """Waiting jobs whose last launch Ray refused, still within their wait before the next try
    (``attempts.refusal_backoff_s``; a pool that refuses is taken offline instead)."""
    since = now - timedelta(seconds=attempts.MAX_REFUSAL_BACKOFF_S)
    rows = session.exec(  # the few refusals of the last minutes, not every pending job's attempts
        select(Attempt.job_id, Attempt.number, Attempt.finished_at)
        .where(Attempt.state == AttemptState.REFUSED, col(Attempt.pool_id).is_(None))
        .where(col(Attempt.finished_at) >= since)
    ).all()
    last = {job_id: at for job_id, number, at in rows if job_id in pending and number == pending[job_id].attempts}
    if not last:
        return set()
    counts = attempts.refusals(session, list(last))
    return {
        job_id
        for job_id, at in last.items()
        if at is not None and now < aware(at) + timedelta(seconds=attempts.refusal_backoff_s(counts.get(job_id, 1)))
    }


def _reservations(session: Session, pending: dict[int, Job], now: datetime) -> list[Reservation]:
    """Rooms that preemptions made for jobs still waiting: each is kept from the decision until
    ``RESERVATION_S`` after its victim stopped (``decide`` drops those past it)."""
    since = now - timedelta(seconds=RESERVATION_S)
    rows = session.exec(  # a handful of recent preemptions: filtered here, not by a list of every pending job
        select(Attempt.preempted_for, Attempt.node_id, Attempt.finished_at)
        .where(col(Attempt.preempted_for).is_not(None), col(Attempt.node_id).is_not(None))
        .where(or_(col(Attempt.finished_at).is_(None), col(Attempt.finished_at) >= since))
        .order_by(col(Attempt.id))
    )
    return [
        Reservation(job_id, node_id, math.inf if ended is None else aware(ended).timestamp() + RESERVATION_S)
        for job_id, node_id, ended in rows
        if job_id in pending and node_id is not None
    ]


def cycle(
    session: Session,
    settings: Settings,
    backend: Backend | Backends,
    now: datetime | None = None,
    tally: ledger.LedgerTally | None = None,
) -> Decisions:
    """One pass of both loops, in order: reconcile every active attempt, then schedule (tests and
    one-shot callers; the coordinator runs them as ``loops.ReconcileLoop`` and ``loops.SchedulerLoop``).
    ``backend``: the Ray backend alone, or every backend (Ray, if any, and the pools')."""
    backends = Backends.of(backend)
    down = reconcile(session, settings, backends).down
    return schedule(session, settings, backends, now, tally, down)


def schedule(
    session: Session,
    settings: Settings,
    backend: Backend | Backends,
    now: datetime | None = None,
    tally: ledger.LedgerTally | None = None,
    down: Mapping[str, str] | None = None,
    launching: set[int] | None = None,
    holds: Mapping[int, int] | None = None,
) -> Decisions:
    """Load a snapshot, ``decide``, apply: start the placed jobs, record why the others wait, stop the
    preempted ones. ``tally``: usage and balances the caller keeps between cycles (``SchedulerLoop``
    does), and ``holds``, the last cycle's ``decisions.holds`` (wide job -> node; kept in memory only:
    after a restart a wide job picks its node again). ``down``: backends found unreachable (by
    ``reconcile``), whose nodes take no job now. ``launching``: job ids being launched now, shared with
    the reconcile loop (see ``reconcile``).

    No single fault stops the cycle for others: a job whose stored spec no longer validates fails
    alone; a backend that errors holds up only its own placements and preemptions for this cycle."""
    started = time.perf_counter()
    metrics = scheduler_metrics(session.get_bind().engine)
    now = now or utcnow()
    backends = Backends.of(backend)
    backends.refresh(session)
    down = dict(down or {})
    loaded = load(session, settings, now, consumer=backends.ray is not None, tally=tally)
    loaded.snapshot.holds = dict(holds or {})
    _fail_cannot_run(session, loaded)
    nodes_by_id = {n.id: n for n in session.exec(select(Node))}
    _hold_down(loaded.snapshot, nodes_by_id, down)
    decisions = decide(loaded.snapshot)
    decisions.waiting.update(loaded.for_inputs)
    if backends.ray is None:
        _explain_no_ray(decisions, loaded.specs, nodes_by_id.values())
    _explain_down(decisions, loaded, down)
    metrics.members(loaded.snapshot.members)
    metrics.placed(session, _launch(session, settings, backends, loaded, decisions, nodes_by_id, down, launching), now)
    _record_reasons(session, loaded, decisions)
    _preempt(session, backends, loaded.snapshot, decisions, down)
    metrics.cycle_done(time.perf_counter() - started)
    return decisions


RAY = "Ray"


def _backend_of(pool_id: int | None) -> str:
    """The key of a backend in ``down``: its attempts and nodes share its fate within one cycle."""
    return RAY if pool_id is None else f"pool {pool_id}"


def _unreachable(exc: Exception) -> bool:
    """An error that says the backend itself cannot be reached (not one about a single attempt)."""
    return isinstance(exc, OSError) or (isinstance(exc, SshError) and not isinstance(exc, CommandError))


@dataclass
class Reconciled:
    down: dict[str, str]  # backends found unreachable (key -> error): their remaining attempts wait
    ended: int  # attempts that ended in this pass: room for the scheduler
    starting: bool  # a Ray attempt is still starting: look again soon


def reconcile(
    session: Session, settings: Settings, backend: Backend | Backends, launching: Collection[int] = ()
) -> Reconciled:
    """Bring every active attempt in line with its backend (``runs.reconcile``). A backend that cannot
    be reached holds up its own remaining attempts until the next pass; any other error holds up only
    its own attempt. ``launching``: jobs the scheduler is launching right now: their committed attempt
    may not have reached its backend yet, and must not be taken for one whose coordinator died before
    submitting it (which this pass submits again)."""
    backends = Backends.of(backend)
    backends.refresh(session)
    nodes_by_id = {n.id: n for n in session.exec(select(Node))}
    passed = Reconciled({}, 0, False)
    for attempt, job in attempts.active(session):
        runner = backends.for_attempt(attempt)
        key = _backend_of(attempt.pool_id)
        if runner is None or key in passed.down or job.id in launching:  # no runner: Ray attempts without Ray
            continue
        try:
            runs.reconcile(session, settings, runner, attempt, job, _worst_node(attempt, nodes_by_id))
        except Exception as exc:
            session.rollback()
            log.warning("attempt %s (%s): %s", attempt.backend_ref, key, runs.short_error(exc))
            if _unreachable(exc):
                passed.down[key] = runs.short_error(exc)
            continue
        if attempt.state not in ACTIVE_ATTEMPT_STATES:
            passed.ended += 1
        elif attempt.state == AttemptState.STARTING and attempt.pool_id is None:
            passed.starting = True
    return passed


def _worst_node(attempt: Attempt, nodes_by_id: Mapping[int | None, Node]) -> Node | None:
    """The node of the attempt to judge it by: a gang's first rank whose node is gone or not online (a
    lost rank loses the gang), else its rank 0's."""
    for node_id, _ in ranks_of(attempt):
        node = nodes_by_id.get(node_id)
        if node is None or node.state != NodeState.ONLINE:
            return node
    return nodes_by_id.get(attempt.node_id)


def _fail_cannot_run(session: Session, loaded: Loaded) -> None:
    """Pending jobs that can never run (a stored spec that no longer validates, an input job that ended
    without outputs) fail, saying why."""
    for job, reason in loaded.cannot_run.values():
        log.warning("job %s: %s", job.id, reason)
        transition(session, job, JobState.FAILED, reason, job.attempts or None)
    if loaded.cannot_run:
        session.commit()


def _hold_down(snap: Snapshot, nodes_by_id: dict[int | None, Node], down: Mapping[str, str]) -> None:
    """Nodes of a backend that could not be reached take no job this cycle (placement sees them offline)."""
    for view in snap.nodes:
        node = nodes_by_id.get(view.id)
        if node is not None and _backend_of(node.pool_id) in down:
            view.online = False


def _explain_down(decisions: Decisions, loaded: Loaded, down: Mapping[str, str]) -> None:
    """Say which backend is not answering to the waiting jobs it could have run."""
    if not down:
        return
    for job_id, reason in decisions.waiting.items():
        tier = loaded.specs[job_id].resources.tier
        notes = [f"{key} is not answering ({error})" for key, error in down.items()
                 if tier == "any" or (tier == "hpc") == (key != RAY)]  # fmt: skip
        if notes:
            decisions.waiting[job_id] = f"{reason}; {'; '.join(notes)}"


def _launch(
    session: Session,
    settings: Settings,
    backends: Backends,
    loaded: Loaded,
    decisions: Decisions,
    nodes_by_id: dict[int | None, Node],
    down: dict[str, str],
    launching: set[int] | None,
) -> list[Job]:
    """Start the placed jobs; returns those started. Each attempt is committed before its backend is
    asked to run it (so a crash between the two loses nothing: ``reconcile`` submits it again), which
    makes each placement its own transaction. After a backend refuses one for being unreachable, the
    rest of its placements wait for the next cycle instead of each trying (and timing out) in turn."""
    started = []
    launching = set() if launching is None else launching
    for p in decisions.placements:
        job = loaded.pending[p.job_id]
        node = nodes_by_id.get(p.node_id) or session.get(Node, p.node_id)  # or registered since the cycle began
        runner = backends.for_node(node) if node is not None else None
        assert node is not None and runner is not None  # only nodes with a backend are in the snapshot
        key = _backend_of(node.pool_id)
        if key in down:
            decisions.waiting[p.job_id] = f"waiting: {key} is not answering ({down[key]}); trying again next cycle"
            continue
        res = loaded.specs[p.job_id].resources
        launching.add(p.job_id)
        try:
            ranks = [(node_id, list(indices)) for node_id, indices in p.parts]
            attempt = attempts.start(session, job, p.node_id, list(p.gpu_indices), res.cpus, runner.name,
                                     settings.instance, node.pool_id, ranks, res.nodes)  # fmt: skip
            refused = runs.submit(session, settings, runner, job, attempt)
        finally:
            launching.discard(p.job_id)
        if refused is None:
            started.append(job)
        elif _unreachable(refused):
            down[key] = runs.short_error(refused)
    return started


def _record_reasons(session: Session, loaded: Loaded, decisions: Decisions) -> None:
    """Why each job still waits, as one transaction."""
    for job_id, reason in decisions.waiting.items():
        job = loaded.pending[job_id]
        if job.reason != reason and job.state == JobState.PENDING:
            job.reason = reason
            session.add(job)
    session.commit()


def _preempt(
    session: Session, backends: Backends, snap: Snapshot, decisions: Decisions, down: Mapping[str, str]
) -> None:
    """Stop the jobs ``decide`` preempted (each stop is recorded before the backend is told)."""
    if not decisions.preemptions or RAY in down:  # only Ray attempts are preempted: nothing can be stopped now
        return
    metrics = scheduler_metrics(session.get_bind().engine)
    running = {job.id: attempt for attempt, job in attempts.active(session)}
    for pre in decisions.preemptions:
        victim = running.get(pre.job_id)
        runner = backends.for_attempt(victim) if victim is not None else None
        if victim is None or victim.stop_requested is not None or runner is None:
            continue
        log.info("preempting job %s on node %s: %s", pre.job_id, pre.node_id, pre.reason)
        try:
            runs.stop(session, runner, victim, "preempt", pre.reason, pre.for_job_id)
        except Exception as exc:  # the next cycle decides again
            log.warning("could not preempt job %s: %s", pre.job_id, runs.short_error(exc))
            if _unreachable(exc):
                return
            continue
        metrics.preempted(pre, snap.nodes)


def _explain_no_ray(decisions: Decisions, specs: Mapping[int, JobSpec], nodes: Iterable[Node]) -> None:
    """Without Ray, donated nodes cannot run anything: say so to the jobs that could use them."""
    if not any(n.pool_id is None and n.tier == "consumer" and n.state != NodeState.LEFT for n in nodes):
        return
    note = "donated nodes cannot run jobs here: this coordinator has no Ray cluster (COOP_RAY_DASHBOARD_URL)"
    for job_id, reason in decisions.waiting.items():
        tier = specs[job_id].resources.tier
        if tier == "consumer":  # placement never saw the donated nodes: its reason would mislead
            decisions.waiting[job_id] = f"waiting: {note}"
        elif tier == "any":
            decisions.waiting[job_id] = f"{reason}; {note}"
