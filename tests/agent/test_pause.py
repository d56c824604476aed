"""``coop-agent pause/resume`` reach the running agent (a real ``coop-agent join`` process), report
what the coordinator then sees, and fail, saying where they looked, when no running agent would
read the flag."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from agent import control, state
from agent.main import app
from tests.conftest import Coordinator, wait_for

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"
pytestmark = pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)


def _node(coordinator: Coordinator, node_id: int) -> dict[str, Any]:
    return coordinator.admin.request("GET", f"/nodes/{node_id}")  # type: ignore[no-any-return]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = env or {k: v for k, v in os.environ.items() if k != "COOP_AGENT_STATE_DIR"}
    return subprocess.run([sys.executable, "-m", "agent.main", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def running_agent(coordinator: Coordinator, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """A real agent, approved, heartbeating (no Ray head: heartbeats only)."""
    coordinator.new_member("pia")
    token = coordinator.admin.create_token(kind="agent", member="pia")["token"]
    state_dir = tmp_path / "state"
    env = {**os.environ, "COOP_AGENT_TOKEN": token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.3"}
    log = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", coordinator.url, "--name", "donor-p",
           "--state-dir", str(state_dir), "--hardware-from", str(H100_CSV), "--no-calibrate"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=30, what="the agent to wait for approval")
        node_id = int(coordinator.admin.nodes()[0]["id"])
        coordinator.admin.approve_node(node_id)
        wait_for(lambda: "joined as node" in log.read_text(), timeout=30, what="the agent to join")
        yield proc, state_dir, node_id
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pause_and_resume_reach_the_running_agent_and_say_what_the_coordinator_sees(
    coordinator: Coordinator, running_agent: tuple[subprocess.Popen[bytes], Path, int]
) -> None:
    proc, state_dir, node_id = running_agent
    paused = _cli("pause", "--state-dir", str(state_dir))
    assert paused.returncode == 0, paused.stderr
    assert f"the running agent (pid {proc.pid}, state dir {state_dir})" in paused.stdout
    assert (
        f"the coordinator sees node {node_id} (donor-p): online, paused, reclaimed (owner paused the node)"
        in paused.stdout
    )
    assert _node(coordinator, node_id)["paused"] is True  # already: pause returns after the heartbeat

    status = json.loads(_cli("status", "--state-dir", str(state_dir), "--json").stdout)
    assert status["paused"] is True and status["agent_pid"] == proc.pid
    assert "reclaimed (owner paused the node)" in status["coordinator_sees"]

    # COOP_AGENT_STATE_DIR names it as well as --state-dir does
    resumed = _cli("resume", env={**os.environ, "COOP_AGENT_STATE_DIR": str(state_dir)})
    assert resumed.returncode == 0, resumed.stderr
    assert f"the coordinator sees node {node_id} (donor-p): online, taking guest jobs" in resumed.stdout
    assert _node(coordinator, node_id)["paused"] is False

    # an admin's pause from the coordinator is the coordinator's: the owner's resume says it stays
    coordinator.admin.request("POST", f"/nodes/{node_id}/pause")
    again = _cli("resume", "--state-dir", str(state_dir))
    assert again.returncode == 0 and "also paused from the coordinator" in again.stdout, again.stdout
    coordinator.admin.request("POST", f"/nodes/{node_id}/resume")

    # the same agent found without a pid file (from its command line), and as the default state dir
    (state_dir / state.AGENT_PID).unlink()
    assert control.locate(state_dir, Path("/nonexistent")).pid == proc.pid
    state.record_running(state_dir, proc.pid, psutil.Process(proc.pid).create_time())
    assert control.locate(None, state_dir).pid == proc.pid


def test_a_killed_agent_no_longer_counts(
    coordinator: Coordinator, running_agent: tuple[subprocess.Popen[bytes], Path, int]
) -> None:
    proc, state_dir, _ = running_agent
    proc.kill()
    proc.wait(timeout=10)
    assert (state_dir / state.AGENT_PID).exists()  # left behind by SIGKILL: its pid is checked, not trusted
    paused = _cli("pause", "--state-dir", str(state_dir))
    assert paused.returncode == 1
    assert f"no running coop-agent uses {state_dir}" in paused.stderr.replace("\n", " ")
    assert not state.is_paused(state_dir)


def test_a_state_dir_the_donor_cannot_write_says_to_use_sudo(
    running_agent: tuple[subprocess.Popen[bytes], Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-root donor and the service's /var/lib/coop-agent (0700, user coop-agent)."""
    proc, state_dir, _ = running_agent

    def refused(_dir: Path, _paused: bool) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("agent.main.set_paused", refused)
    result = CliRunner().invoke(app, ["pause", "--state-dir", str(state_dir)])
    assert result.exit_code == 1
    assert f"pid {proc.pid}" in result.output and "sudo coop-agent pause" in result.output
    assert "coop node pause NODE_ID" in result.output
