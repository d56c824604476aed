"""Node registration, heartbeats, owner flags and liveness."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, delete, select

from coop.schemas import Heartbeat, NodeRegister
from coop.server.backends.slurm.config import CPU_TFLOPS_PER_CORE
from coop.server.models import Gpu, Member, Node, Pool, utcnow
from coop.server.services.errors import Conflict, NotFound
from coop.spec import normalise_gpu_model
from coop.states import NodeState, PoolState

log = logging.getLogger("coop.nodes")


def get(session: Session, node_id: int) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id} does not exist", field="node_id", fix="list nodes with 'coop nodes'")
    return node


def approve_command(node_id: int | None) -> str:
    return f"coop admin node approve {node_id}"


def register(session: Session, member_id: int, req: NodeRegister) -> Node:
    """Create the node, or update it when the same member registers the same name again (a rejoin).
    A new node awaits an admin's approval; a rejoin keeps whatever approval its node had."""
    node = session.exec(select(Node).where(Node.member_id == member_id, Node.name == req.name)).first()
    fields = req.model_dump(exclude={"gpus"})
    if node is None:
        node = Node(member_id=member_id, **fields)
    else:
        for key, value in fields.items():
            setattr(node, key, value)
    node.state = NodeState.ONLINE
    node.last_heartbeat_at = utcnow()
    session.add(node)
    session.flush()
    session.exec(delete(Gpu).where(col(Gpu.node_id) == node.id))  # type: ignore[call-overload]
    for g in req.gpus:
        session.add(Gpu(node_id=node.id, model=normalise_gpu_model(g.name), **g.model_dump()))  # type: ignore[arg-type]
    session.commit()
    if not node.approved:
        log.warning(
            "node %s (%s, member %s) registered and awaits approval: no Ray token, no jobs until an admin runs '%s'",
            node.id,
            node.name,
            member_id,
            approve_command(node.id),
        )
    return node


def set_approved(session: Session, node: Node, approved: bool, by: str) -> Node:
    """An admin's decision (idempotent): an approved node gets the Ray token at its next registration
    and takes jobs; a revoked one takes no new jobs and gets no Ray token again. ``by``: who, for the log."""
    if node.pool_id is not None:
        raise Conflict(
            f"node {node.id} is a node class of an HPC pool: it is approved with its pool",
            field="node_id",
            fix="remove the pool ('coop admin pool remove NAME') to stop sending it jobs",
        )
    changed = node.approved != approved
    node.approved = approved
    session.add(node)
    session.commit()
    if approved:
        log.info("node %s (%s) %s by %s", node.id, node.name, "approved" if changed else "already approved", by)
    else:
        log.warning(
            "node %s (%s) %s by %s: no new jobs, no Ray token at its next registration "
            "(the Ray token it already holds stays valid until the token is rotated)",
            node.id,
            node.name,
            "revoked" if changed else "already revoked",
            by,
        )
    return node


def _apply_owner_flags(node: Node) -> None:
    """The effective pause and reclaim signal, from both sources: the owner's (what its agent last
    reported, kept in ``telemetry``) and the coordinator's (``coordinator_paused``, set through the
    API). Paused if either pauses; each keeps its own, so a heartbeat never lifts a coordinator pause
    and a resume from the API never lifts the owner's. The reason says who."""
    reasons = []
    if node.telemetry.get("owner_paused"):
        reasons.append("owner paused the node")
    if node.coordinator_paused:
        reasons.append("paused from the coordinator")
    node.paused = bool(reasons)
    foreign = node.telemetry.get("foreign_processes") or []
    if foreign:
        names = ", ".join(sorted({p.get("name") or str(p.get("pid")) for p in foreign})[:3])
        reasons.append(f"GPU processes Coop did not start: {names}")
    node.reclaim = bool(reasons)
    node.reclaim_reason = "; ".join(reasons) or None


def _agents_only(node: Node) -> None:
    if node.pool_id is not None:
        raise Conflict(
            f"node {node.id} is a node class of an HPC pool, not an agent's machine",
            field="node_id",
            fix="the pool refresh keeps it up to date; agents heartbeat only their own machines",
        )


def heartbeat(session: Session, node: Node, hb: Heartbeat) -> Node:
    _agents_only(node)
    node.telemetry = {
        "gpus": [g.model_dump() for g in hb.gpus],
        "foreign_processes": [p.model_dump() for p in hb.foreign_processes],
        "owner_paused": hb.paused,
    }
    _apply_owner_flags(node)
    node.last_heartbeat_at = utcnow()
    node.state = NodeState.ONLINE
    session.add(node)
    session.commit()
    return node


def set_flags(session: Session, node: Node, *, paused: bool | None = None, draining: bool | None = None) -> Node:
    """``paused``: the coordinator's own pause (see ``_apply_owner_flags``)."""
    if paused is not None:
        node.coordinator_paused = paused
        _apply_owner_flags(node)
    if draining is not None:
        node.draining = draining
    session.add(node)
    session.commit()
    return node


def leave(session: Session, node: Node) -> Node:
    _agents_only(node)
    node.state = NodeState.LEFT
    session.add(node)
    session.commit()
    return node


def mark_offline(session: Session, node: Node) -> None:
    """The backend saw the node die: stop placing there until its agent heartbeats again."""
    if node.state == NodeState.ONLINE:
        node.state = NodeState.OFFLINE
        session.add(node)
        session.commit()


def mark_missing(session: Session, older_than: timedelta, now: datetime | None = None) -> list[Node]:
    """Turn online nodes whose last heartbeat is older than ``older_than`` offline."""
    cutoff = (now or utcnow()) - older_than
    stale = session.exec(
        select(Node).where(
            Node.state == NodeState.ONLINE, col(Node.last_heartbeat_at) < cutoff, col(Node.pool_id).is_(None)
        )  # a pool's node classes have no agent: the pool refresh says whether they are up
    ).all()
    for node in stale:
        node.state = NodeState.OFFLINE
        session.add(node)
    session.commit()
    return list(stale)


def sync_pool_classes(session: Session, pool: Pool, classes: list[dict[str, Any]], online: bool) -> None:
    """Mirror a pool's node classes as nodes (``tier="hpc"``) the scheduler can place on; the caller
    commits. A class that is gone, or a removed pool's, is marked left; an unreachable pool's, offline."""
    rows = {n.name: n for n in session.exec(select(Node).where(Node.pool_id == pool.id))}
    wanted = set()
    for cls in classes:
        name = f"{pool.name}/{cls['name']}"
        wanted.add(name)
        node = rows.get(name) or Node(member_id=pool.member_id, name=name, tier="hpc", pool_id=pool.id, os="slurm")
        node.approved = True  # an admin added the pool: its node classes need no other approval
        node.member_id = pool.member_id
        node.cpus, node.memory_gb = int(cls["cpus"]), float(cls["memory_gb"])
        node.tflops_per_gpu, node.cpu_tflops = cls.get("tflops_per_gpu"), cls["cpus"] * CPU_TFLOPS_PER_CORE
        node.state = NodeState.ONLINE if online and cls.get("usable", 0) > 0 else NodeState.OFFLINE
        if online:
            node.last_heartbeat_at = utcnow()
        new = node.id is None
        session.add(node)
        session.flush()
        gpus = [(g.model, g.memory_gb, g.name) for g in session.exec(select(Gpu).where(Gpu.node_id == node.id))]
        want = [(cls["model"], float(cls["gpu_memory_gb"]), cls["gres"])] * int(cls["gpus"])
        if new or gpus != want:
            session.exec(delete(Gpu).where(col(Gpu.node_id) == node.id))  # type: ignore[call-overload]
            for i in range(int(cls["gpus"])):
                gpu = Gpu(node_id=node.id, index=i, name=cls["gres"], model=cls["model"], memory_gb=want[i][1])  # type: ignore[arg-type]
                gpu.compute_capability = cls.get("compute_capability")
                session.add(gpu)
    for name, node in rows.items():
        if name not in wanted and (online or pool.state == PoolState.REMOVED):
            node.state = NodeState.LEFT
            session.add(node)


def listing(session: Session, node_id: int | None = None) -> list[tuple[Node, str, list[Gpu]]]:
    """Nodes with their member's name and GPUs (one node when ``node_id`` is given)."""
    nodes_q = select(Node, Member.name).join(Member).order_by(col(Node.id))
    gpus_q = select(Gpu).order_by(col(Gpu.index))
    if node_id is not None:
        nodes_q = nodes_q.where(Node.id == node_id)
        gpus_q = gpus_q.where(Gpu.node_id == node_id)
    rows = session.exec(nodes_q).all()
    if node_id is not None and not rows:
        get(session, node_id)  # raises the 404
    gpus: dict[int, list[Gpu]] = defaultdict(list)
    for g in session.exec(gpus_q):
        gpus[g.node_id].append(g)
    return [(node, member, gpus[node.id]) for node, member in rows if node.id is not None]
