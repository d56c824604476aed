"""Removing (retiring) a node: who may, what it refuses, and what a retired node is afterwards: kept
for the ledger, out of placement, listings and metrics, its agent refused, its name free again."""

from __future__ import annotations

import httpx
import pytest
from sqlmodel import Session

from coop.client import CoopError
from coop.schemas import Heartbeat
from coop.server.models import Job
from coop.server.services import scheduling
from coop.states import JobState
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator
from tests.observability.cooperative import InProcessBackend


def _refused(call: object, status: int) -> CoopError:
    with pytest.raises(CoopError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.status == status, caught.value
    return caught.value


def _remove(client: object, node_id: int | str, force: object = None) -> dict[str, object]:
    params = None if force is None else {"force": force}
    return client.request("POST", f"/nodes/{node_id}/remove", params=params)  # type: ignore[attr-defined, no-any-return]


def test_who_may_remove_a_node_and_what_bad_requests_change(coordinator: Coordinator) -> None:
    """An admin removes any node, a donor its own (user token); another member's token gets 403, an
    agent token 403, an unknown node 404, a bad id or force value 422 naming the field; none of them
    changes anything."""
    alice, _ = coordinator.new_member("alice")
    bob, _ = coordinator.new_member("bob")
    agent = coordinator.agent("alice")
    first = agent.register_node(node("a1"))["id"]
    second = agent.register_node(node("a2"))["id"]
    admin = coordinator.admin
    before = admin.nodes()

    refused = _refused(lambda: _remove(bob, first), 403)
    assert refused.errors[0]["field"] == "node_id" and "another member" in refused.message
    assert "agent tokens" in _refused(lambda: _remove(agent, first), 403).message
    missing = _refused(lambda: _remove(admin, 999), 404)
    assert missing.errors[0]["field"] == "node_id" and "coop nodes" in missing.errors[0]["fix"]
    assert _refused(lambda: _remove(admin, 0), 422).errors[0]["field"] == "node_id"
    assert _refused(lambda: _remove(admin, 2**40), 422).errors[0]["field"] == "node_id"
    assert _refused(lambda: _remove(admin, first, "maybe"), 422).errors[0]["field"] == "force"
    assert admin.nodes() == before

    by_donor = _remove(alice, first)
    assert by_donor["state"] == "retired" and by_donor["retired_by"] == "removed by its donor alice/alice"
    by_admin = _remove(admin, second)
    assert by_admin["retired_by"] == "removed by admin admin/admin" and by_admin["requeued_jobs"] == []
    assert _remove(admin, second)["retired_at"] == by_admin["retired_at"]  # idempotent
    assert admin.nodes() == []


def test_a_retired_node_is_kept_but_out_of_listings_metrics_and_its_agent_is_refused(
    coordinator: Coordinator,
) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    req = node("box", gpus=1)
    box = agent.register_node(req)["id"]
    other = agent.register_node(node("other", gpus=1))["id"]
    admin = coordinator.admin

    def up_series() -> str:
        text = httpx.get(f"{coordinator.url}/metrics", timeout=10).text
        return "\n".join(line for line in text.splitlines() if line.startswith("coop_node_up{"))

    assert 'node="box"' in up_series()
    _remove(admin, box)

    assert [n["id"] for n in admin.nodes()] == [other]
    retired = admin.request("GET", "/nodes", params={"retired": "true"})
    assert [(n["id"], n["state"]) for n in retired] == [(box, "retired"), (other, "online")]
    assert admin.request("GET", f"/nodes/{box}")["state"] == "retired"  # its history stays readable
    assert 'node="box"' not in up_series() and 'node="other"' in up_series()  # so CoopNodeDown stops

    gone = _refused(lambda: agent.heartbeat(box, Heartbeat()), 410)
    assert "was removed from the cooperative (removed by admin admin/admin" in gone.message
    assert "coop-agent join" in gone.errors[0]["fix"] and gone.errors[0]["field"] == "node_id"
    _refused(lambda: agent.leave(box), 410)
    assert admin.request("GET", f"/nodes/{box}")["state"] == "retired"

    # the machine comes back: its agent's state dir names the retired node; it becomes a new node,
    # awaiting approval, under the same name (free again)
    plain = coordinator.agent("alice", approve=False)
    back = plain.register_node(req.model_copy(update={"node_id": box}))
    assert back["id"] not in (box, other) and back["name"] == "box" and back["approved"] is False
    assert back["matched_by"] == "new"
    assert f"node {box} (box) was removed from the cooperative" in back["note"]
    assert "awaits an admin's approval" in back["note"]


def test_removal_is_refused_while_jobs_run_unless_forced_which_requeues_them(loopless: Coordinator) -> None:
    c, backend = loopless, InProcessBackend()
    c.new_member("alice")
    bob = c.new_member("bob")[0]
    agent = c.agent("alice")
    busy = agent.register_node(node("busy", gpus=1))["id"]
    job = bob.submit(job_spec("j", 1))["id"]
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)
        scheduling.cycle(session, c.settings, backend)
    assert bob.job(job)["state"] == "RUNNING"

    refused = _refused(lambda: _remove(c.admin, busy), 409)
    assert refused.message == f"node {busy} (busy) runs 1 job(s): {job}"
    assert refused.errors[0]["field"] == "force" and "--force" in refused.errors[0]["fix"]
    assert c.admin.request("GET", f"/nodes/{busy}")["state"] == "online" and bob.job(job)["state"] == "RUNNING"

    forced = _remove(c.admin, busy, "true")
    assert forced["state"] == "retired" and forced["requeued_jobs"] == [job]
    spare = agent.register_node(node("spare", gpus=1))["id"]
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.reconcile(session, c.settings, backend)  # the lost-node path: stopped, LOST, requeued
        assert session.get(Job, job).state == JobState.PENDING  # type: ignore[union-attr]
        scheduling.cycle(session, c.settings, backend)
        scheduling.cycle(session, c.settings, backend)
    shown = bob.job(job)
    assert shown["state"] == "RUNNING" and shown["attempts"] == 2
    removed = f"node {busy} was removed from the cooperative ("
    assert any(removed in e["reason"] for e in shown["events"]), shown["events"]
    assert [(a["node_id"], a["state"]) for a in shown["attempts_detail"]] == [(busy, "LOST"), (spare, "RUNNING")]
