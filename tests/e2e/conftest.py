"""A real Ray cluster (fake GPUs) and a coordinator that runs jobs on it, with simulated agents.

Nodes are registered through the API with agent tokens, then added to the Ray cluster with their
own ``coop_node_<id>`` resource; a heartbeat thread per node plays the agent's part (pause,
stop heartbeating) so tests can take a node away the way a real donor would.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn

from coop.client import CoopClient
from coop.loop import Loop
from coop.schemas import Heartbeat
from coop.server.app import create_app
from coop.server.config import Settings
from tests.api.helpers import node as node_registration
from tests.conftest import POSTGRES_URL, free_port, reset_postgres, serve, wait_for, wait_job_state

JOB_DIR = Path(__file__).parent.parent / "data" / "jobs" / "steps"


class Heartbeats(Loop):
    """The agent's heartbeat for one simulated node."""

    def __init__(self, client: CoopClient, node_id: int) -> None:
        super().__init__()
        self.client, self.node_id, self.interval, self.paused = client, node_id, 0.2, False
        self.name = f"heartbeat-{node_id}"

    def run_once(self) -> None:
        self.client.heartbeat(self.node_id, Heartbeat(paused=self.paused))


@dataclass
class SimNode:
    id: int
    name: str
    member: str
    ray_node: Any
    heartbeats: Heartbeats


@dataclass
class Coop:
    url: str
    settings: Settings
    cluster: Any
    dashboard: str
    admin: CoopClient
    members: dict[str, CoopClient] = field(default_factory=dict)
    nodes: dict[str, SimNode] = field(default_factory=dict)

    def member(self, name: str, **kwargs: Any) -> CoopClient:
        if name not in self.members:
            token = self.admin.create_member(name, **kwargs)["token"]
            self.members[name] = CoopClient(self.url, token)
        return self.members[name]

    def add_node(
        self,
        name: str,
        member: str,
        gpus: int = 1,
        memory_gb: float = 24,
        model: str = "RTX 4090",
        cpus: int = 2,
        tflops: float = 100,
    ) -> SimNode:
        self.member(member)
        agent = CoopClient(self.url, self.admin.create_token(kind="agent", member=member)["token"])
        reg = node_registration(name, gpus=gpus, memory_gb=memory_gb, model=f"NVIDIA GeForce {model}", cpus=cpus)
        reg.tflops_per_gpu = tflops
        node_id = int(agent.register_node(reg)["id"])
        self.admin.approve_node(node_id)  # a new node takes jobs only once an admin approved it
        # as an agent starts Ray: the coordinator's URL for the jobs' wrappers (each attempt's files
        # are its own, in a scratch folder removed when it ends: what a next attempt finds came through
        # the coordinator's store)
        ray_node = self.cluster.add_node(
            num_cpus=cpus,
            num_gpus=gpus,
            resources={f"coop_node_{node_id}": 1},
            env_vars={"COOP_SERVER_URL": self.url},
        )
        beats = Heartbeats(agent, node_id)
        beats.start()
        node = SimNode(node_id, name, member, ray_node, beats)
        self.nodes[name] = node
        return node

    def submit(
        self, member: str, name: str, gpus: int = 1, env: dict[str, str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        client = self.member(member)
        data = pack(JOB_DIR)
        sha = hashlib.sha256(data).hexdigest()
        if not client.has_workdir(sha):
            client.upload_workdir(sha, data)
        spec = {
            "name": name,
            "run": f"{sys.executable} job.py",
            "resources": {"gpus": gpus, "cpus": 1},
            "env": env or {},
            **extra,
        }
        return client.submit(spec, workdir_sha256=sha)  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.admin.job(job_id)  # type: ignore[no-any-return]

    def wait_state(self, job_id: int, *states: str, timeout: float = 90) -> dict[str, Any]:
        return wait_job_state(self.admin, job_id, *states, timeout=timeout)

    def ray_jobs(self) -> list[Any]:
        from ray.job_submission import JobSubmissionClient

        return list(JobSubmissionClient(self.dashboard).list_jobs())


def pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime = 0
            with path.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


@contextmanager
def ray_cluster_with_jobs_api() -> Iterator[tuple[Any, str]]:
    """A ``ray.cluster_utils.Cluster`` head with its Jobs API on loopback; yields (cluster, dashboard URL)."""
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_port": port,
            "dashboard_host": "127.0.0.1",
            # Ray's default (52365) may belong to another Ray on this machine: then no job could start
            "dashboard_agent_listen_port": free_port(),
        },
    )
    dashboard = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            JobSubmissionClient(dashboard).list_jobs()
            return True
        except Exception:
            return False

    try:
        wait_for(up, timeout=60, interval=0.2, what="the Ray Jobs API")
        yield cluster, dashboard
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[Any, str]]:
    with ray_cluster_with_jobs_api() as pair:
        yield pair


def start_coordinator(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    return serve(create_app(settings))


def coop_settings(data_dir: Path, dashboard: str, database_url: str | None = None, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "ray_dashboard_url": dashboard,
        "ray_auth_token": os.environ["RAY_AUTH_TOKEN"],
        "instance": f"t{data_dir.name[-8:].lower().replace('_', '-')}",
        "heartbeat_interval_s": 1.0,  # offline after 3 s: loaded CI machines can miss a sub-second beat
        "scheduler_interval_s": 0.2,
        "ledger_interval_s": 0.5,
        "preempt_grace_s": 2,
    }
    return Settings(**(fields | overrides))


@pytest.fixture
def coop(ray_cluster: tuple[Any, str], tmp_path: Path) -> Iterator[Coop]:
    """A fresh coordinator (SQLite) on the shared Ray cluster; its nodes are removed afterwards."""
    cluster, dashboard = ray_cluster
    yield from _coop(cluster, dashboard, tmp_path, None)


@pytest.fixture
def coop_pg(ray_cluster: tuple[Any, str], tmp_path: Path) -> Iterator[Coop]:
    from tests.conftest import require_service

    require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
    assert POSTGRES_URL
    reset_postgres(POSTGRES_URL)
    cluster, dashboard = ray_cluster
    yield from _coop(cluster, dashboard, tmp_path, POSTGRES_URL)


def _coop(cluster: Any, dashboard: str, tmp_path: Path, database_url: str | None) -> Iterator[Coop]:
    from sqlmodel import Session

    from coop.server.db import make_engine
    from coop.server.services import accounts

    data_dir = Path(tempfile.mkdtemp(prefix="coop-e2e-"))
    settings = coop_settings(data_dir, dashboard, database_url)
    engine = make_engine(settings.resolved_database_url)
    from coop.server.db import upgrade

    upgrade(engine)
    with Session(engine) as session:
        token = accounts.bootstrap_admin(session)
    engine.dispose()
    server, thread, url = start_coordinator(settings)
    coop = Coop(url, settings, cluster, dashboard, CoopClient(url, token))
    try:
        yield coop
    finally:
        for node in coop.nodes.values():
            node.heartbeats.stop()
        server.should_exit = True
        thread.join(timeout=15)
        for node in coop.nodes.values():
            if node.ray_node in cluster.worker_nodes:
                cluster.remove_node(node.ray_node)
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_coop_up(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a person stops ``coop up`` (it stops its agent, coordinator and Ray head itself); then
    whatever it could not stop is killed: a failed test must not leave a cluster behind."""
    if proc.poll() is not None:
        return
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()
