"""Execution backends: where an attempt actually runs. The coordinator decides placement; a backend
only launches, watches, stops and reads logs of what it was told to run."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

RunState = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "LOST", "MISSING"]
_GANG_REF = re.compile(r"-x(\d+)$")
_RANK_REF = re.compile(r"(?P<gang>.+-x\d+)-rank(?P<rank>\d+)")


def gang_ref(ref: str, nodes: int) -> str:
    """An attempt's ref, saying how many nodes its gang spans (``coop-12-1-x2``): a backend reads the
    gang's size back from the ref alone (``gang_size``), so status, stop and logs need nothing else."""
    return f"{ref}-x{nodes}" if nodes > 1 else ref


def gang_size(ref: str) -> int:
    match = _GANG_REF.search(ref)
    return int(match[1]) if match else 1


def rank_ref(ref: str, rank: int) -> str:
    """One rank's own ref within a gang (``coop-12-1-x2-rank1``); a one-node attempt's is its ref."""
    return f"{ref}-rank{rank}" if gang_size(ref) > 1 else ref


def split_ref(ref: str) -> tuple[str, int | None]:
    """(the attempt's ref, the rank) of a ref: a rank's ref names its gang's attempt and the rank; any
    other ref names its own attempt, with no rank (a gang's ref reads as rank 0 where one is needed)."""
    match = _RANK_REF.fullmatch(ref)
    if match and gang_size(match["gang"]) > 1:
        return match["gang"], int(match["rank"])
    return ref, None


def master_port(ref: str) -> int:
    """The port rank 0 listens on for the gang's rendezvous (``MASTER_PORT``): fixed per attempt, so
    every rank and every retried launch agrees on it, and spread over 20000-29999 so that two gangs
    whose rank 0 shares a node are unlikely to pick the same one."""
    return 20000 + zlib.crc32(ref.encode()) % 10000


def gang_env(nodes: int, rank: int | str, master_addr: str, port: int, gpus_per_node: int) -> dict[str, str]:
    """What every rank of a gang finds in its environment: Coop's names and the ones torchrun and
    ``torch.distributed``'s ``env://`` read, so ``torchrun --nnodes $COOP_NUM_NODES --node-rank
    $COOP_NODE_RANK --master-addr $MASTER_ADDR --master-port $MASTER_PORT ...`` works unchanged, and
    so does one process per node calling ``init_process_group(init_method="env://")`` (``RANK`` and
    ``WORLD_SIZE`` count nodes; torchrun sets its own for the processes it starts). ``rank`` may be a
    shell expression (Slurm's ``$SLURM_NODEID``) where the backend only knows it on the node."""
    return {
        "COOP_NUM_NODES": str(nodes),
        "COOP_NODE_RANK": str(rank),
        "COOP_GPUS_PER_NODE": str(gpus_per_node),
        "NNODES": str(nodes),
        "NODE_RANK": str(rank),
        "WORLD_SIZE": str(nodes),
        "RANK": str(rank),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(port),
    }


@dataclass(frozen=True)
class Launch:
    """One attempt to run: everything a backend needs, nothing it must look up.

    A gang (``nodes`` > 1) is one attempt of ``nodes`` processes started together, one per node, each
    with ``gpus``, ``cpus`` and ``memory_gb``; its ``ref`` says its size (``gang_ref``). Ray: one Ray
    job per rank (``rank_ref``), rank k pinned by ``node_resources[k]``; Slurm: one batch job of
    ``--nodes`` N whose command runs once per node through ``srun``. Either way each rank gets
    ``gang_env`` and one rank failing stops the others."""

    ref: str  # deterministic per attempt (coop-<job>-<attempt>): a retried launch cannot run twice
    command: str  # shell command: setup && run
    env: dict[str, str]
    workdir: Path | None
    node_resource: str  # the chosen node's own custom resource (coop_node_<id>); rank 0's in a gang
    gpus: int  # per node
    cpus: int  # per node
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
    nodes: int = 1  # the gang's size
    node_resources: tuple[str, ...] = ()  # a Ray gang: each rank's node resource, rank 0 first


@dataclass(frozen=True)
class RunStatus:
    state: RunState
    exit_code: int | None = None
    message: str = ""
    retry: bool = True  # False: another attempt would only fail the same way (e.g. Slurm's TIMEOUT)
    rank: int | None = None  # a gang: the rank whose end decided this state


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

    def status(self, ref: str) -> RunStatus:
        """A gang's state as one: LOST if any rank's node went, else FAILED (with that rank's exit code)
        if any rank failed, RUNNING until every rank ended, SUCCEEDED once all did."""
        ...

    def stop(self, ref: str) -> None:
        """Stop the attempt (every rank of a gang)."""

    def read_logs(self, ref: str, offset: int) -> LogRead:
        """The attempt's output (stdout and stderr, as bytes) from byte ``offset`` on, as far as the
        backend has it now; an offset past the end reads nothing. Output only grows, so the bytes at an
        offset never change: a caller keeps what it has and asks only past it. Raises when the backend
        cannot give it now (the caller decides what that holds up: never a state change). A gang's
        ranks each have their own output, read by ``rank_ref``; the gang's own ref reads rank 0."""
        ...

    def fetch_files(self, ref: str, dest: Path) -> bool:
        """Copy what the ended attempt left in ``$COOP_OUTPUT_DIR`` into ``dest/output`` and in
        ``$COOP_CHECKPOINT_DIR`` into ``dest/checkpoint``; False when the backend's own wrapper sends
        them to the store itself (Ray: ``agent.job_files``)."""
        ...
