"""Registration, heartbeats, liveness and submit-time feasibility."""

from __future__ import annotations

import pytest

from coop.client import CoopError
from coop.schemas import ForeignProcess, GpuTelemetry, Heartbeat
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, wait_for


def test_register_rejoin_keeps_the_node_id(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    first = agent.register_node(node("box", gpus=2))
    again = agent.register_node(node("box", gpus=1, memory_gb=12))
    assert again["id"] == first["id"]
    assert [(g["index"], g["memory_gb"], g["model"]) for g in again["gpus"]] == [(0, 12, "RTX4090")]
    assert len(coordinator.admin.nodes()) == 1


def test_heartbeat_carries_telemetry_and_the_reclaim_signal(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    box = agent.register_node(node("box"))["id"]
    hb = Heartbeat(
        gpus=[GpuTelemetry(index=0, utilization_pct=97, memory_used_gb=20, temperature_c=81, power_w=420)],
        foreign_processes=[ForeignProcess(pid=4242, name="blender", gpu_index=0)],
    )
    out = agent.heartbeat(box, hb)
    assert out["reclaim"] is True and "blender" in out["reclaim_reason"]
    assert out["telemetry"]["gpus"][0]["temperature_c"] == 81
    paused = agent.heartbeat(box, Heartbeat(paused=True))
    assert paused["paused"] is True and paused["reclaim_reason"] == "owner paused the node"
    resumed = agent.heartbeat(box, Heartbeat())
    assert resumed["reclaim"] is False and resumed["paused"] is False
    assert alice.nodes()[0]["telemetry"]["foreign_processes"] == []


def test_missed_heartbeats_turn_a_node_offline_and_back(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    box = agent.register_node(node("box"))["id"]
    admin = coordinator.admin
    # the fixture's heartbeat interval is 0.5 s: three missed intervals make it offline
    wait_for(lambda: admin.nodes()[0]["state"] == "offline", timeout=10, what="node offline")
    assert agent.heartbeat(box, Heartbeat())["state"] == "online"
    assert admin.nodes()[0]["state"] == "online"


def test_leave_marks_the_node_gone(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    box = agent.register_node(node("box"))["id"]
    assert agent.leave(box)["state"] == "left"


def test_jobs_wait_while_nothing_is_registered(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    assert alice.submit(job_spec(gpus=64))["state"] == "PENDING"


@pytest.mark.parametrize(
    ("resources", "field", "words"),
    [
        ({"gpus": 8}, "spec.resources.gpus", "largest node has 4"),
        ({"gpus": 1, "gpu_memory": "80GB"}, "spec.resources.gpu_memory", "no GPU has more than 24 GB"),
        ({"gpus": 1, "gpu": ["H100"]}, "spec.resources.gpu", "H100"),
        ({"gpus": 1, "compute_capability": "9.0+"}, "spec.resources.compute_capability", "9"),
        ({"gpus": 1, "tier": "hpc"}, "spec.resources.tier", "hpc"),
        ({"gpus": 0, "cpus": 512}, "spec.resources.cpus", "largest node has 32"),
    ],
)
def test_impossible_requests_are_refused_with_the_reason(
    coordinator: Coordinator, resources: dict[str, object], field: str, words: str
) -> None:
    alice, _ = coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    agent.register_node(node("small", gpus=2, memory_gb=12, model="NVIDIA GeForce RTX 3060", cc=8.6, cpus=8))
    agent.register_node(node("big", gpus=4, memory_gb=24, cpus=32))
    spec = {"name": "x", "run": "true", "resources": resources}
    with pytest.raises(CoopError) as err:
        alice.submit(spec)
    assert err.value.status == 422
    assert err.value.errors[0]["field"] == field
    assert words in err.value.message
    assert err.value.errors[0]["fix"]
    assert alice.jobs() == []
    # what fits is accepted
    assert alice.submit(job_spec(gpus=4, gpu_memory="24GB"))["state"] == "PENDING"


def test_gpu_cap_refuses_jobs_larger_than_the_quota(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice", gpu_cap=2)
    with pytest.raises(CoopError) as err:
        alice.submit(job_spec(gpus=3))
    assert err.value.status == 422 and "at most 2" in err.value.message
    assert alice.submit(job_spec(gpus=2))["gpus"] == 2
