"""A small cooperative with something in every metric: members, donated nodes heartbeating with GPU
telemetry, running, pending and preempted jobs, ledger entries.

The scheduler cycles and the ledger accrual are the real services, driven by the test; only the
execution backend is played in-process (the metrics, not Ray, are under test here).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session

from coop.client import CoopClient
from coop.schemas import GpuTelemetry, Heartbeat
from coop.server.backends import Launch, LogRead, RunStatus
from coop.server.models import utcnow
from coop.server.services import ledger, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator


class InProcessBackend:
    """Plays Ray's part: every submitted attempt runs until it is stopped. A test writes an attempt's
    output into ``output``; ``reads`` records each log read (ref, offset), ``read_limit`` caps what one
    read gives (as a Slurm pool's does), and ``log_errors`` makes reading an attempt's logs raise."""

    name = "ray"

    def __init__(self, read_limit: int | None = None) -> None:
        self.runs: dict[str, str] = {}
        self.output: dict[str, bytes] = {}
        self.reads: list[tuple[str, int]] = []
        self.read_limit = read_limit
        self.log_errors: dict[str, Exception] = {}

    def submit(self, launch: Launch) -> None:
        self.runs.setdefault(launch.ref, "RUNNING")

    def status(self, ref: str) -> RunStatus:
        return RunStatus(self.runs.get(ref, "MISSING"))  # type: ignore[arg-type]

    def stop(self, ref: str) -> None:
        if ref in self.runs:
            self.runs[ref] = "STOPPED"

    def fetch_files(self, ref: str, dest: Path) -> bool:
        return False  # as on Ray: a wrapper would send them (tests/api/test_artifacts.py plays it)

    def read_logs(self, ref: str, offset: int) -> LogRead:
        self.reads.append((ref, offset))
        if ref in self.log_errors:
            raise self.log_errors[ref]
        data = self.output.get(ref, b"")[offset:]
        more = self.read_limit is not None and len(data) > self.read_limit
        data = data[: self.read_limit] if self.read_limit is not None else data
        return LogRead(data, offset + len(data), more)


class Heartbeats:
    """What each node's agent does: heartbeat every ``interval`` seconds, from its own thread."""

    def __init__(self, client: CoopClient, interval: float = 0.2) -> None:
        self.client = client
        self.interval = interval
        self.beats: dict[int, Heartbeat] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-heartbeats", daemon=True)
        self.thread.start()

    def set(self, node_id: int, hb: Heartbeat | None) -> None:
        """Send ``hb`` from now on (None: this node's agent falls silent), once right away."""
        with self.lock:
            if hb is None:
                self.beats.pop(node_id, None)
            else:
                self.beats[node_id] = hb
                self.client.heartbeat(node_id, hb)

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            with self.lock:
                for node_id, hb in self.beats.items():
                    self.client.heartbeat(node_id, hb)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def telemetry(*gpus: tuple[float, float, float, float], paused: bool = False) -> Heartbeat:
    """A heartbeat with (utilisation %, memory used GiB, temperature C, power W) per GPU index."""
    return Heartbeat(
        paused=paused,
        gpus=[
            GpuTelemetry(index=i, utilization_pct=u, memory_used_gb=m, temperature_c=t, power_w=p)
            for i, (u, m, t, p) in enumerate(gpus)
        ],
    )


GPU_A = ((50.0, 10.0, 70.0, 300.0), (100.0, 20.0, 88.0, 420.0))  # node gpu-a: two RTX 4090
GPU_B = ((0.0, 1.0, 40.0, 60.0),)  # node gpu-b: one A100


@dataclass
class Cooperative:
    c: Coordinator
    backend: InProcessBackend
    heartbeats: Heartbeats
    nodes: dict[str, int]
    jobs: dict[str, int] = field(default_factory=dict)

    def cycle(self) -> None:
        with Session(self.c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, self.c.settings, self.backend)

    def job(self, name: str) -> Any:
        return self.c.admin.job(self.jobs[name])


def spec(name: str, kind: str, gpus: int = 1, **resources: Any) -> dict[str, Any]:
    return {**job_spec(name, gpus, **resources), "kind": kind}


def populate(c: Coordinator) -> Cooperative:
    """alice donates gpu-a (2x RTX 4090) and gpu-b (1x A100); bob and carol run jobs; dave asks too much.

    Afterwards: bob's a1 (finetune) and a2 (eval) run on gpu-a; b1 (finetune, A100) was preempted
    when alice paused gpu-b and waits for capacity, like a3 (batch); carol's c1 waits for her quota,
    dave's d1 for a matching node, and bob's late l1 for the scheduler. One hour of run time is
    accrued in the ledger.
    """
    c.new_member("alice")
    bob, _ = c.new_member("bob")
    carol, _ = c.new_member("carol")
    dave, _ = c.new_member("dave")
    c.admin.grant("bob", 100, "welcome")
    jobs = {"d1": dave.submit(spec("d1", "batch", gpus=0, cpus=64))["id"]}  # accepted: nothing registered yet
    agent = c.agent("alice")
    nodes = {
        "gpu-a": agent.register_node(node("gpu-a", gpus=2))["id"],
        "gpu-b": agent.register_node(node("gpu-b", gpus=1, memory_gb=80, model="NVIDIA A100-SXM4-80GB", cc=8.0))["id"],
    }
    beats = Heartbeats(c.agent("alice"))
    beats.set(nodes["gpu-a"], telemetry(*GPU_A))
    beats.set(nodes["gpu-b"], telemetry(*GPU_B))
    coop = Cooperative(c, InProcessBackend(), beats, nodes, jobs)
    for name, kind, gpu in (("a1", "finetune", "RTX4090"), ("a2", "eval", "RTX4090"), ("b1", "finetune", "A100")):
        jobs[name] = bob.submit(spec(name, kind, gpu=[gpu]))["id"]
    jobs["a3"] = bob.submit(spec("a3", "batch", gpu=["RTX4090"]))["id"]
    jobs["c1"] = carol.submit(spec("c1", "finetune"))["id"]
    c.admin.set_quota("carol", gpu_cap=0)
    coop.cycle()  # places a1, a2 and b1
    coop.cycle()  # they run
    assert [coop.job(j)["state"] for j in ("a1", "a2", "b1")] == ["RUNNING"] * 3
    with Session(c.engine) as session:
        ledger.accrue(session, c.settings.idle_credit_rate, utcnow() + timedelta(hours=1))
    beats.set(nodes["gpu-b"], telemetry(*GPU_B, paused=True))  # alice wants gpu-b back
    coop.cycle()  # preempts b1
    coop.cycle()  # b1 stopped: requeued, and waits while gpu-b is paused
    assert coop.job("b1")["state"] == "PENDING"
    jobs["l1"] = bob.submit(spec("l1", "eval"))["id"]
    return coop
