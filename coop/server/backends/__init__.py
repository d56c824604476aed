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
    memory_gb: float | None = None  # what the job asked for (Slurm: --mem)
    time_limit_s: int | None = None  # max_runtime (Slurm: --time, enforced by Slurm)
    gres: str | None = None  # Slurm: the GRES of the chosen node class, e.g. "gpu:rtx4090"
    owner: str = ""  # the job's member (id): a node keeps each member's checkpoint folders apart
    transfer_token: str = ""  # the attempt's own credential for its job's files (services.artifacts)
    # the job's last checkpoint from the store, for a backend whose nodes cannot fetch it (Slurm): a
    # local folder, and the set it came from
    checkpoint: Path | None = None
    checkpoint_set: int | None = None


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    exit_code: int | None = None
    message: str = ""
    retry: bool = True  # False: another attempt would only fail the same way (e.g. Slurm's TIMEOUT)


@dataclass(frozen=True)
class LogRead:
    """What one read of an attempt's output gave: its bytes from the offset asked for on."""

    data: bytes
    next_offset: int  # where the next read starts: always the offset asked for + len(data)
    more: bool = False  # the backend held more than one read gives: read again from next_offset


class Backend(Protocol):
    """Everything the coordinator asks of a backend; every backend (and every test stand-in) has it all."""

    name: str

    def submit(self, launch: Launch) -> None:
        """Start the attempt; submitting the same ``ref`` twice must not start it twice."""

    def status(self, ref: str) -> RunStatus: ...

    def stop(self, ref: str) -> None: ...

    def read_logs(self, ref: str, offset: int) -> LogRead:
        """The attempt's output (stdout and stderr, as bytes) from byte ``offset`` on, as far as the
        backend has it now; an offset past the end reads nothing. Output only grows, so the bytes at an
        offset never change: a caller keeps what it has and asks only past it. Raises when the backend
        cannot give it now (the caller decides what that holds up: never a state change)."""
        ...

    def fetch_files(self, ref: str, dest: Path) -> bool:
        """Copy what the ended attempt left in ``$COOP_OUTPUT_DIR`` into ``dest/output`` and in
        ``$COOP_CHECKPOINT_DIR`` into ``dest/checkpoint``; False when the backend's own wrapper sends
        them to the store itself (Ray: ``agent.job_files``)."""
        ...
