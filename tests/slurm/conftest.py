"""The test Slurm cluster (scripts/services/slurm.sh) and a coordinator without Ray that runs jobs on it.

The cluster is a real slurmctld/slurmd with fake GPU GRES behind a real sshd on 127.0.0.1:2222; the
coordinator reaches it the way it reaches any cluster, over SSH with the test user's key. Each
coordinator gets its own instance name and scratch dir, so Slurm's memory of earlier runs' jobs
(finished jobs stay listed for an hour) never mixes with this run's.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session
from typer.testing import CliRunner, Result

from coop.cli.main import app as cli_app
from coop.client import CoopClient
from coop.server.app import create_app
from coop.server.backends.slurm import commands
from coop.server.backends.slurm.parse import QueueEntry, parse_squeue
from coop.server.backends.slurm.ssh import Connection, Target
from coop.server.config import Settings
from coop.server.db import make_engine, upgrade
from coop.server.services import accounts
from tests.conftest import own_postgres as shared_own_postgres
from tests.conftest import require_service, serve, wait_for, wait_job_state

ROOT = Path(__file__).parent.parent.parent
SLURM_DIR = Path(os.environ.get("COOP_SLURM_DIR", "/tmp/coop-slurm"))
SSH_PORT = int(os.environ.get("COOP_SLURM_SSH_PORT", "2222"))
USER = os.environ.get("COOP_SLURM_USER", "cooptest")


@dataclass(frozen=True)
class SlurmCluster:
    key: str
    known_hosts: str

    @property
    def target(self) -> Target:
        return Target("127.0.0.1", SSH_PORT, USER, self.key, self.known_hosts)


def _status() -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "services" / "slurm.sh"
    return subprocess.run(["bash", str(script), "status"], capture_output=True, text=True, timeout=60)


def find_cluster() -> SlurmCluster:
    """The cluster, started by ``make test`` (scripts/services/slurm.sh up); started here when it can be."""
    if _status().returncode != 0 and os.geteuid() == 0:
        up = subprocess.run(
            ["bash", str(ROOT / "scripts" / "services" / "slurm.sh"), "up"], capture_output=True, text=True, timeout=600
        )
        print(up.stdout, up.stderr)
    state = _status()
    require_service(
        state.returncode == 0,
        f"the test Slurm cluster is not running ({state.stdout.strip() or state.stderr.strip()}); "
        "start it as root with: bash scripts/services/slurm.sh up",
    )
    return SlurmCluster(str(SLURM_DIR / "ssh" / f"{USER}_key"), str(SLURM_DIR / "ssh" / "known_hosts"))


@pytest.fixture(scope="session")
def testbed() -> SlurmCluster:
    return find_cluster()


@dataclass
class Hpc:
    """A coordinator (no Ray), its admin, and a direct line to the cluster for checking what happened."""

    url: str
    settings: Settings
    admin: CoopClient
    admin_token: str
    testbed: SlurmCluster
    scratch: str
    config_dir: Path
    cluster: Connection

    def cli(self, *args: object, token: str | None = None) -> Result:
        env = {"COOP_URL": self.url, "COOP_TOKEN": token or self.admin_token, "COOP_CONFIG_DIR": str(self.config_dir)}
        return CliRunner().invoke(cli_app, [str(a) for a in args], env=env)

    def member(self, name: str) -> tuple[CoopClient, str]:
        token = self.admin.create_member(name)["token"]
        return CoopClient(self.url, token), token

    def pool_args(self, name: str, **overrides: Any) -> list[str]:
        fields = {
            "host": "127.0.0.1",
            "port": SSH_PORT,
            "user": USER,
            "key": self.testbed.key,
            "known-hosts": self.testbed.known_hosts,
            "partition": "debug",
            "gres-map": "RTX4090=gpu:rtx4090",
            "max-jobs": 4,
            "scratch-dir": self.scratch,
        } | overrides
        return ["admin", "pool", "add-slurm", name, *[a for k, v in fields.items() for a in (f"--{k}", str(v))]]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.admin.job(job_id)  # type: ignore[no-any-return]

    def wait_state(self, job_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
        return wait_job_state(self.admin, job_id, *states, timeout=timeout)

    def ref(self, job_id: int, attempt: int = 1) -> str:
        return f"{self.settings.instance}-{job_id}-{attempt}"

    def slurm_job(self, ref: str) -> QueueEntry | None:
        """What Slurm itself says about the job named ``ref`` (asked over our own SSH connection)."""
        found = parse_squeue(self.cluster.run(commands.squeue(USER, [ref])).out)
        return found[-1] if found else None


def start_hpc(testbed: SlurmCluster, **overrides: Any) -> tuple[Hpc, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="coop-hpc-"))
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "instance": f"t{secrets.token_hex(4)}",
        "scheduler_interval_s": 0.2,
        "pool_refresh_s": 1.0,
        "pool_poll_s": 0.5,
        "ledger_interval_s": 0.5,
        "heartbeat_interval_s": 0.5,
    }
    settings = Settings(**(fields | overrides))
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine) as session:
        token = accounts.bootstrap_admin(session)
    engine.dispose()
    assert token
    server, thread, url = serve(create_app(settings))
    cluster = Connection(testbed.target)
    hpc = Hpc(url, settings, CoopClient(url, token), token, testbed, f"coop-test-{settings.instance}",
              data_dir / "cli-config", cluster)  # fmt: skip

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=15)
        ours = [e.job_id for e in parse_squeue(cluster.run(commands.squeue(USER)).out)
                if e.name.startswith(f"{settings.instance}-") and e.state in ("PENDING", "RUNNING")]  # fmt: skip
        if ours:
            cluster.run("scancel " + " ".join(ours), check=False)
        cluster.run(f"rm -rf -- {hpc.scratch}", check=False)
        cluster.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    return hpc, stop


@pytest.fixture(scope="module")
def hpc(testbed: SlurmCluster) -> Iterator[Hpc]:
    """A coordinator with pool "hpc" on the test cluster, added and checked with the CLI."""
    hpc, stop = start_hpc(testbed)
    try:
        added = hpc.cli(*hpc.pool_args("hpc"))
        assert added.exit_code == 0, added.output
        wait_for(lambda: hpc.admin.request("GET", "/pools/hpc")["state"] == "ok", timeout=30, what="pool capacity")
        yield hpc
    finally:
        stop()


def workdir(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def own_postgres() -> str:
    return shared_own_postgres("coop_slurm_tests")
