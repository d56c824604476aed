"""The credit ledger: append-only entries; a balance is their sum.

One credit is one hour of 100 measured TFLOP/s. For every slice of run time, the job's member
spends and the donor earns the same amount (``spend`` + ``earn`` sum to zero); a donor's own job
on its own node is recorded as ``own`` (zero credits, its GPU-hours kept); idle donated capacity
earns ``idle`` credit at a lower rate. Accrual is derived from the entries themselves (each slice
starts where the attempt's or node's last entry ended), so a restart neither skips nor repeats.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from coop.scheduler.credits import USAGE_KINDS, credits, decay, idle_credits, run_entries, run_tflops
from coop.server.models import LEDGER_BOUND, Attempt, Gpu, Job, LedgerEntry, Member, Node, aware, pk, ranks_of, utcnow
from coop.states import ACTIVE_ATTEMPT_STATES, NodeState

GRANT = "grant"  # the one kind written outside the leader's accrual (by any API worker)
log = logging.getLogger("coop.ledger")


def bounded(value: float, what: str) -> float:
    """An accrued amount the ledger's check constraints accept: a node registered before the API
    bounded TFLOP/s, or a clock gone wild, must not make one insert, and with it the whole accrual
    (every member's credit), fail. NaN becomes 0; anything beyond the bound is clamped to it."""
    if math.isfinite(value) and abs(value) <= LEDGER_BOUND:
        return value
    log.warning(
        "ledger: %s of %r is out of bounds; recorded as %s", what, value, "0" if math.isnan(value) else "the bound"
    )
    return 0.0 if math.isnan(value) else math.copysign(LEDGER_BOUND, value)


def balance(session: Session, member_id: int) -> float:
    total = session.exec(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.member_id == member_id)).one()
    return float(total or 0.0)


def history(session: Session, member_id: int, limit: int = 200) -> list[LedgerEntry]:
    query = (
        select(LedgerEntry).where(LedgerEntry.member_id == member_id).order_by(col(LedgerEntry.id).desc()).limit(limit)
    )
    return list(session.exec(query))


def by_job(session: Session, member_id: int) -> list[tuple[int | None, str | None, str, float, float, int]]:
    """(job id, job name, kind, credits, GPU-hours, entries) per job and kind, jobs in order; the rows
    no job owns (grants, idle credit) first."""
    query = (
        select(  # type: ignore[call-overload]  # sqlmodel types select() for at most 4 columns
            LedgerEntry.job_id,
            Job.name,
            LedgerEntry.kind,
            func.sum(LedgerEntry.amount),
            func.sum(LedgerEntry.gpu_hours),
            func.count(),
        )
        .outerjoin(Job, col(Job.id) == LedgerEntry.job_id)
        .where(LedgerEntry.member_id == member_id)
        .group_by(col(LedgerEntry.job_id), col(Job.name), col(LedgerEntry.kind))
        .order_by(col(LedgerEntry.job_id).nulls_first(), col(LedgerEntry.kind))
    )
    return [
        (job, name, kind, float(amount), float(hours), int(n))
        for job, name, kind, amount, hours, n in session.exec(query)
    ]


def grant(session: Session, member_id: int, amount: float, note: str) -> LedgerEntry:
    """``amount`` is bounded by the API (GrantCreate), far inside the table's check constraint."""
    entry = LedgerEntry(member_id=member_id, amount=amount, kind=GRANT, note=note)
    session.add(entry)
    session.commit()
    return entry


@dataclass
class Totals:
    usage: dict[int, float]  # member -> decayed credit-weighted usage: what fair share orders by
    balances: dict[int, float]  # member -> balance


class LedgerTally:
    """Per member, decayed usage and balance, kept between scheduler cycles so that a cycle does not
    re-read the whole ledger (it grows by a few rows per running job every ledger interval).

    Rows past the last id seen are read once: usage decays as a whole (``total(t) = total(t0) x
    decay(t - t0)``). That is exact for the rows the leader's accrual writes, one transaction at a
    time, so their ids commit in order. Grants come from any API worker and can commit out of id
    order, so their sum is read whole every time, through the kind index: they are few.
    """

    def __init__(self, half_life_h: float) -> None:
        self.half_life_h = half_life_h
        self.last_id = 0
        self.at: float | None = None
        self.usage: dict[int, float] = {}
        self.accrued: dict[int, float] = {}  # balance from accrual rows (all but grants)

    def read(self, session: Session, now: datetime | None = None) -> Totals:
        t = (now or utcnow()).timestamp()
        if self.at is not None:
            factor = decay(t - self.at, self.half_life_h)
            self.usage = {m: v * factor for m, v in self.usage.items()}
        rows = session.exec(
            select(  # type: ignore[call-overload]  # sqlmodel types select() for at most 4 columns
                LedgerEntry.id, LedgerEntry.member_id, LedgerEntry.amount, LedgerEntry.at, LedgerEntry.kind
            )
            .where(col(LedgerEntry.id) > self.last_id, LedgerEntry.kind != GRANT)
            .order_by(col(LedgerEntry.id))
        )
        for entry_id, member_id, amount, at, kind in rows:
            self.accrued[member_id] = self.accrued.get(member_id, 0.0) + amount
            if kind in USAGE_KINDS:
                weight = decay(t - aware(at).timestamp(), self.half_life_h)
                self.usage[member_id] = self.usage.get(member_id, 0.0) + abs(amount) * weight
            self.last_id = entry_id or self.last_id
        self.at = t
        balances = dict(self.accrued)
        grants = session.exec(
            select(LedgerEntry.member_id, func.sum(LedgerEntry.amount))
            .where(LedgerEntry.kind == GRANT)
            .group_by(col(LedgerEntry.member_id))
        )
        for member_id, total in grants:
            balances[member_id] = balances.get(member_id, 0.0) + float(total or 0.0)
        return Totals(dict(self.usage), balances)


def _rate_tflops(node: Node, gpus: int, cpus: int) -> float:
    return run_tflops(gpus, node.tflops_per_gpu, cpus, node.cpus, node.cpu_tflops)


def accrue(session: Session, idle_rate: float, now: datetime | None = None) -> int:
    """Write the entries for run time and idle time since the last accrual; returns entries written."""
    now = now or utcnow()
    written = 0
    last = dict(
        session.exec(
            select(LedgerEntry.attempt_id, func.max(LedgerEntry.at))
            .where(col(LedgerEntry.attempt_id).is_not(None))
            .group_by(col(LedgerEntry.attempt_id))
        ).all()
    )
    runs = session.exec(
        select(Attempt, Job)
        .join(Job, col(Job.id) == Attempt.job_id)
        .where(
            col(Attempt.node_id).is_not(None),
            or_(col(Attempt.running_at).is_not(None), col(Attempt.finished_at).is_not(None)),
        )
    ).all()
    nodes = {pk(n): n for n in session.exec(select(Node).where(col(Node.id).in_(_node_ids(runs))))}
    members = {job.member_id for _, job in runs}
    names = dict(session.exec(select(Member.id, Member.name).where(col(Member.id).in_(members))).all())  # for notes
    for attempt, job in runs:
        # GPUs are held from placement: a run too short to be seen RUNNING is still charged
        start = aware(last.get(attempt.id) or attempt.running_at or attempt.started_at)
        end = min(now, aware(attempt.finished_at)) if attempt.finished_at else now
        if end <= start:
            continue
        hours = (end - start).total_seconds() / 3600
        for node_id, indices in ranks_of(attempt):  # a gang: each rank's node is paid for its own GPUs
            node = nodes.get(node_id or 0)
            if node is None:
                continue
            gpus = len(indices)
            rate = _rate_tflops(node, gpus, attempt.cpus)
            amount = bounded(credits(hours, rate), f"attempt {attempt.id}'s credits")
            entry = partial(
                LedgerEntry,
                gpu_hours=bounded(hours * gpus, "GPU-hours"),
                job_id=job.id,
                attempt_id=attempt.id,
                node_id=node.id,
                at=end,
            )
            notes = {
                "own": f"own job {job.id} on own node {node.name}",
                "spend": f"job {job.id} on {node.name}",
                "earn": f"job {job.id} of {names.get(job.member_id, f'member {job.member_id}')}",
            }
            for member_id, value, kind in run_entries(job.member_id, node.member_id, amount):
                session.add(entry(member_id=member_id, amount=value, kind=kind, note=notes[kind]))
                written += 1
    written += _accrue_idle(session, idle_rate, now)
    session.commit()
    return written


def _node_ids(runs: Sequence[tuple[Attempt, Job]]) -> set[int]:
    return {node_id for attempt, _ in runs for node_id, _ in ranks_of(attempt) if node_id is not None}


def _accrue_idle(session: Session, idle_rate: float, now: datetime) -> int:
    """Idle GPUs of online, lendable nodes earn their donor ``idle_rate`` of the full rate. Offline
    nodes get a zero entry too: each slice starts at the node's last entry, so the time a node was
    offline must close a slice rather than be paid when it comes back."""
    if idle_rate <= 0:
        return 0
    last = dict(
        session.exec(
            select(LedgerEntry.node_id, func.max(LedgerEntry.at))
            .where(LedgerEntry.kind == "idle")
            .group_by(col(LedgerEntry.node_id))
        ).all()
    )
    busy: dict[int, int] = {}
    for attempt in session.exec(select(Attempt).where(col(Attempt.state).in_(ACTIVE_ATTEMPT_STATES))):
        for node_id, indices in ranks_of(attempt):
            busy[node_id or 0] = busy.get(node_id or 0, 0) + len(indices)
    counts = dict(session.exec(select(Gpu.node_id, func.count()).group_by(col(Gpu.node_id))).all())
    written = 0
    # a pool's node classes earn nothing idle: an unused allocation costs its holder nothing
    nodes = select(Node).where(col(Node.state).in_((NodeState.ONLINE, NodeState.OFFLINE)), col(Node.pool_id).is_(None))
    for node in session.exec(nodes):
        if not counts.get(pk(node)):
            continue  # only GPUs earn idle credit
        lendable = (
            node.state == NodeState.ONLINE and node.approved and not (node.paused or node.draining or node.reclaim)
        )
        node_id = pk(node)
        idle = counts.get(node_id, 0) - busy.get(node_id, 0)
        since = aware(last.get(node_id) or node.registered_at)
        if since >= now:
            continue
        hours = (now - since).total_seconds() / 3600
        amount = bounded(
            idle_credits(idle_rate, hours, idle, node.tflops_per_gpu, lendable), f"{node.name}'s idle credit"
        )
        session.add(
            LedgerEntry(
                member_id=node.member_id,
                amount=amount,
                kind="idle",
                gpu_hours=bounded(hours * max(idle, 0), "idle GPU-hours") if lendable else 0.0,
                node_id=node.id,
                at=now,
                note=_idle_note(node, idle if lendable else 0),
            )
        )
        written += 1
    return written


def _idle_note(node: Node, idle: int) -> str:
    return f"{node.name} offline" if node.state == NodeState.OFFLINE else f"{idle} idle GPUs on {node.name}"


@dataclass
class DayTotal:
    """A member's ledger for one UTC day, one kind and one job (idle credit: one node; grants: one note),
    with who was on the other side: the donors a job ran on (spend), the member whose job ran here
    (earn), the node (idle, own)."""

    day: str  # YYYY-MM-DD, UTC
    kind: str
    job_id: int | None
    job_name: str | None
    counterpart: str | None
    nodes: list[str]
    amount: float
    gpu_hours: float
    entries: int
    first_at: datetime
    last_at: datetime
    note: str | None  # a grant's


def by_day(session: Session, member_id: int, since: datetime) -> list[DayTotal]:
    """The member's entries from ``since`` on, summed per UTC day, kind and job (``DayTotal``), oldest
    first: what ``coop balance --history`` shows instead of a row per accrual slice."""
    at = col(LedgerEntry.at)
    if session.get_bind().dialect.name == "postgresql":
        day = func.to_char(func.timezone("UTC", at), "YYYY-MM-DD")
    else:  # SQLite keeps UTC text
        day = func.strftime("%Y-%m-%d", at)
    rows = session.exec(
        select(  # type: ignore[call-overload]  # sqlmodel types select() for at most 4 columns
            day,
            LedgerEntry.kind,
            LedgerEntry.job_id,
            LedgerEntry.node_id,
            func.sum(LedgerEntry.amount),
            func.sum(LedgerEntry.gpu_hours),
            func.count(),
            func.min(at),
            func.max(at),
            LedgerEntry.note,
        )
        .where(LedgerEntry.member_id == member_id, at >= since)
        .group_by(day, col(LedgerEntry.kind), col(LedgerEntry.job_id), col(LedgerEntry.node_id), col(LedgerEntry.note))
    ).all()
    job_ids = {r[2] for r in rows if r[2] is not None}
    node_ids = {r[3] for r in rows if r[3] is not None}
    jobs = {
        j: (name, m)
        for j, name, m in session.exec(select(Job.id, Job.name, Job.member_id).where(col(Job.id).in_(job_ids)))
    }
    nodes = {
        n: (name, m)
        for n, name, m in session.exec(select(Node.id, Node.name, Node.member_id).where(col(Node.id).in_(node_ids)))
    }
    wanted = {m for _, m in jobs.values()} | {m for _, m in nodes.values()}
    members = dict(session.exec(select(Member.id, Member.name).where(col(Member.id).in_(wanted))).all())
    merged: dict[tuple[str, str, int | None, int | None, str | None], DayTotal] = {}
    for d, kind, job_id, node_id, amount, hours, n, first_at, last_at, note in rows:
        first, last = _when(first_at), _when(last_at)
        node_name, node_member = nodes.get(node_id, (None, None))
        job_name, job_member = jobs.get(job_id, (None, None))
        # a job's slices merge whatever node or note; idle credit stays per node, grants per note
        key = (str(d), kind, job_id, node_id if job_id is None else None, note if kind == GRANT else None)
        total = merged.get(key)
        if total is None:
            total = merged[key] = DayTotal(str(d), kind, job_id, job_name, None, [], 0.0, 0.0, 0, first, last, None)
        if kind == "spend":
            who = members.get(node_member, "") if node_member is not None else ""
        elif kind == "earn":
            who = members.get(job_member, "") if job_member is not None else ""
        else:
            who = node_name or ""
        parts = sorted({*filter(None, (total.counterpart or "").split(", ")), who} - {""})
        total.counterpart = ", ".join(parts) or None
        if node_name and node_name not in total.nodes:
            total.nodes = sorted([*total.nodes, node_name])
        total.amount += float(amount or 0.0)
        total.gpu_hours += float(hours or 0.0)
        total.entries += int(n)
        total.first_at, total.last_at = min(total.first_at, first), max(total.last_at, last)
        if kind == GRANT:
            total.note = note
    return sorted(merged.values(), key=lambda t: (t.day, t.job_id is not None, t.job_id or 0, t.kind, t.nodes))


def _when(value: datetime | str) -> datetime:
    return aware(datetime.fromisoformat(value) if isinstance(value, str) else value)
