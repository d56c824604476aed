"""What /metrics reports for a known cooperative (SQLite and PostgreSQL), who may read it, and what a
scrape costs."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event
from sqlmodel import Session

from coop.scheduler.feasibility import GpuShape
from coop.scheduler.model import JobView, MemberView, NodeView, Policy
from coop.scheduler.placement import place
from coop.server.metrics.collector import LedgerCollector, waiting_for
from coop.server.metrics.scheduler import FRESH_S, PREEMPTION_REASONS, SchedulerMetrics
from coop.server.models import Node, utcnow
from coop.spec import Resources
from tests.api.helpers import node
from tests.conftest import Coordinator
from tests.observability.conftest import METRICS_TOKEN, quiet
from tests.observability.cooperative import GPU_A, populate

GIB = 2**30
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def test_metrics_describe_the_cooperative(quiet_coordinator_db: Coordinator) -> None:
    c = quiet_coordinator_db
    assert not any(name.startswith("coop_placements") for name, _ in scrape(c.url, METRICS_TOKEN))  # no cycle yet
    t0 = utcnow().timestamp()
    coop = populate(c)
    try:
        t1 = utcnow().timestamp()
        m = scrape(c.url, METRICS_TOKEN)
    finally:
        coop.heartbeats.stop()

    # jobs by state and kind, and what the pending ones wait for
    assert value(m, "coop_jobs", state="RUNNING", kind="finetune") == 1
    assert value(m, "coop_jobs", state="RUNNING", kind="eval") == 1
    assert value(m, "coop_jobs", state="PENDING", kind="batch") == 2  # a3, d1
    assert value(m, "coop_jobs", state="SUCCEEDED", kind="eval") == 0  # every state and kind is reported
    expected = {"capacity": 2, "quota": 1, "matching_node": 1, "scheduler": 1}  # b1 a3 | c1 | d1 | l1
    for what, count in expected.items():
        assert value(m, "coop_pending_jobs", waiting_for=what) == count, what
        assert t0 <= value(m, "coop_pending_job_oldest_timestamp_seconds", waiting_for=what) <= t1

    # nodes and GPUs: gpu-b is paused by its owner, so its A100 takes no work
    assert value(m, "coop_nodes", state="online", tier="consumer", gpu_model="RTX4090") == 1
    assert value(m, "coop_nodes", state="paused", tier="consumer", gpu_model="A100") == 1
    assert value(m, "coop_nodes", state="offline", tier="consumer", gpu_model="A100") == 0
    assert value(m, "coop_node_up", node="gpu-a", member="alice") == 1
    assert t0 <= value(m, "coop_node_last_heartbeat_timestamp_seconds", node="gpu-b") <= t1 + 5
    assert value(m, "coop_gpus", gpu_model="RTX4090", state="allocated") == 2
    assert value(m, "coop_gpus", gpu_model="RTX4090", state="idle") == 0
    assert value(m, "coop_gpus", gpu_model="A100", state="unavailable") == 1
    assert value(m, "coop_gpus", gpu_model="A100", state="allocated") == 0

    # per-GPU telemetry from the last heartbeat, in base units
    for index, (util, mem, temp, power) in enumerate(GPU_A):
        gpu = {"node": "gpu-a", "member": "alice", "gpu": str(index), "gpu_model": "RTX4090"}
        assert value(m, "coop_gpu_utilization_ratio", **gpu) == pytest.approx(util / 100)
        assert value(m, "coop_gpu_memory_used_bytes", **gpu) == mem * GIB
        assert value(m, "coop_gpu_memory_total_bytes", **gpu) == 24 * GIB
        assert value(m, "coop_gpu_temperature_celsius", **gpu) == temp
        assert value(m, "coop_gpu_power_watts", **gpu) == power

    # members: one accrued hour of 3 GPUs at 165 TFLOP/s = 4.95 credits from bob to alice
    assert value(m, "coop_member_balance_credits", member="bob") == pytest.approx(100 - 4.95, rel=0.01)
    assert value(m, "coop_member_balance_credits", member="alice") == pytest.approx(4.95, rel=0.01)
    assert value(m, "coop_member_gpu_hours_used_total", member="bob") == pytest.approx(3, rel=0.01)
    assert value(m, "coop_member_gpu_hours_donated_total", member="alice") == pytest.approx(3, rel=0.01)
    assert value(m, "coop_member_gpus_in_use", member="bob") == 2
    assert value(m, "coop_member_gpu_cap", member="carol") == 0
    assert value(m, "coop_member_share", member="dave") == 1
    assert value(m, "coop_member_storage_bytes", member="bob") == 0  # nothing stored yet
    assert value(m, "coop_member_storage_quota_bytes", member="bob") == 200e9  # COOP_STORAGE_QUOTA_GB's default
    assert value(m, "coop_member_fair_share_usage_credits", member="bob") == pytest.approx(4.95, rel=0.01)

    # what the scheduler did: a1 and b1 (finetune) and a2 (eval) placed, b1 preempted for its owner
    assert value(m, "coop_placements_total", kind="finetune") == 2
    assert value(m, "coop_placements_total", kind="eval") == 1
    assert value(m, "coop_preemptions_total", reason="owner_paused") == 1
    assert value(m, "coop_preemptions_total", reason="reclaim") == 0
    assert value(m, "coop_queue_wait_seconds_count", kind="finetune") == 2
    assert value(m, "coop_scheduler_cycle_seconds_count") == 4
    assert not {k for _, labels in m for k, _ in labels} & {"job", "job_id", "id", "attempt"}  # no job ids
    assert value(m, "coop_build_info") == 1


def test_a_node_past_its_heartbeat_timeout_is_down_at_the_next_scrape(quiet_coordinator: Coordinator) -> None:
    c = quiet_coordinator
    c.new_member("alice")
    box = c.agent("alice").register_node(node("box"))["id"]
    m = scrape(c.url, METRICS_TOKEN)
    assert value(m, "coop_node_up", node="box") == 1
    with Session(c.engine) as session:  # its agent fell silent 2 s ago: the timeout is 3 x 0.5 s
        row = session.get(Node, box)
        assert row is not None
        row.last_heartbeat_at = utcnow() - timedelta(seconds=2)
        session.add(row)
        session.commit()
    m = scrape(c.url, METRICS_TOKEN)
    assert value(m, "coop_node_up", node="box") == 0
    assert value(m, "coop_nodes", state="offline", gpu_model="RTX4090") == 1
    assert value(m, "coop_gpus", gpu_model="RTX4090", state="unavailable") == 2
    assert c.admin.nodes()[0]["state"] == "online"  # no liveness loop ran: the scrape judged it


def test_metrics_token_is_required_when_configured(quiet_coordinator: Coordinator, tmp_path: Path) -> None:
    url = f"{quiet_coordinator.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 401
        body = resp.json()
        assert body["error"] == "unauthorized"
        assert body["errors"][0]["field"] == "Authorization"
        assert "COOP_METRICS_TOKEN" in body["errors"][0]["fix"]
    assert "coop_build_info" in httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    # an admin's API token is not the metrics token
    assert httpx.get(url, headers={"Authorization": f"Bearer {quiet_coordinator.admin_token}"}).status_code == 401
    with quiet(tmp_path / "open", token=None) as open_coordinator:  # no token configured: open
        assert httpx.get(f"{open_coordinator.url}/metrics").status_code == 200


def _statements_per_scrape(c: Coordinator) -> int:
    me = threading.get_ident()
    count = 0

    def on_execute(*_: Any) -> None:
        nonlocal count
        if threading.get_ident() == me:
            count += 1

    event.listen(c.engine, "before_cursor_execute", on_execute)
    try:
        families = list(LedgerCollector(c.engine, c.settings).collect())
    finally:
        event.remove(c.engine, "before_cursor_execute", on_execute)
    assert families
    return count


def test_a_scrape_costs_the_same_few_queries_however_many_nodes(quiet_coordinator: Coordinator) -> None:
    c = quiet_coordinator
    c.new_member("alice")
    agent = c.agent("alice")
    agent.register_node(node("n0"))
    few = _statements_per_scrape(c)
    for i in range(1, 15):
        agent.register_node(node(f"n{i}"))
    # one per table read, storage per member included; attempts (how they ended) and pools read once each
    assert _statements_per_scrape(c) == few <= 10


def test_only_a_process_that_schedules_reports_scheduler_metrics() -> None:
    """A standby worker or coordinator reports no scheduler series (not zeros that look like resets)."""
    now = [1000.0]
    m = SchedulerMetrics(clock=lambda: now[0])
    assert list(m.collect()) == []  # never ran a cycle: not the leader
    m.cycle_done(0.02)
    names = {f.name for f in m.collect()}
    assert {"coop_scheduler_cycle_seconds", "coop_placements", "coop_preemptions", "coop_queue_wait_seconds"} <= names
    preemptions = next(f for f in m.collect() if f.name == "coop_preemptions")
    assert {s.labels["reason"] for s in preemptions.samples} == set(PREEMPTION_REASONS)  # all there, at zero
    now[0] += FRESH_S + 1  # lost the leader lock: no cycle since
    assert list(m.collect()) == []


def test_waiting_for_reads_the_schedulers_reasons() -> None:
    """The labels follow the reasons placement gives (if their wording changes, this fails)."""
    gpu = GpuShape("RTX4090", 24, 8.9)
    busy = NodeView(1, "busy", 1, "consumer", 8, 64, (gpu,), set(), 8, 64)
    members = [MemberView(1, 1.0, None, 0, 0, 0), MemberView(2, 1.0, 0, 0, 0, 0)]
    jobs = [
        JobView(1, 1, Resources(gpus=1), "normal", 0, True),  # matches, but the node is busy
        JobView(2, 2, Resources(gpus=1), "normal", 0, True),  # member 2's cap is 0
        JobView(3, 1, Resources(gpus=2), "normal", 0, True),  # no node has 2 GPUs
    ]
    reasons = place(jobs, [busy], members, Policy(), 0).waiting
    assert [waiting_for(reasons[i]) for i in (1, 2, 3)] == ["capacity", "quota", "matching_node"]
    assert waiting_for(place(jobs[:1], [], members, Policy(), 0).waiting[1]) == "matching_node"
    assert waiting_for("waiting for the scheduler") == waiting_for(None) == "scheduler"
    assert waiting_for("requeued after preemption") == "scheduler"
