"""The agent against a real Ray head and a real coordinator: join, supervise, heartbeat, pause, leave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent import state
from agent.config import AgentSettings
from agent.hardware import report_from_parsed
from agent.parsers import parse_any
from agent.runner import HeartbeatLoop, join, leave
from tests.agent.ray_head import RayHead, ray_head
from tests.conftest import Coordinator, wait_for

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"

pytestmark = pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head() as h:
        yield h


def node_view(coordinator: Coordinator) -> dict[str, object]:
    return coordinator.admin.nodes()[0]  # type: ignore[no-any-return]


def test_agent_joins_restarts_ray_heartbeats_and_leaves(
    coordinator: Coordinator, head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator.settings, "ray_address", head.address)
    monkeypatch.setattr(coordinator.settings, "ray_auth_token", head.token)
    coordinator.new_member("alice")
    agent_token = coordinator.admin.create_token(kind="agent", member="alice")["token"]
    settings = AgentSettings(
        coordinator=coordinator.url,
        token=agent_token,
        state_dir=tmp_path / "state",
        node_name="donor-1",
        heartbeat_interval_s=0.3,
        ray_temp_dir=head.temp_dir,
    )
    report = report_from_parsed(parse_any(H100_CSV.read_text()))
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3"]

    # a new node waits for an admin: the agent heartbeats, and starts no Ray worker until approved
    with ThreadPoolExecutor(1) as pool:
        joining = pool.submit(join, settings, report, calibrate=False)
        (waiting,) = wait_for(lambda: coordinator.admin.nodes(), timeout=30, what="the agent to register")
        first_beat = waiting["last_heartbeat_at"]
        wait_for(  # heartbeats while waiting: the node is seen online
            lambda: node_view(coordinator)["last_heartbeat_at"] != first_beat, timeout=10, what="a heartbeat"
        )
        assert node_view(coordinator)["state"] == "online" and node_view(coordinator)["approved"] is False
        assert not joining.done() and not head.nodes_with(f"coop_node_{waiting['id']}")
        coordinator.admin.approve_node(waiting["id"])
        agent = joining.result(timeout=30)  # within a heartbeat interval of the approval
    loop = HeartbeatLoop(agent)
    try:
        resource = f"coop_node_{agent.node_id}"
        assert agent.node_id == waiting["id"] and agent.ray is not None
        assert state.load(settings.state_dir).node_id == agent.node_id  # a restart rejoins as this node
        (ray_node,) = wait_for(lambda: head.nodes_with(resource), timeout=60, what="the agent's Ray node")
        assert ray_node["Resources"]["GPU"] == 1
        assert ray_node["Labels"]["coop/member"] == "alice"
        assert ray_node["Labels"]["coop/gpu-model"] == "H100"
        assert node_view(coordinator)["gpus"][0]["model"] == "H100"  # type: ignore[index]

        # killing the Ray child: the agent starts a new one
        assert agent.ray is not None and agent.ray.proc is not None
        first_pid = agent.ray.proc.pid
        agent.ray.proc.kill()
        wait_for(
            lambda: agent.ray.restarts >= 1 and agent.ray.proc.pid != first_pid,
            timeout=30,  # type: ignore[union-attr]
            what="the Ray child to be restarted",
        )
        wait_for(
            lambda: [n for n in head.nodes_with(resource) if n["NodeID"] != ray_node["NodeID"]],
            timeout=60,
            what="a new Ray node after the restart",
        )

        # heartbeats, and the owner's pause shows up within one heartbeat
        loop.start()
        wait_for(lambda: node_view(coordinator)["state"] == "online", timeout=10)
        state.set_paused(settings.state_dir, True)
        wait_for(lambda: node_view(coordinator)["paused"] is True, timeout=2, what="pause to reach the coordinator")
        assert node_view(coordinator)["reclaim"] is True
        state.set_paused(settings.state_dir, False)
        wait_for(lambda: node_view(coordinator)["paused"] is False, timeout=2, what="resume")

        # heartbeats stop: offline after three missed intervals; they resume: online again
        loop.stop()
        wait_for(lambda: node_view(coordinator)["state"] == "offline", timeout=10, what="node offline")
        loop = HeartbeatLoop(agent)
        loop.start()
        wait_for(lambda: node_view(coordinator)["state"] == "online", timeout=5, what="node back online")
    finally:
        loop.stop()
        leave(agent)
    assert node_view(coordinator)["state"] == "left"
    wait_for(lambda: not head.nodes_with(f"coop_node_{agent.node_id}"), timeout=60, what="the Ray node to go")


def test_coop_agent_join_service_leaves_cleanly_on_sigterm(
    coordinator: Coordinator, head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real `coop-agent join` process: joins, answers `coop-agent pause`, and leaves on SIGTERM."""
    monkeypatch.setattr(coordinator.settings, "ray_address", head.address)
    monkeypatch.setattr(coordinator.settings, "ray_auth_token", head.token)
    coordinator.new_member("bob")
    token = coordinator.admin.create_token(kind="agent", member="bob")["token"]
    state_dir = tmp_path / "state"
    env = {**os.environ, "COOP_AGENT_RAY_TEMP_DIR": str(head.temp_dir), "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.3"}
    log = tmp_path / "agent.log"
    cmd = [
        sys.executable,
        "-m",
        "agent.main",
        "join",
        "--coordinator",
        coordinator.url,
        "--token",
        token,
        "--state-dir",
        str(state_dir),
        "--name",
        "donor-2",
        "--hardware-from",
        str(H100_CSV),
        "--no-calibrate",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: coordinator.admin.nodes(), timeout=30, what="registration")
        node_id = node_view(coordinator)["id"]
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=30, what="the agent to say it waits")
        assert f"coop admin node approve {node_id}" in log.read_text()
        assert not (state_dir / "ray.log").exists()  # no Ray worker was ever started
        coordinator.admin.approve_node(node_id)
        wait_for(lambda: head.nodes_with(f"coop_node_{node_id}"), timeout=60, what="the Ray worker")
        subprocess.run(
            [sys.executable, "-m", "agent.main", "pause", "--state-dir", str(state_dir)],
            check=True,
            capture_output=True,
        )
        wait_for(lambda: node_view(coordinator)["paused"] is True, timeout=2, what="the pause")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert node_view(coordinator)["state"] == "left"
    wait_for(lambda: not head.nodes_with(f"coop_node_{node_id}"), timeout=60, what="the Ray node to go")
    assert "leaving the cooperative" in log.read_text()


def test_an_agent_awaiting_approval_leaves_cleanly_on_sigterm(coordinator: Coordinator, tmp_path: Path) -> None:
    """Stopped before an admin approved its node: the agent leaves at once, having started no Ray."""
    coordinator.new_member("carol")
    token = coordinator.admin.create_token(kind="agent", member="carol")["token"]
    log = tmp_path / "agent.log"
    env = {**os.environ, "COOP_AGENT_TOKEN": token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.3"}
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", coordinator.url, "--name", "donor-3",
           "--state-dir", str(tmp_path / "state"), "--hardware-from", str(H100_CSV), "--no-calibrate"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=30, what="the agent to wait for approval")
        first_beat = node_view(coordinator)["last_heartbeat_at"]
        wait_for(lambda: node_view(coordinator)["last_heartbeat_at"] != first_beat, timeout=10, what="a heartbeat")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (node_view(coordinator)["state"], node_view(coordinator)["approved"]) == ("left", False)
    text = log.read_text()
    assert "leaving the cooperative" in text and not (tmp_path / "state" / "ray.log").exists()
