"""HPC pools: registering, refreshing what they offer, testing, removing. The only writer of ``pool``.

A pool's node classes (from ``sinfo``) are mirrored as ``Node`` rows with ``tier="hpc"`` and the
pool's id, owned by the member who holds the allocation, so the scheduler places on them like on any
node and the ledger charges their use like any node's. The SSH key stays on the coordinator's host:
the API takes its path, checks that the coordinator can read it, and never reads it back.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from coop.scheduler.decide import PoolCap
from coop.server.backends.dispatch import SlurmPools
from coop.server.backends.slurm.backend import SlurmBackend
from coop.server.backends.slurm.config import NodeClass, PoolCreate, PoolOut, PoolTestResult, SlurmPoolConfig
from coop.server.backends.slurm.ssh import (
    AuthError,
    CommandError,
    HostKeyError,
    SshError,
    Target,
    check_known_hosts,
    load_key,
)
from coop.server.models import Attempt, Member, Node, Pool, aware, pk, utcnow
from coop.server.services import accounts, nodes
from coop.server.services.errors import Conflict, Invalid, NotFound
from coop.states import ACTIVE_ATTEMPT_STATES, PoolState

log = logging.getLogger("coop.pools")


def get(session: Session, name: str) -> Pool:
    pool = session.exec(select(Pool).where(Pool.name == name, Pool.state != PoolState.REMOVED)).first()
    if pool is None:
        raise NotFound(f"pool {name!r} does not exist", field="name", fix="list pools with 'coop admin pool list'")
    return pool


def _check_files(config: SlurmPoolConfig) -> None:
    """The coordinator must be able to use the key and known_hosts it was given (checked, not sent)."""
    target = Target(config.host, config.port, config.user, config.key, config.known_hosts)
    try:
        load_key(config.key)
    except AuthError as exc:
        raise Invalid(exc.message, field="slurm.key", fix=exc.fix) from None
    try:
        check_known_hosts(target)
    except HostKeyError as exc:
        raise Invalid(exc.message, field="slurm.known_hosts", fix=exc.fix) from None


def create(session: Session, req: PoolCreate, caller_member_id: int) -> Pool:
    if req.member:
        member = accounts.member_by_name(session, req.member)
    else:
        member = accounts.get_member(session, caller_member_id)
    _check_files(req.slurm)
    pool = session.exec(select(Pool).where(Pool.name == req.name)).first()
    if pool is not None and pool.state != PoolState.REMOVED:
        raise _exists(req.name)
    if pool is None:  # a removed pool's name is taken again by reviving its row (its attempts refer to it)
        pool = Pool(name=req.name, member_id=pk(member))
    pool.member_id = pk(member)
    pool.kind = "slurm"
    pool.config = req.slurm.model_dump(mode="json")
    pool.max_jobs = req.max_jobs
    pool.enabled = True
    pool.state, pool.detail, pool.refreshed_at, pool.capacity = PoolState.UNKNOWN, None, None, []
    session.add(pool)
    try:
        session.commit()
    except IntegrityError:  # the same name, added at the same moment
        session.rollback()
        raise _exists(req.name) from None
    return pool


def _exists(name: str) -> Conflict:
    return Conflict(f"a pool named {name!r} already exists", field="name",
                    fix="choose another name, or remove it first with 'coop admin pool remove'")  # fmt: skip


def running(session: Session) -> dict[int, int]:
    """Active attempts per pool."""
    rows = session.exec(
        select(Attempt.pool_id, func.count())
        .where(col(Attempt.pool_id).is_not(None), col(Attempt.state).in_(ACTIVE_ATTEMPT_STATES))
        .group_by(col(Attempt.pool_id))
    ).all()
    return {int(pool_id or 0): int(n) for pool_id, n in rows}


def caps(session: Session) -> dict[int, PoolCap]:
    """Each enabled pool's job cap and how many more jobs it may take now (its cap less its active
    attempts): ``decide`` holds placements past it back."""
    busy = running(session)
    pools = session.exec(select(Pool).where(col(Pool.enabled))).all()
    return {pk(p): PoolCap(p.name, p.max_jobs, max(0, p.max_jobs - busy.get(pk(p), 0))) for p in pools}


def machines(session: Session) -> dict[int, int]:
    """Per node class (its node id): how many of its machines Slurm can use now, the most a gang there
    may span."""
    names = {f"{p.name}/{cls.get('name', '')}": int(cls.get("usable", cls.get("nodes", 1)))
             for p in session.exec(select(Pool).where(col(Pool.enabled))) for cls in p.capacity}  # fmt: skip
    rows = session.exec(select(Node.id, Node.name).where(col(Node.pool_id).is_not(None)))
    return {node_id: names[name] for node_id, name in rows if node_id is not None and name in names}


def any_enabled(session: Session) -> bool:
    return session.exec(select(Pool.id).where(col(Pool.enabled))).first() is not None


def listing(session: Session, include_removed: bool = False) -> list[tuple[Pool, str]]:
    query = select(Pool, Member.name).join(Member, col(Member.id) == Pool.member_id).order_by(col(Pool.id))
    if not include_removed:
        query = query.where(Pool.state != PoolState.REMOVED)
    return [(p, m) for p, m in session.exec(query)]


def out(pool: Pool, member: str, active: int) -> PoolOut:
    assert pool.id is not None
    return PoolOut(
        id=pool.id,
        name=pool.name,
        member=member,
        kind=pool.kind,
        enabled=pool.enabled,
        max_jobs=pool.max_jobs,
        running=active,
        state=pool.state,
        detail=pool.detail,
        refreshed_at=aware(pool.refreshed_at) if pool.refreshed_at else None,
        slurm=pool.config,
        capacity=[NodeClass(**c) for c in pool.capacity],
        created_at=aware(pool.created_at),
    )


def remove(session: Session, pool: Pool) -> Pool:
    active = running(session).get(pool.id or 0, 0)
    if active:
        raise Conflict(f"pool {pool.name!r} still runs {active} Coop job(s)", field="name",
                       fix="cancel them (coop cancel JOB) or wait for them to end, then remove the pool")  # fmt: skip
    pool.enabled = False
    pool.state = PoolState.REMOVED
    session.add(pool)
    nodes.sync_pool_classes(session, pool, [], online=False)
    session.commit()
    return pool


def record(session: Session, pool: Pool, classes: list[NodeClass] | None, error: SshError | None = None) -> None:
    """Store a refresh's outcome: what the pool offers, or why it could not be asked."""
    session.refresh(pool)  # it may have been removed while sinfo ran
    if pool.state == PoolState.REMOVED:
        return
    pool.refreshed_at = utcnow()
    if classes is not None:
        pool.state, pool.detail = PoolState.OK, None
        pool.capacity = [c.as_dict() for c in classes]
        if not classes:
            pool.detail = f"sinfo lists no nodes in partition {pool.config.get('partition') or '(default)'}"
    else:
        pool.state = (
            PoolState.REFUSED if isinstance(error, (HostKeyError, AuthError, CommandError)) else PoolState.UNREACHABLE
        )
        pool.detail = str(error)
    session.add(pool)
    nodes.sync_pool_classes(session, pool, pool.capacity, online=classes is not None)
    session.commit()


def submit_failed(session: Session, pool_id: int, exc: Exception) -> None:
    """A submission to the pool failed: stop placing there until a refresh finds it working again
    (otherwise every retry of every waiting job would be spent on it within seconds)."""
    pool = session.get(Pool, pool_id)
    if pool is not None:
        record(session, pool, None, exc if isinstance(exc, SshError) else SshError(f"submitting failed: {exc}"))


def refresh(session: Session, backend: SlurmBackend, pool: Pool) -> list[NodeClass] | None:
    try:
        classes = backend.capacity()
    except SshError as exc:
        log.warning("pool %s: %s", pool.name, exc)
        record(session, pool, None, exc)
        return None
    record(session, pool, classes)
    return classes


def refresh_all(session: Session, slurm: SlurmPools) -> None:
    slurm.refresh(session)
    for pool in session.exec(select(Pool).where(col(Pool.enabled))).all():
        backend = slurm.get(pool.id or 0)
        if backend is not None:
            refresh(session, backend, pool)


def test(session: Session, pool: Pool) -> PoolTestResult:
    """Connect afresh (so the host key is checked now), run sinfo, and store what it offers."""
    started = time.monotonic()
    backend = SlurmBackend.connect_to(pool.name, SlurmPoolConfig.model_validate(pool.config))
    try:
        host_key = backend.conn.connect()
        classes = refresh(session, backend, pool)
    except SshError as exc:
        record(session, pool, None, exc)
        return PoolTestResult(ok=False, pool=pool.name, message=str(exc), seconds=time.monotonic() - started)
    finally:
        backend.close()
    if classes is None:
        return PoolTestResult(ok=False, pool=pool.name, message=pool.detail or "sinfo failed", host_key=host_key,
                              seconds=time.monotonic() - started)  # fmt: skip
    return PoolTestResult(
        ok=bool(classes),
        pool=pool.name,
        message=pool.detail or f"connected to {pool.config['host']}; sinfo lists {sum(c.nodes for c in classes)} nodes",
        host_key=host_key,
        seconds=time.monotonic() - started,
        capacity=classes,
    )


def gres_for(session: Session, attempt: Attempt) -> str | None:
    """The GRES to request for a pool attempt: the one of the node class it was placed on."""
    if attempt.pool_id is None or attempt.node_id is None:
        return None
    node, pool = session.get(Node, attempt.node_id), session.get(Pool, attempt.pool_id)
    if node is None or pool is None:
        return None
    name = node.name.split("/", 1)[-1]
    return next((c.get("gres") for c in pool.capacity if c.get("name") == name), None)
