"""Node registration, heartbeats, owner flags and liveness."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlmodel import Session, col, delete, select

from coop.schemas import Heartbeat, NodeRegister
from coop.server.errors import ApiError
from coop.server.models import Gpu, Member, Node, utcnow
from coop.spec import normalise_gpu_model


def get(session: Session, node_id: int) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise ApiError(
            404, "not_found", f"node {node_id} does not exist", field="node_id", fix="list nodes with 'coop nodes'"
        )
    return node


def register(session: Session, member_id: int, req: NodeRegister) -> Node:
    """Create the node, or update it when the same member registers the same name again (a rejoin)."""
    node = session.exec(select(Node).where(Node.member_id == member_id, Node.name == req.name)).first()
    fields = req.model_dump(exclude={"gpus"})
    if node is None:
        node = Node(member_id=member_id, **fields)
    else:
        for key, value in fields.items():
            setattr(node, key, value)
    node.state = "online"
    node.last_heartbeat_at = utcnow()
    session.add(node)
    session.flush()
    session.exec(delete(Gpu).where(col(Gpu.node_id) == node.id))  # type: ignore[call-overload]
    for g in req.gpus:
        session.add(Gpu(node_id=node.id, model=normalise_gpu_model(g.name), **g.model_dump()))  # type: ignore[arg-type]
    session.commit()
    return node


def _reclaim_reason(hb: Heartbeat) -> str | None:
    if hb.paused:
        return "owner paused the node"
    if hb.foreign_processes:
        names = ", ".join(sorted({p.name or str(p.pid) for p in hb.foreign_processes})[:3])
        return f"GPU processes Coop did not start: {names}"
    return None


def heartbeat(session: Session, node: Node, hb: Heartbeat) -> Node:
    reason = _reclaim_reason(hb)
    node.paused = hb.paused
    node.reclaim = reason is not None
    node.reclaim_reason = reason
    node.telemetry = {
        "gpus": [g.model_dump() for g in hb.gpus],
        "foreign_processes": [p.model_dump() for p in hb.foreign_processes],
    }
    node.last_heartbeat_at = utcnow()
    node.state = "online"
    session.add(node)
    session.commit()
    return node


def set_flags(session: Session, node: Node, *, paused: bool | None = None, draining: bool | None = None) -> Node:
    if paused is not None:
        node.paused = paused
        node.reclaim = paused or bool(node.telemetry.get("foreign_processes"))
        node.reclaim_reason = "paused from the coordinator" if paused else None
    if draining is not None:
        node.draining = draining
    session.add(node)
    session.commit()
    return node


def leave(session: Session, node: Node) -> Node:
    node.state = "left"
    session.add(node)
    session.commit()
    return node


def mark_offline(session: Session, node: Node) -> None:
    """The backend saw the node die: stop placing there until its agent heartbeats again."""
    if node.state == "online":
        node.state = "offline"
        session.add(node)
        session.commit()


def mark_missing(session: Session, older_than: timedelta, now: datetime | None = None) -> list[Node]:
    """Turn online nodes whose last heartbeat is older than ``older_than`` offline."""
    cutoff = (now or utcnow()) - older_than
    stale = session.exec(select(Node).where(Node.state == "online", col(Node.last_heartbeat_at) < cutoff)).all()
    for node in stale:
        node.state = "offline"
        session.add(node)
    session.commit()
    return list(stale)


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
