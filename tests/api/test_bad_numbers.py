"""No number may break the coordinator (issue 12): each reproducer of the fuzz run, on the real HTTP
app over SQLite and PostgreSQL. A refused request answers 422 naming the field, and changes nothing."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from coop.schemas import MAX_GRANT, MAX_ID, MAX_OFFSET
from coop.server.models import LEDGER_BOUND, LedgerEntry, aware
from coop.server.services import ledger, logs, nodes, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator
from tests.observability.cooperative import InProcessBackend


def send(c: Coordinator, method: str, path: str, token: str, raw: str | None = None) -> httpx.Response:
    """A request with a raw JSON body: ``1e400``, ``NaN`` and ``Infinity`` exactly as a client wrote them."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return httpx.request(method, c.url + path, content=raw, headers=headers, timeout=30)


def refused(response: httpx.Response, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in [e["field"] for e in body["errors"]], body
    return body


# --- node registration ---------------------------------------------------------------------------


def registration(**changes: Any) -> dict[str, Any]:
    return {**node("box", gpus=2).model_dump(mode="json"), **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tflops_per_gpu": 1e300}, "tflops_per_gpu"),  # the reproducer: +inf idle credit
        ({"tflops_per_gpu": 10_001}, "tflops_per_gpu"),
        ({"cpu_tflops": 1e6}, "cpu_tflops"),
        ({"memory_gb": 1e12}, "memory_gb"),
        ({"disk_gb": 1e20}, "disk_gb"),
        ({"cpus": 2**64}, "cpus"),
        ({"gpus": [{"index": 2**64, "name": "RTX 4090", "memory_gb": 24}]}, "gpus.0.index"),
        ({"gpus": [{"index": 0, "name": "RTX 4090", "memory_gb": 1e5}]}, "gpus.0.memory_gb"),
    ],
)
def test_absurd_hardware_is_refused(coordinator: Coordinator, changes: dict[str, Any], field: str) -> None:
    c = coordinator
    c.new_member("alice")
    agent = c.admin.create_token(kind="agent", member="alice")["token"]
    auth = {"Authorization": f"Bearer {agent}"}
    refused(httpx.post(f"{c.url}/v1/nodes", json=registration(**changes), headers=auth, timeout=30), field)
    assert c.admin.nodes() == []


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_tflops_are_refused(coordinator: Coordinator, value: str) -> None:
    c = coordinator
    c.new_member("alice")
    agent = c.admin.create_token(kind="agent", member="alice")["token"]
    raw = '{"name": "box", "cpus": 4, "memory_gb": 16, "tflops_per_gpu": %s}' % value  # noqa: UP031
    refused(send(c, "POST", "/v1/nodes", agent, raw), "tflops_per_gpu")
    assert c.admin.nodes() == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"gpus": [{"index": 0, "temperature_c": Infinity}]}', "gpus.0.temperature_c"),
        ('{"gpus": [{"index": 0, "power_w": NaN}]}', "gpus.0.power_w"),
        ('{"gpus": [{"index": 0, "memory_used_gb": 1e400}]}', "gpus.0.memory_used_gb"),
        ('{"foreign_processes": [{"pid": 18446744073709551616}]}', "foreign_processes.0.pid"),
        ('{"foreign_processes": [{"pid": 1, "gpu_index": 99999}]}', "foreign_processes.0.gpu_index"),
    ],
)
def test_absurd_telemetry_is_refused(coordinator: Coordinator, raw: str, field: str) -> None:
    c = coordinator
    c.new_member("alice")
    agent = c.admin.create_token(kind="agent", member="alice")["token"]
    node_id = c.client(agent).register_node(node("box", gpus=1))["id"]
    before = c.admin.nodes()
    refused(send(c, "POST", f"/v1/nodes/{node_id}/heartbeat", agent, raw), field)
    assert c.admin.nodes() == before


# --- grants, quotas and the ledger ---------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1e400", "Infinity", "-Infinity", "NaN", "1e308", "-1e308", "1000000001"])
def test_grants_are_finite_and_bounded(coordinator: Coordinator, amount: str) -> None:
    c = coordinator
    c.new_member("alice")
    body = refused(send(c, "POST", "/v1/members/alice/grants", c.admin_token, '{"amount": %s}' % amount), "amount")  # noqa: UP031
    assert "amount" in body["message"]
    after = c.admin.balance("alice", history=True)
    assert (after["member"], after["balance"], after["history"]) == ("alice", 0.0, [])


def test_two_grants_of_1e308_leave_members_metrics_and_scheduling_working(coordinator: Coordinator) -> None:
    """The PostgreSQL reproducer: two grants of 1e308 summed to infinity ("value out of range"), which
    broke /v1/members, /metrics and every scheduler cycle. Now both are refused, and even the
    largest grants the API allows sum without trouble."""
    c = coordinator
    c.new_member("alice")
    c.new_member("bob")
    for _ in range(2):
        refused(send(c, "POST", "/v1/members/alice/grants", c.admin_token, '{"amount": 1e308}'), "amount")
    for _ in range(3):
        c.admin.grant("bob", MAX_GRANT)
    c.admin.grant("alice", -MAX_GRANT)
    balances = {m["name"]: m["balance"] for m in c.admin.members()}
    assert balances["alice"] == -MAX_GRANT and balances["bob"] == 3 * MAX_GRANT
    metrics = httpx.get(f"{c.url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "coop_" in metrics.text
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, InProcessBackend())  # raised "value out of range" before
        totals = ledger.LedgerTally(c.settings.fair_share_half_life_h).read(session)
    assert all(math.isfinite(v) for v in totals.balances.values())


def test_huge_gpu_caps_are_refused(coordinator: Coordinator) -> None:
    c = coordinator
    c.new_member("alice", gpu_cap=4)
    token = c.admin_token
    refused(send(c, "POST", "/v1/members", token, '{"name": "bob", "gpu_cap": 18446744073709551616}'), "gpu_cap")
    refused(send(c, "PUT", "/v1/members/alice/quota", token, '{"gpu_cap": 1180591620717411303424}'), "gpu_cap")
    refused(send(c, "PUT", "/v1/members/alice/quota", token, '{"share": Infinity}'), "share")
    assert [(m["name"], m["gpu_cap"], m["share"]) for m in c.admin.members()] == [
        ("admin", None, 1.0),
        ("alice", 4, 1.0),
    ]


@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf, 1e13, -1e300])
@pytest.mark.parametrize("column", ["amount", "gpu_hours"])
def test_the_ledger_refuses_a_non_finite_entry(coordinator: Coordinator, column: str, amount: float) -> None:
    """The last line: even code that skips the API cannot write a non-finite amount (check constraints)."""
    c = coordinator
    c.new_member("alice")
    with Session(c.engine) as session:
        member_id = c.admin.members()[1]["id"]
        values: dict[str, Any] = {"amount": 1.0, "gpu_hours": 0.0, column: amount}
        session.add(LedgerEntry(member_id=member_id, kind="grant", note="direct", **values))
        with pytest.raises(IntegrityError):
            session.commit()
    assert c.admin.balance("alice")["balance"] == 0.0


# --- accrual -------------------------------------------------------------------------------------


def test_accrual_stays_within_the_ledger_for_a_node_registered_before_the_bounds(loopless: Coordinator) -> None:
    """A node row written before the API bounded TFLOP/s (1e300 per GPU) must not make the accrual
    insert an out-of-range amount: that would fail the whole accrual, every member's credit."""
    c = loopless
    alice = c.new_member("alice")[0]
    with Session(c.engine) as session:
        member_id = c.admin.members()[1]["id"]
        old = node("old-box", gpus=2).model_copy(update={"tflops_per_gpu": 1e300})  # not validated: an old row
        old_node = nodes.register(session, member_id, old)
        registered = aware(old_node.registered_at)
        nodes.set_approved(session, old_node, True, "test")  # as migration 0004 left every older node
    with Session(c.engine) as session:
        assert ledger.accrue(session, c.settings.idle_credit_rate, registered + timedelta(hours=1)) == 1
        (entry,) = session.exec(select(LedgerEntry).where(LedgerEntry.kind == "idle")).all()
    assert entry.amount == LEDGER_BOUND and math.isfinite(entry.gpu_hours)
    assert alice.balance("alice")["balance"] == LEDGER_BOUND


# --- ids, offsets and limits ---------------------------------------------------------------------

HUGE = str(2**70)


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", f"/v1/jobs/{HUGE}", "job_id"),
        ("GET", f"/v1/jobs/{2**63}", "job_id"),
        ("GET", f"/v1/jobs/{2**31}", "job_id"),  # PostgreSQL's INTEGER ends at 2**31 - 1
        ("POST", f"/v1/jobs/{HUGE}/cancel", "job_id"),
        ("GET", f"/v1/jobs/{HUGE}/logs", "job_id"),
        ("GET", f"/v1/jobs?offset={HUGE}", "offset"),
        ("GET", f"/v1/jobs?offset={2**63}", "offset"),
        ("GET", f"/v1/jobs?limit={HUGE}", "limit"),
        ("GET", f"/v1/jobs/1/logs?offset={HUGE}", "offset"),
        ("GET", f"/v1/jobs/1/logs?attempt={HUGE}", "attempt"),
        ("GET", f"/v1/nodes/{HUGE}", "node_id"),
        ("POST", f"/v1/nodes/{HUGE}/leave", "node_id"),
        ("POST", f"/v1/nodes/{HUGE}/heartbeat", "node_id"),
        ("POST", f"/v1/nodes/{HUGE}/pause", "node_id"),
        ("DELETE", f"/v1/tokens/{HUGE}", "token_id"),
        ("GET", f"/v1/members/admin/balance?limit={HUGE}", "limit"),
    ],
)
def test_huge_ids_and_offsets_are_refused(coordinator: Coordinator, method: str, path: str, field: str) -> None:
    c = coordinator
    c.new_member("alice")
    agent_only = path.endswith(("/leave", "/heartbeat"))
    token = c.admin.create_token(kind="agent", member="alice")["token"] if agent_only else c.admin_token
    refused(send(c, method, path, token, "{}" if method == "POST" else None), field)


def test_the_largest_log_offset_reads_nothing(coordinator: Coordinator) -> None:
    """A byte offset past what the filesystem can seek to (ext4: 2**44) made the log read fail."""
    c = coordinator
    member, token = c.new_member("alice")
    job_id = member.submit(job_spec("logged"))["id"]
    path = logs.log_path(c.settings, job_id, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"hello\n")
    assert member.logs(job_id, attempt=1)["data"] == "hello\n"
    assert member.logs(job_id, offset=MAX_OFFSET, attempt=1)["data"] == ""
    refused(send(c, "GET", f"/v1/jobs/{job_id}/logs?attempt=1&offset={2**44}", token), "offset")


@pytest.mark.parametrize("path", [f"/v1/jobs/{MAX_ID}", f"/v1/nodes/{MAX_ID}"])
def test_the_largest_id_is_merely_unknown(coordinator: Coordinator, path: str) -> None:
    response = send(coordinator, "GET", path, coordinator.admin_token)
    assert response.status_code == 404, response.text
