"""A node is admitted by an admin before it learns the Ray address and token and before jobs land on it.

Over real HTTP on SQLite and PostgreSQL; the scheduler cycle and the ledger are the real services,
driven by the test, with the in-process backend of tests/observability standing in for Ray.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from coop.client import CoopClient, CoopError
from coop.schemas import Heartbeat
from coop.server.models import ApiToken, Attempt, Gpu, LedgerEntry, Node, Pool, utcnow
from coop.server.services import ledger, nodes, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator
from tests.observability.cooperative import InProcessBackend

RAY_ADDRESS = "10.0.0.1:6379"


@pytest.fixture
def ray_token(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> str:
    """The coordinator hands this Ray head and token to approved nodes."""
    token = f"ray-secret-{secrets.token_hex(8)}"
    monkeypatch.setattr(coordinator.settings, "ray_address", RAY_ADDRESS)
    monkeypatch.setattr(coordinator.settings, "ray_auth_token", token)
    return token


def refusal(call: Any) -> CoopError:
    with pytest.raises(CoopError) as err:
        call()
    return err.value


def counts(c: Coordinator) -> dict[str, Any]:
    """Rows a refused request must not have changed."""
    with Session(c.engine) as s:
        return {
            "nodes": [(n.id, n.name, n.approved, n.state) for n in s.exec(select(Node).order_by(Node.id))],  # type: ignore[arg-type]
            "gpus": s.exec(select(func.count()).select_from(Gpu)).one(),
            "tokens": s.exec(select(func.count()).select_from(ApiToken)).one(),
        }


def cycle(c: Coordinator, backend: InProcessBackend) -> None:
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)


def attempts(c: Coordinator) -> list[tuple[int, int | None]]:
    with Session(c.engine) as s:
        return [(a.job_id, a.node_id) for a in s.exec(select(Attempt))]


def test_a_member_token_cannot_register_mint_agent_tokens_approve_or_see_the_ray_token(
    coordinator: Coordinator, ray_token: str
) -> None:
    c = coordinator
    alice, alice_token = c.new_member("alice")
    box = c.agent("alice", approve=False).register_node(node("box"))["id"]
    alice.submit(job_spec("mine"))
    before = counts(c)

    assert refusal(lambda: alice.register_node(node("laptop"))).status == 403
    for member in (None, "alice"):
        assert refusal(lambda m=member: alice.create_token(kind="agent", member=m)).status == 403  # type: ignore[misc]
    for call in (alice.approve_node, alice.revoke_node):
        err = refusal(lambda f=call: f(box))  # type: ignore[misc]
        assert err.status == 403 and "only an admin" in err.message
        assert f"coop admin node {call.__name__.split('_')[0]} {box}" in err.errors[0]["fix"]
    assert counts(c) == before

    # every GET the member can reach, and the node actions it may take: the Ray token is in none
    job_id = alice.jobs()[0]["id"]
    paths = {
        "node_id": box,
        "job_id": job_id,
        "array_id": job_id,  # not an array: a 404, which shows no more than the 200s do
        "index": 0,
        "name": "alice",
        "sha256": "0" * 64,
        "token_id": 1,
        "file_id": 1,
        "set_id": 1,
    }
    seen = 0
    headers = {"Authorization": f"Bearer {alice_token}"}
    for path, ops in httpx.get(c.url + "/openapi.json").json()["paths"].items():
        if "get" not in ops:
            continue
        resp = httpx.get(c.url + path.format(**paths), headers=headers, timeout=30)
        assert ray_token not in resp.text and RAY_ADDRESS not in resp.text, path
        seen += resp.status_code == 200
    for action in ("pause", "resume", "drain", "undrain"):
        assert ray_token not in str(alice.node_action(box, action))
    assert seen >= 8  # jobs, a job, its logs, nodes, a node, me, balance, ledger by job, health...


def test_a_new_node_waits_for_an_admin_then_gets_the_ray_token_and_jobs(
    coordinator: Coordinator, ray_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coop.nodes")
    c = coordinator
    alice, _ = c.new_member("alice")
    bob, _ = c.new_member("bob")
    agent = c.agent("alice", approve=False)
    backend = InProcessBackend()

    registered = agent.register_node(node("box", gpus=2))
    box = registered["id"]
    assert (registered["approved"], registered["ray_address"], registered["ray_auth_token"]) == (False, None, None)
    assert f"node {box} (box" in caplog.text and "awaits approval" in caplog.text
    assert f"coop admin node approve {box}" in caplog.text
    assert agent.heartbeat(box, Heartbeat())["approved"] is False  # heartbeats are taken: admins see it online
    assert c.admin.nodes()[0]["state"] == "online"
    again = agent.register_node(node("box", gpus=2))  # the agent restarted: still waiting
    assert (again["id"], again["approved"], again["ray_auth_token"]) == (box, False, None)

    job = bob.submit(job_spec("fits", gpus=1))["id"]
    agent.heartbeat(box, Heartbeat())
    cycle(c, backend)
    waiting = c.admin.job(job)
    assert waiting["state"] == "PENDING" and attempts(c) == []
    assert "1 matching node awaits an admin's approval" in waiting["reason"], waiting["reason"]
    metrics = httpx.get(c.url + "/metrics", timeout=30).text
    assert any(line.startswith("coop_nodes{") and 'state="unapproved"' in line and line.endswith(" 1.0")
               for line in metrics.splitlines()), metrics  # fmt: skip

    # neither the donor's own user token nor its agent token may admit the node
    before = counts(c)
    for who in (alice, agent):
        err = refusal(lambda w=who: w.approve_node(box))  # type: ignore[misc]
        assert err.status == 403 and f"coop admin node approve {box}" in err.errors[0]["fix"]
    assert counts(c) == before

    approved = c.admin.approve_node(box)
    assert approved["approved"] is True and approved["id"] == box
    assert "approved by admin/admin" in caplog.text
    assert c.admin.approve_node(box)["approved"] is True  # idempotent
    assert "already approved by admin/admin" in caplog.text
    joined = agent.register_node(node("box", gpus=2))
    assert (joined["id"], joined["approved"]) == (box, True)
    assert (joined["ray_address"], joined["ray_auth_token"]) == (RAY_ADDRESS, ray_token)

    agent.heartbeat(box, Heartbeat())
    cycle(c, backend)
    assert attempts(c) == [(job, box)]
    assert c.admin.job(job)["state"] in ("STARTING", "RUNNING")


def test_revoke_stops_new_jobs_and_withholds_the_ray_token(coordinator: Coordinator, ray_token: str) -> None:
    c = coordinator
    c.new_member("alice")
    bob, _ = c.new_member("bob")
    agent = c.agent("alice")  # approved as it registers
    box = agent.register_node(node("box", gpus=2))["id"]
    backend = InProcessBackend()
    first = bob.submit(job_spec("first", gpus=1))["id"]
    agent.heartbeat(box, Heartbeat())
    cycle(c, backend)
    assert attempts(c) == [(first, box)]

    assert refusal(lambda: bob.revoke_node(box)).status == 403
    revoked = c.admin.revoke_node(box)
    assert revoked["approved"] is False
    assert c.admin.revoke_node(box)["approved"] is False  # idempotent
    second = bob.submit(job_spec("second", gpus=1))["id"]  # box's other GPU is free
    rejoin = CoopClient.register_node(agent, node("box", gpus=2))  # the agent's own call, no test approval
    assert (rejoin["approved"], rejoin["ray_address"], rejoin["ray_auth_token"]) == (False, None, None)
    cycle(c, backend)
    assert c.admin.job(first)["state"] == "RUNNING"  # running work goes on (a cancel or preemption stops it)
    assert c.admin.job(second)["state"] == "PENDING"
    assert [a for a in attempts(c) if a[0] == second] == []
    assert "awaits an admin's approval" in c.admin.job(second)["reason"]


def test_an_unapproved_node_earns_no_idle_credit(coordinator: Coordinator) -> None:
    c = coordinator
    c.new_member("alice")
    agent = c.agent("alice", approve=False)
    box = agent.register_node(node("box", gpus=2))["id"]
    start = utcnow()

    def idle(hours: float) -> float:
        agent.heartbeat(box, Heartbeat())
        with Session(c.engine) as s:
            ledger.accrue(s, c.settings.idle_credit_rate, start + timedelta(hours=hours))
            return sum(e.amount for e in s.exec(select(LedgerEntry).where(LedgerEntry.node_id == box)))

    assert idle(1) == 0.0
    c.admin.approve_node(box)
    assert idle(2) > 0.0  # lent from the approval on


def test_pool_node_classes_are_approved_with_their_pool(coordinator: Coordinator) -> None:
    c = coordinator
    c.new_member("alice")
    with Session(c.engine) as s:
        member_id = next(m["id"] for m in c.admin.members() if m["name"] == "alice")
        pool = Pool(name="cluster", member_id=member_id, state="ok", enabled=False)  # no loop acts on it
        s.add(pool)
        s.flush()
        cls = {"name": "a100", "cpus": 32, "memory_gb": 256, "gpus": 4, "model": "A100", "gpu_memory_gb": 80,
               "gres": "gpu:a100", "usable": 2}  # fmt: skip
        nodes.sync_pool_classes(s, pool, [cls], online=True)
        s.commit()
        (row,) = s.exec(select(Node).where(Node.pool_id == pool.id)).all()
        assert row.approved is True
        node_id = row.id
    err = refusal(lambda: c.admin.revoke_node(node_id))  # type: ignore[arg-type]
    assert err.status == 409 and "pool" in err.message
