"""The agent's log: routine heartbeats say nothing at INFO; changes (pause, reclaim, approval, the
coordinator going away and coming back) do."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.runner import BeatLog
from coop.client import CoopError
from tests.conftest import Coordinator, wait_for

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"
LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)$")

on_sqlite = pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)


def _records(text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for m in map(LINE.match, text.splitlines()) if m]  # type: ignore[misc]


def _node(coordinator: Coordinator, node_id: int) -> dict[str, Any]:
    return coordinator.admin.request("GET", f"/nodes/{node_id}")  # type: ignore[no-any-return]


def _beats(coordinator: Coordinator, node_id: int, count: int) -> None:
    """Wait until the coordinator has recorded ``count`` more heartbeats of the node."""
    seen: set[str] = set()

    def more() -> bool:
        seen.add(str(_node(coordinator, node_id)["last_heartbeat_at"]))
        return len(seen) > count

    wait_for(more, timeout=30, what=f"{count} heartbeats")


@on_sqlite
def test_routine_heartbeats_log_nothing_at_info_and_changes_do(coordinator: Coordinator, tmp_path: Path) -> None:
    coordinator.new_member("dora")
    token = coordinator.admin.create_token(kind="agent", member="dora")["token"]
    state_dir = tmp_path / "state"
    env = {**os.environ, "COOP_AGENT_TOKEN": token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.05"}
    env.pop("COOP_AGENT_LOG_LEVEL", None)
    log = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", coordinator.url, "--name", "donor-log",
           "--state-dir", str(state_dir), "--hardware-from", str(H100_CSV), "--no-calibrate"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=30, what="the agent to wait for approval")
        node_id = int(coordinator.admin.nodes()[0]["id"])
        _beats(coordinator, node_id, 5)  # awaiting approval: beats, quietly
        coordinator.admin.approve_node(node_id)
        wait_for(lambda: "joined as node" in log.read_text(), timeout=30, what="the agent to join")
        start = len(log.read_text())
        _beats(coordinator, node_id, 40)  # at 0.05 s: 608 lines in 20 minutes at 2 s
        routine = _records(log.read_text()[start:])
        assert [r for r in routine if r[0] != "DEBUG"] == [], log.read_text()[start:]

        # the owner pauses: the change is logged, with what the coordinator now does
        start = len(log.read_text())
        subprocess.run([sys.executable, "-m", "agent.main", "pause", "--state-dir", str(state_dir)], check=True,
                       capture_output=True, env=env)  # fmt: skip
        wait_for(lambda: _node(coordinator, node_id)["reclaim"] is True, timeout=5, what="the pause")
        wait_for(lambda: "reclaims node" in log.read_text()[start:], timeout=5, what="the reclaim in the log")
        _beats(coordinator, node_id, 10)
        subprocess.run([sys.executable, "-m", "agent.main", "resume", "--state-dir", str(state_dir)], check=True,
                       capture_output=True, env=env)  # fmt: skip
        wait_for(lambda: "no longer reclaimed" in log.read_text()[start:], timeout=5, what="the resume in the log")
        _beats(coordinator, node_id, 10)
        changes = [(level, msg) for level, _, msg in _records(log.read_text()[start:]) if level != "DEBUG"]
        assert [msg.split(":")[0].split(" (")[0] for _, msg in changes] == [
            "the owner paused",
            f"the coordinator reclaims node {node_id}",
            "the owner resumed",
            f"node {node_id} is no longer reclaimed",
        ], changes
        assert all(level == "INFO" for level, _ in changes)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


@on_sqlite
def test_debug_level_shows_each_beat(coordinator: Coordinator, tmp_path: Path) -> None:
    """COOP_AGENT_LOG_LEVEL=DEBUG: one line a beat (and httpx's request lines), for support."""
    coordinator.new_member("ed")
    token = coordinator.admin.create_token(kind="agent", member="ed")["token"]
    env = {**os.environ, "COOP_AGENT_TOKEN": token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.05",
           "COOP_AGENT_LOG_LEVEL": "debug"}  # fmt: skip
    log = tmp_path / "agent.log"
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", coordinator.url, "--name", "donor-dbg",
           "--state-dir", str(tmp_path / "state"), "--hardware-from", str(H100_CSV), "--no-calibrate"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=30, what="the agent to wait for approval")
        coordinator.admin.approve_node(coordinator.admin.nodes()[0]["id"])
        wait_for(lambda: log.read_text().count("heartbeat sent (node") >= 5, timeout=30, what="beats at DEBUG")
        assert "HTTP Request: POST" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    beats = BeatLog(3)
    routine = {"state": "online", "approved": True, "paused": False, "coordinator_paused": False,
               "reclaim": False, "reclaim_reason": None, "draining": False}  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="coop.agent"):
        beats.answered(routine)
        for _ in range(5):
            beats.failed(CoopError("cannot reach the coordinator at http://x"), 2.0)
        beats.answered(routine)
        beats.answered({**routine, "approved": False})
        beats.answered({**routine, "approved": True, "coordinator_paused": True})
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert said == [
        ("WARNING", "heartbeat failed: cannot reach the coordinator at http://x (retrying every 2.0 s)"),
        ("INFO", "the coordinator answers again, after 5 failed heartbeats"),
        ("WARNING", "an admin revoked node 3's approval: no new jobs will be placed here"),
        ("INFO", "node 3 was approved by an admin"),
        ("INFO", "an admin paused node 3 from the coordinator (coop node pause)"),
    ]
