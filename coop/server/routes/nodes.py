from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from coop.schemas import MAX_ID, GpuOut, Heartbeat, NodeOut, NodeRegister, NodeRegistered
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


def node_out(node: Node, member: str, gpus: list[Gpu], foreign: int = 0) -> NodeOut:
    return NodeOut.model_validate(
        {
            **node.model_dump(),
            "member": member,
            "gpus": [GpuOut.model_validate(g) for g in gpus],
            "foreign_ray_work": foreign,
        }
    )


def _one(session: SessionDep, node_id: int) -> NodeOut:
    (row,) = nodes.listing(session, node_id)
    return node_out(*row, foreign_work.per_node(session, node_id).get(node_id, 0))


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


@router.post("/nodes", status_code=201, response_model=NodeRegistered)
def register_node(req: NodeRegister, session: SessionDep, settings: SettingsDep, principal: AgentDep) -> NodeRegistered:
    """Register (or re-register, same name: same id) a node of the agent token's member. The Ray
    address and token are given only to a node an admin approved (``approved``); until then both are
    null and the agent heartbeats, registering again once its node is approved."""
    node = nodes.register(session, principal.member_id, req)
    approved = node.approved
    return NodeRegistered.model_validate(
        {
            **_one(session, node.id).model_dump(),  # type: ignore[arg-type]
            "ray_address": settings.ray_address if approved else None,
            "ray_auth_token": settings.ray_auth_token if approved else None,
            "heartbeat_interval_s": settings.heartbeat_interval_s,
        }
    )


@router.post("/nodes/{node_id}/heartbeat", response_model=NodeOut)
def heartbeat(node_id: NodeId, hb: Heartbeat, session: SessionDep, principal: AgentDep) -> NodeOut:
    nodes.heartbeat(session, _own(session, principal, node_id, admin_ok=False), hb)
    return _one(session, node_id)


@router.post("/nodes/{node_id}/leave", response_model=NodeOut)
def leave(node_id: NodeId, session: SessionDep, principal: AgentDep) -> NodeOut:
    nodes.leave(session, _own(session, principal, node_id, admin_ok=False))
    return _one(session, node_id)


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(session: SessionDep, _: UserDep) -> list[NodeOut]:
    foreign = foreign_work.per_node(session)
    return [node_out(n, m, g, foreign.get(n.id or 0, 0)) for n, m, g in nodes.listing(session)]


@router.get("/nodes/{node_id}", response_model=NodeOut)
def show_node(node_id: NodeId, session: SessionDep, _: UserDep) -> NodeOut:
    return _one(session, node_id)


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
