"""Execution backends: where an attempt actually runs. The coordinator decides placement; a backend
only launches, watches, stops and reads logs of what it was told to run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

RunState = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST", "MISSING"]


@dataclass(frozen=True)
class Launch:
    """One attempt to run: everything a backend needs, nothing it must look up."""

    ref: str  # deterministic per attempt (coop-<job>-<attempt>): a retried launch cannot run twice
    command: str  # shell command: setup && run
    env: dict[str, str]
    workdir: Path | None
    node_resource: str  # the chosen node's own custom resource (coop_node_<id>)
    gpus: int
    cpus: int
    grace_s: float  # SIGTERM, then SIGKILL after this long, when stopped
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    exit_code: int | None = None
    message: str = ""


class Backend(Protocol):
    name: str

    def submit(self, launch: Launch) -> None:
        """Start the attempt; submitting the same ``ref`` twice must not start it twice."""

    def status(self, ref: str) -> RunStatus: ...

    def stop(self, ref: str) -> None: ...

    def logs(self, ref: str) -> str:
        """The attempt's whole output so far."""
        ...
