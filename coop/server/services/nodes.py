"""Node registration, heartbeats, owner flags and liveness."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, delete, select

from coop.schemas import Heartbeat, NodeRegister
from coop.server.backends.slurm.config import CPU_TFLOPS_PER_CORE
from coop.server.models import Attempt, Gpu, Member, Node, Pool, aware, pk, ranks_of, utcnow
from coop.server.services.errors import Conflict, NotFound
from coop.spec import normalise_gpu_model
from coop.states import ACTIVE_ATTEMPT_STATES, NodeState, PoolState

log = logging.getLogger("coop.nodes")


def get(session: Session, node_id: int) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id} does not exist", field="node_id", fix="list nodes with 'coop nodes'")
    return node


def approve_command(node_id: int | None) -> str:
    return f"coop admin node approve {node_id}"


@dataclass
class Registration:
    """A registration's node, how it was matched (``NodeRegistered.matched_by``) and what the agent should log."""

    node: Node
    matched_by: str
    note: str | None = None


def _live(node: Node, now: datetime, timeout: timedelta) -> bool:
    """Is a running agent holding this node (online, heartbeat within the timeout)?"""
    last = aware(node.last_heartbeat_at) if node.last_heartbeat_at else None
    return node.state == NodeState.ONLINE and last is not None and now - last <= timeout


def _last_beat(node: Node) -> float:
    return aware(node.last_heartbeat_at).timestamp() if node.last_heartbeat_at else 0.0


def _gpu_uuids(session: Session, node_ids: list[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = defaultdict(set)
    rows = session.exec(select(Gpu.node_id, Gpu.uuid).where(col(Gpu.node_id).in_(node_ids), col(Gpu.uuid).is_not(None)))
    for node_id, uuid in rows:
        found[node_id].add(uuid or "")
    return found


def _match(session: Session, member_id: int, req: NodeRegister, now: datetime, timeout: timedelta) -> Registration:
    """Which of the member's nodes in service this registration is (docs/agent.md "Which node a machine is"):

    1. the node the agent's state dir joined as (``req.node_id``), whatever its name or GPUs now;
    2. else a node with the same machine (``hardware_id``: machine-id and GPU UUIDs) that no running agent
       holds, the same name first: an agent restarted with another name or a fresh state dir;
    3. else the one node on the same host (``host_id``) that shares a GPU UUID with it and no running
       agent holds: a card added, removed or replaced beside others;
    4. else the node of that name (what agents without a machine id rely on);
    5. else a new node.

    Only the member's own nodes are candidates: an id, machine id or name another member's token sends
    never reaches another member's node. A machine whose node is live is not taken over: two agents on
    one machine (separate state dirs, other names) are two nodes."""
    mine = session.exec(
        select(Node).where(Node.member_id == member_id, col(Node.retired_at).is_(None), col(Node.pool_id).is_(None))
    ).all()
    if req.node_id is not None:
        for node in mine:
            if node.id == req.node_id:
                if _live(node, now, timeout) and req.host_id and node.host_id and node.host_id != req.host_id:
                    raise Conflict(
                        f"node {node.id} ({node.name}) is online from another machine: this agent's state dir "
                        "seems copied from that machine's",
                        field="node_id",
                        fix="give this agent a state dir of its own (--state-dir, or delete its state.json): "
                        "it then joins as this machine's node",
                    )
                return Registration(node, "state_dir")
    free = [n for n in mine if not _live(n, now, timeout)]
    if req.hardware_id:
        same = [n for n in free if n.hardware_id == req.hardware_id]
        if same:
            same.sort(key=lambda n: (n.name != req.name, -_last_beat(n)))
            return Registration(same[0], "machine")
    uuids = {g.uuid for g in req.gpus if g.uuid}
    if req.host_id and uuids:
        host = [n for n in free if n.host_id == req.host_id]
        had = _gpu_uuids(session, [pk(n) for n in host])
        sharing = [n for n in host if had.get(pk(n), set()) & uuids]
        if len(sharing) == 1:
            return Registration(sharing[0], "gpus_changed")
    for node in mine:
        if node.name == req.name:
            return Registration(node, "name")
    return Registration(Node(member_id=member_id, name=req.name), "new")


def register(session: Session, member_id: int, req: NodeRegister, timeout: timedelta = timedelta(seconds=15)) -> Node:
    """``rejoin``'s node."""
    return rejoin(session, member_id, req, timeout).node


def rejoin(session: Session, member_id: int, req: NodeRegister, timeout: timedelta) -> Registration:
    """Create the node, or update the member's node this machine is (``_match``): a rejoin. A new node
    awaits an admin's approval; a rejoin keeps whatever approval its node had. ``timeout``: how long
    after its last heartbeat a node's agent counts as gone (its machine may then be taken over)."""
    now = utcnow()
    found = _match(session, member_id, req, now, timeout)
    node, notes = found.node, []
    if node.id is not None and node.name != req.name:
        taken = session.exec(
            select(Node.id).where(
                Node.member_id == member_id, Node.name == req.name, col(Node.retired_at).is_(None), Node.id != node.id
            )
        ).first()
        if taken is not None:
            raise Conflict(
                f"this machine is your node {node.id} ({node.name}), and your node {taken} is already "
                f"named {req.name!r}",
                field="name",
                fix=f"join with --name {node.name} (or another free name), or remove node {taken} first "
                f"('coop node remove {taken}')",
            )
        notes.append(f"node {node.id} renamed from {node.name!r} to {req.name!r} ({_HOW[found.matched_by]})")
    if found.matched_by == "gpus_changed":
        notes.append(f"node {node.id}'s GPUs changed: the coordinator now offers the ones this agent reports")
    fields = req.model_dump(exclude={"gpus", "node_id"})
    for key, value in fields.items():
        setattr(node, key, value)
    node.state = NodeState.ONLINE
    node.last_heartbeat_at = now
    session.add(node)
    session.flush()
    if req.node_id is not None and node.id != req.node_id:  # once flushed: a new node's id is known
        notes.append(_not_claimed(session, member_id, req.node_id, node))
    if req.hardware_id:
        _warn_if_shared(session, node)
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
    for note in notes:
        log.info("%s", note)
    return Registration(node, found.matched_by, "; ".join(notes) or None)


_HOW = {
    "state_dir": "the node id its state dir kept",
    "machine": "the same machine-id and GPUs",
    "gpus_changed": "the same machine-id and a GPU it had",
    "name": "its name",
    "new": "a new node",
}


def _not_claimed(session: Session, member_id: int, claimed: int, node: Node) -> str:
    """Why the node the agent's state dir named was not the one it got (said to the agent, for its log)."""
    old = session.get(Node, claimed)
    if old is not None and old.member_id == member_id and old.retired_at is not None:
        return (
            f"node {claimed} ({old.name}) was removed from the cooperative ({old.retired_by}): "
            f"this machine registered as node {node.id}"
            + ("" if node.approved else ", which awaits an admin's approval")
        )
    return f"the coordinator has no node {claimed} of yours: this machine registered as node {node.id}"


def _warn_if_shared(session: Session, node: Node) -> None:
    """The same machine registered by two members (a shared machine, or a forged id): tell the admins."""
    others = session.exec(
        select(Node.id, Member.name)
        .join(Member)
        .where(Node.hardware_id == node.hardware_id, Node.member_id != node.member_id, col(Node.retired_at).is_(None))
    ).all()
    for other, member in others:
        log.warning(
            "node %s (member %s) reports the same machine as node %s of member %s: one machine, two members?",
            node.id,
            node.member_id,
            other,
            member,
        )


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
    node.paused = bool(node.telemetry.get("owner_paused") or node.coordinator_paused)
    node.reclaim_reason = reclaim_reason(node, names=True)
    node.reclaim = node.reclaim_reason is not None


def reclaim_reason(node: Node, *, names: bool) -> str | None:
    """Why the owner has the node back, or None. With ``names``, the names of the GPU processes Coop did
    not start, which are the donor's business: only it and admins see them (``node_out``); guests,
    whose jobs it stops (the scheduler's preemption reason), and other members read that it runs some."""
    reasons = []
    if node.telemetry.get("owner_paused"):
        reasons.append("owner paused the node")
    if node.coordinator_paused:
        reasons.append("paused from the coordinator")
    foreign = node.telemetry.get("foreign_processes") or []
    if foreign and names:
        listed = ", ".join(sorted({p.get("name") or str(p.get("pid")) for p in foreign})[:3])
        reasons.append(f"GPU processes Coop did not start: {listed}")
    elif foreign:
        reasons.append("its owner runs GPU processes Coop did not start")
    return "; ".join(reasons) or None


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


def jobs_on(session: Session, node_id: int) -> list[int]:
    """The jobs with an attempt starting or running on the node (any rank of a gang)."""
    rows = session.exec(select(Attempt).where(col(Attempt.state).in_(ACTIVE_ATTEMPT_STATES))).all()
    return sorted({a.job_id for a in rows if any(n == node_id for n, _ in ranks_of(a))})


def retire(session: Session, node: Node, by: str, force: bool = False) -> list[int]:
    """Remove a node from the cooperative (``coop admin node remove``): it keeps its row, so the
    ledger's entries stay attributable, and becomes ``left`` with ``retired_at``: no placement, no
    listing by default, no metrics (so no CoopNodeDown), never matched by a registration again (its
    machine joins as a new node, awaiting approval), and its agent's heartbeats are refused.

    Refused while jobs run there, unless ``force``: then they are requeued by the next reconcile pass,
    as for a lost node (``runs.reconcile``). Returns those jobs. Idempotent on a retired node."""
    if node.pool_id is not None:
        raise Conflict(
            f"node {node.id} is a node class of an HPC pool: it goes with its pool",
            field="node_id",
            fix="remove the pool ('coop admin pool remove NAME')",
        )
    if node.retired_at is not None:
        return []
    running = jobs_on(session, pk(node))
    if running and not force:
        listed = ", ".join(str(j) for j in running[:10]) + (" ..." if len(running) > 10 else "")
        raise Conflict(
            f"node {node.id} ({node.name}) runs {len(running)} job(s): {listed}",
            field="force",
            fix=f"let them end ('coop node drain {node.id}' first, so no new ones start), cancel them, or remove "
            f"it with --force: they are requeued as for a lost node",
        )
    node.retired_at = utcnow()
    node.retired_by = by[:160]
    node.state = NodeState.LEFT
    session.add(node)
    session.commit()
    log.warning(
        "node %s (%s) removed by %s%s",
        node.id,
        node.name,
        by,
        f"; jobs {running} are requeued as for a lost node" if running else "",
    )
    return running


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


def listing(session: Session, node_id: int | None = None, retired: bool = False) -> list[tuple[Node, str, list[Gpu]]]:
    """Nodes with their member's name and GPUs (one node when ``node_id`` is given, retired or not);
    retired nodes only with ``retired``."""
    nodes_q = select(Node, Member.name).join(Member).order_by(col(Node.id))
    gpus_q = select(Gpu).order_by(col(Gpu.index))
    if node_id is not None:
        nodes_q = nodes_q.where(Node.id == node_id)
        gpus_q = gpus_q.where(Gpu.node_id == node_id)
    elif not retired:
        nodes_q = nodes_q.where(col(Node.retired_at).is_(None))
    rows = session.exec(nodes_q).all()
    if node_id is not None and not rows:
        get(session, node_id)  # raises the 404
    gpus: dict[int, list[Gpu]] = defaultdict(list)
    for g in session.exec(gpus_q):
        gpus[g.node_id].append(g)
    return [(node, member, gpus[node.id]) for node, member in rows if node.id is not None]
