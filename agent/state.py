"""What the agent remembers between restarts: its node id, coordinator, token and calibration.

Kept in ``<state_dir>/state.json`` with mode 0600, so a restart rejoins as the same node.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class AgentState(BaseModel):
    coordinator: str | None = None
    token: str | None = None
    ca_file: str | None = None  # the cooperative's CA (--ca-file), when its certificate is not from a public CA
    node_id: int | None = None
    node_name: str | None = None
    tflops_per_gpu: float | None = None
    cpu_tflops: float | None = None


def state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def load(state_dir: Path) -> AgentState:
    path = state_file(state_dir)
    if not path.is_file():
        return AgentState()
    return AgentState.model_validate(json.loads(path.read_text()))


def save(state_dir: Path, state: AgentState) -> None:
    """Write atomically with tight permissions (the file holds the agent token)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state_file(state_dir).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(state.model_dump_json(indent=2))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(state_file(state_dir))


def pause_flag(state_dir: Path) -> Path:
    """``coop-agent pause`` creates this file; the running agent reads it before every heartbeat."""
    return state_dir / "paused"


def set_paused(state_dir: Path, paused: bool) -> None:
    flag = pause_flag(state_dir)
    if paused:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        flag.write_text("paused by the owner\n")
    else:
        flag.unlink(missing_ok=True)


def is_paused(state_dir: Path) -> bool:
    return pause_flag(state_dir).exists()


# --- what a running agent leaves in its state dir for `coop-agent pause/resume/status` -------------

AGENT_PID = "agent.pid"  # {"pid", "created"}: the join process using this state dir
SEEN = "coordinator.json"  # the last heartbeat: the pause flag it carried and what the coordinator said


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    """None when missing or half-written; PermissionError goes to the caller (someone else's agent)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def record_running(state_dir: Path, pid: int, created: float) -> None:
    _write_json(state_dir / AGENT_PID, {"pid": pid, "created": created})


def clear_running(state_dir: Path, pid: int) -> None:
    recorded = _read_json(state_dir / AGENT_PID)
    if recorded is not None and recorded.get("pid") == pid:
        (state_dir / AGENT_PID).unlink(missing_ok=True)


def recorded_agent(state_dir: Path) -> dict[str, Any] | None:
    return _read_json(state_dir / AGENT_PID)


WATCHED = ("id", "name", "state", "approved", "paused", "coordinator_paused", "reclaim", "reclaim_reason", "draining")


def record_seen(state_dir: Path, paused: bool, node: Any = None, error: str | None = None) -> None:
    """After each heartbeat: the pause flag it carried, and the coordinator's view of the node (or why
    it could not be reached). No secret in it."""
    view = {k: node.get(k) for k in WATCHED} if isinstance(node, dict) else None
    with contextlib.suppress(OSError):  # a full disk must not stop the heartbeats
        _write_json(state_dir / SEEN, {"at": time.time(), "pid": os.getpid(), "paused": paused, "node": view,
                                       "error": error})  # fmt: skip


def last_seen(state_dir: Path) -> dict[str, Any] | None:
    return _read_json(state_dir / SEEN)
