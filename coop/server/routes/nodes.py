from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query

from coop.schemas import MAX_ID, GpuOut, Heartbeat, NodeOut, NodeRegister, NodeRegistered, NodeRemoved
from coop.server.deps import (
    AgentDep,
    Principal,
    PrincipalDep,
    SessionDep,
    SessionReleasingRoute,
    SettingsDep,
    UserDep,
)
from coop.server.errors import ApiError
from coop.server.models import Gpu, Node
from coop.server.services import foreign_work, nodes

router = APIRouter(tags=["nodes"], route_class=SessionReleasingRoute)
NodeId = Annotated[int, Path(ge=1, le=MAX_ID)]  # bounded: a bigger int overflows the database's integer


def node_out(node: Node, member: str, gpus: list[Gpu], foreign: int = 0, viewer: Principal | None = None) -> NodeOut:
    """The node as ``viewer`` may see it (None: its donor or an admin, who see all). Other members see
    its GPUs' readings but not what else its owner runs on them: no process names in the telemetry or
    in the reclaim reason."""
    out = {
        **node.model_dump(),
        "member": member,
        "gpus": [GpuOut.model_validate(g) for g in gpus],
        "foreign_ray_work": foreign,
        "state": "retired" if node.retired_at is not None else node.state,
    }
    if viewer is not None and not viewer.is_admin and viewer.member_id != node.member_id:
        out["telemetry"] = {"gpus": node.telemetry.get("gpus") or []}
        out["reclaim_reason"] = nodes.reclaim_reason(node, names=False)
    return NodeOut.model_validate(out)


def _one(session: SessionDep, node_id: int, viewer: Principal | None = None) -> NodeOut:
    (row,) = nodes.listing(session, node_id)
    return node_out(*row, foreign_work.per_node(session, node_id).get(node_id, 0), viewer)


def _own(session: SessionDep, principal: Principal, node_id: int, *, admin_ok: bool) -> Node:
    node = nodes.get(session, node_id)
    if node.member_id != principal.member_id and not (admin_ok and principal.is_admin):
        raise ApiError(
            403,
            "forbidden",
            f"node {node_id} belongs to another member",
            field="node_id",
            fix="only the donor's own tokens (or an admin) may change this node",
        )
    return node


def _in_service(node: Node) -> Node:
    """A retired node's agent is told so (410), with what to do: it stops (agent/runner.py)."""
    if node.retired_at is not None:
        raise ApiError(
            410,
            "node_retired",
            f"node {node.id} ({node.name}) was removed from the cooperative ({node.retired_by}, "
            f"{node.retired_at:%Y-%m-%d %H:%M} UTC)",
            field="node_id",
            fix="stop this agent ('sudo systemctl disable --now coop-agent'); to offer this machine again, run "
            "'coop-agent join' again: it registers as a new node, which an admin approves",
        )
    return node


def offline_after(settings: SettingsDep) -> timedelta:
    """How long after its last heartbeat a node's agent counts as gone (the node turns offline)."""
    return timedelta(seconds=settings.heartbeat_interval_s * settings.missed_heartbeats_offline)


@router.post("/nodes", status_code=201, response_model=NodeRegistered)
def register_node(req: NodeRegister, session: SessionDep, settings: SettingsDep, principal: AgentDep) -> NodeRegistered:
    """Register a node of the agent token's member, or register one of its nodes again (a rejoin: the
    node the agent's state dir names, else the same machine, else the same name; ``matched_by`` says
    which, docs/agent.md). The Ray address and token are given only to a node an admin approved
    (``approved``); until then both are null and the agent heartbeats, registering again once its node
    is approved. A retired node is never rejoined: its machine registers as a new node."""
    done = nodes.rejoin(session, principal.member_id, req, offline_after(settings))
    approved = done.node.approved
    return NodeRegistered.model_validate(
        {
            **_one(session, done.node.id).model_dump(),  # type: ignore[arg-type]
            "ray_address": settings.ray_address if approved else None,
            "ray_auth_token": settings.ray_auth_token if approved else None,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
            "matched_by": done.matched_by,
            "note": done.note,
        }
    )


@router.post("/nodes/{node_id}/heartbeat", response_model=NodeOut)
def heartbeat(node_id: NodeId, hb: Heartbeat, session: SessionDep, principal: AgentDep) -> NodeOut:
    nodes.heartbeat(session, _in_service(_own(session, principal, node_id, admin_ok=False)), hb)
    return _one(session, node_id)


@router.post("/nodes/{node_id}/leave", response_model=NodeOut)
def leave(node_id: NodeId, session: SessionDep, principal: AgentDep) -> NodeOut:
    nodes.leave(session, _in_service(_own(session, principal, node_id, admin_ok=False)))
    return _one(session, node_id)


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(
    session: SessionDep,
    viewer: UserDep,
    retired: Annotated[bool, Query(description="also the nodes removed from the cooperative")] = False,
) -> list[NodeOut]:
    foreign = foreign_work.per_node(session)
    rows = nodes.listing(session, retired=retired)
    return [node_out(n, m, g, foreign.get(n.id or 0, 0), viewer) for n, m, g in rows]


@router.get("/nodes/{node_id}", response_model=NodeOut)
def show_node(node_id: NodeId, session: SessionDep, viewer: UserDep) -> NodeOut:
    return _one(session, node_id, viewer)


def _admin_decides(principal: Principal, node_id: int, action: str) -> str:
    """Only an admin approves or revokes a node (the donor's own tokens may not: approval is what
    admits a machine to the Ray cluster). Returns who decided, for the log."""
    if not principal.is_admin:
        raise ApiError(
            403,
            "forbidden",
            f"only an admin may {action} a node",
            field="node_id",
            fix=f"ask a cooperative admin to run 'coop admin node {action} {node_id}'",
        )
    return f"{principal.member}/{principal.user}"


@router.post("/nodes/{node_id}/approve", response_model=NodeOut)
def approve(node_id: NodeId, session: SessionDep, principal: PrincipalDep) -> NodeOut:
    """Admit a node (admins only; idempotent): its agent gets the Ray address and token at its next
    registration, and the scheduler places jobs on it."""
    by = _admin_decides(principal, node_id, "approve")
    nodes.set_approved(session, nodes.get(session, node_id), True, by)
    return _one(session, node_id)


@router.post("/nodes/{node_id}/revoke", response_model=NodeOut)
def revoke(node_id: NodeId, session: SessionDep, principal: PrincipalDep) -> NodeOut:
    """Withdraw a node's approval (admins only; idempotent): no new jobs start on it and its agent gets
    no Ray token at its next registration. Jobs running there go on (preempt or cancel them), and the
    Ray token it already holds stays valid: rotate the cluster's Ray token to shut it out of Ray."""
    by = _admin_decides(principal, node_id, "revoke")
    nodes.set_approved(session, nodes.get(session, node_id), False, by)
    return _one(session, node_id)


@router.post("/nodes/{node_id}/remove", response_model=NodeRemoved)
def remove(
    node_id: NodeId,
    session: SessionDep,
    principal: UserDep,
    force: Annotated[bool, Query(description="also when jobs run there: they are requeued as for a lost node")] = False,
) -> NodeRemoved:
    """Retire a node (an admin, or the donor's own user tokens; idempotent): it is kept for the
    ledger's history but takes no jobs, is left out of listings (``?retired=true`` shows it) and
    metrics (no more CoopNodeDown), and its agent's heartbeats are refused. Refused (409) while jobs
    run there unless ``force``, which requeues them as for a lost node."""
    node = _own(session, principal, node_id, admin_ok=True)
    who = f"{principal.member}/{principal.user}"
    by = f"removed by admin {who}" if principal.is_admin else f"removed by its donor {who}"
    requeued = nodes.retire(session, node, by, force=force)
    return NodeRemoved.model_validate({**_one(session, node_id).model_dump(), "requeued_jobs": requeued})


@router.post("/nodes/{node_id}/{action}", response_model=NodeOut)
def node_action(node_id: NodeId, action: str, session: SessionDep, principal: UserDep) -> NodeOut:
    """pause / resume (owner first) and drain / undrain (no new jobs), by the donor or an admin."""
    flags = {
        "pause": {"paused": True},
        "resume": {"paused": False},
        "drain": {"draining": True},
        "undrain": {"draining": False},
    }
    if action not in flags:
        raise ApiError(
            404,
            "not_found",
            f"unknown node action {action!r}",
            field="action",
            fix="use one of pause, resume, drain, undrain",
        )
    nodes.set_flags(session, _own(session, principal, node_id, admin_ok=True), **flags[action])
    return _one(session, node_id)
