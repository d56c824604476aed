"""Who may do what: the authorisation matrix, case by case, over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from coop.client import CoopClient, CoopError
from coop.schemas import Heartbeat
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator


def status_of(call) -> int:  # type: ignore[no-untyped-def]
    try:
        call()
    except CoopError as exc:
        assert exc.status is not None
        return exc.status
    return 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/1"),
        ("POST", "/v1/jobs/1/cancel"),
        ("GET", "/v1/nodes"),
        ("POST", "/v1/nodes"),
        ("POST", "/v1/nodes/1/heartbeat"),
        ("GET", "/v1/members"),
        ("GET", "/v1/me"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/members/admin/balance"),
        ("PUT", "/v1/workdirs/" + "0" * 64),
    ],
)
def test_no_token_is_401(coordinator: Coordinator, method: str, path: str) -> None:
    resp = httpx.request(method, coordinator.url + path, json={})
    assert resp.status_code == 401
    body = resp.json()
    assert body["error"] == "unauthorized"
    assert body["errors"][0]["field"] == "Authorization" and "coop login" in body["errors"][0]["fix"]


def test_wrong_and_revoked_tokens_are_401(coordinator: Coordinator) -> None:
    assert status_of(lambda: coordinator.client("coop_not-a-real-token").me()) == 401
    alice, token = coordinator.new_member("alice")
    assert alice.me()["member"] == "alice"
    token_id = next(t["id"] for t in coordinator.admin.tokens() if t["member"] == "alice")
    coordinator.admin.revoke_token(token_id)
    assert status_of(lambda: coordinator.client(token).me()) == 401


def test_member_sees_and_cancels_only_its_own_jobs(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    a = alice.submit(job_spec("a"))
    b = bob.submit(job_spec("b"))
    assert [j["id"] for j in alice.jobs()] == [a["id"]]
    assert status_of(lambda: alice.job(b["id"])) == 403
    assert status_of(lambda: alice.cancel(b["id"])) == 403
    assert status_of(lambda: alice.logs(b["id"])) == 403
    assert status_of(lambda: alice.jobs(member="bob")) == 403
    assert bob.job(b["id"])["state"] == "PENDING"  # the refused cancel changed nothing
    assert len(bob.job(b["id"])["events"]) == 1


def test_admin_sees_and_cancels_all(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    a = alice.submit(job_spec("a"))
    admin = coordinator.admin
    assert admin.job(a["id"])["member"] == "alice"
    assert admin.cancel(a["id"])["state"] == "CANCELLED"


def test_agent_token_registers_and_heartbeats_only_its_members_nodes(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    coordinator.new_member("bob")
    alice_agent = coordinator.agent("alice")
    bob_agent = coordinator.agent("bob")
    registered = alice_agent.register_node(node("alice-box"))
    assert registered["member"] == "alice"
    assert alice_agent.heartbeat(registered["id"], Heartbeat())["state"] == "online"
    assert status_of(lambda: bob_agent.heartbeat(registered["id"], Heartbeat(paused=True))) == 403
    assert status_of(lambda: bob_agent.leave(registered["id"])) == 403
    assert coordinator.admin.nodes()[0]["paused"] is False


def test_agent_token_can_submit_nothing(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    assert status_of(lambda: agent.submit(job_spec())) == 403
    assert status_of(lambda: agent.jobs()) == 403
    assert status_of(lambda: agent.create_token(kind="agent")) == 403
    assert coordinator.admin.jobs() == []


def test_user_token_cannot_register_or_heartbeat(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    assert status_of(lambda: alice.register_node(node("box"))) == 403
    registered = coordinator.agent("alice").register_node(node("box"))
    assert status_of(lambda: alice.heartbeat(registered["id"], Heartbeat())) == 403


def test_node_flags_by_owner_or_admin_only(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    box = coordinator.agent("alice").register_node(node("box"))["id"]
    assert status_of(lambda: bob.node_action(box, "pause")) == 403
    assert alice.node_action(box, "pause")["paused"] is True
    assert coordinator.admin.node_action(box, "drain")["draining"] is True
    assert status_of(lambda: alice.node_action(box, "explode")) == 404


def test_members_tokens_and_balances(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    coordinator.new_member("bob")
    assert status_of(lambda: alice.members()) == 403
    assert status_of(lambda: alice.create_member("mallory")) == 403
    assert status_of(lambda: alice.set_quota("alice", gpu_cap=100)) == 403
    assert status_of(lambda: alice.grant("alice", 1000)) == 403
    assert alice.balance("alice")["balance"] == 0
    assert status_of(lambda: alice.balance("bob")) == 403
    assert coordinator.admin.balance("bob")["member"] == "bob"
    # only an admin creates agent tokens (they receive the Ray token): none for alice, nothing created
    before = len(coordinator.admin.tokens())
    assert status_of(lambda: alice.create_token(kind="agent")) == 403
    assert status_of(lambda: alice.create_token(kind="agent", member="bob")) == 403
    assert len(coordinator.admin.tokens()) == before
    assert coordinator.admin.create_token(kind="agent", member="alice")["kind"] == "agent"
    assert status_of(lambda: alice.create_token(user="bob")) == 403
    assert {t["member"] for t in alice.tokens()} == {"alice"}
    bob_token = next(t["id"] for t in coordinator.admin.tokens() if t["member"] == "bob")
    assert status_of(lambda: alice.revoke_token(bob_token)) == 404


def test_tokens_are_stored_hashed(coordinator: Coordinator) -> None:
    from sqlmodel import Session, select

    from coop.server.models import ApiToken

    _, token = coordinator.new_member("alice")
    with Session(coordinator.engine) as session:
        stored = session.exec(select(ApiToken)).all()
    assert all(token not in (t.token_hash, t.prefix) for t in stored)
    assert all(len(t.token_hash) == 64 for t in stored)
    assert CoopClient(coordinator.url, token).me()["member"] == "alice"
