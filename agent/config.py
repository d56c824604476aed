"""Agent settings from ``COOP_AGENT_*`` environment variables (built by a function, not at import)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/coop-agent")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "coop-agent"


def default_ray_bin() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOP_AGENT_", extra="ignore")

    coordinator: str | None = Field(default=None, description="coordinator URL")
    token: str | None = Field(default=None, description="agent token (coop admin token create --agent)")
    ca_file: Path | None = Field(
        default=None, description="PEM file of the CA that signed the coordinator's certificate (else the public CAs)"
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    node_name: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    machine_id: str | None = Field(
        default=None, description="stands in for /etc/machine-id in the node identity (agent/identity.py); none: no id"
    )
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    ray_address: str | None = Field(default=None, description="override the head address the coordinator gives")
    ray_bin: str = Field(default_factory=default_ray_bin)
    ray_temp_dir: Path | None = None
    node_ip_address: str | None = Field(default=None, description="overlay (WireGuard/Tailscale) IP for Ray")
    network: str | None = Field(
        default=None, description="a label for this machine's network (e.g. lab-a): multi-node jobs keep to one"
    )
    ray_agent_port: int = Field(
        default=0, ge=0, le=65535, description="Ray dashboard agent port (job logs); 0: any free port"
    )
    sandbox: bool = Field(default=True, description="run guest work in the bubblewrap sandbox (agent/sandbox.py)")
    sandbox_hide: list[str] = Field(
        default_factory=list, description="more paths no guest may see (e.g. a coordinator's data dir on this machine)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="DEBUG shows every heartbeat; INFO only changes (pause, reclaim, approval, outages)"
    )
    calibrate_seconds: float = Field(default=20.0, gt=0, le=20)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load_agent_settings(**overrides: object) -> AgentSettings:
    return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
