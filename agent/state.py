"""What the agent remembers between restarts: its node id, coordinator, token and calibration.

Kept in ``<state_dir>/state.json`` with mode 0600, so a restart rejoins as the same node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel


class AgentState(BaseModel):
    coordinator: str | None = None
    token: str | None = None
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
