"""A job over before any cycle saw it running still counts as having run (real Ray, fake GPUs).

Run with ``flock /tmp/coop-ray.lock`` in front of pytest: Ray clusters never run side by side here.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from coop.cli.main import app as cli_app
from coop.client import CoopClient
from coop.server.backends import LogRead
from coop.server.backends.ray import RayBackend
from coop.server.leader import Leadership
from coop.server.loops import LogShipLoop
from coop.server.services import scheduling
from tests.api.helpers import node
from tests.conftest import loopless_coordinator, wait_for
from tests.e2e.conftest import Coop

pytestmark = pytest.mark.ray
SHORT = {"name": "short", "run": "echo short-and-done", "resources": {"gpus": 1, "cpus": 1}}


def coop_logs(url: str, token: str, job_id: int, config_dir: Path) -> str:
    env = {"COOP_URL": url, "COOP_TOKEN": token, "COOP_CONFIG_DIR": str(config_dir)}
    result = CliRunner().invoke(cli_app, ["logs", str(job_id)], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def accepts(jobs: Any) -> bool:
    """Whether Ray takes submissions yet (a cold cluster answers "No available agent" for a while)."""
    try:
        jobs.submit_job(entrypoint="true")
        return True
    except RuntimeError:
        return False


def assert_ran(job: dict[str, Any]) -> None:
    assert job["state"] == "SUCCEEDED" and job["attempts"] == 1
    assert job["started_at"] is not None
    assert datetime.fromisoformat(job["started_at"]) <= datetime.fromisoformat(job["finished_at"])
    assert [e["to_state"] for e in job["events"]][-3:] == ["STARTING", "RUNNING", "SUCCEEDED"]


def test_a_job_done_before_the_next_cycle_is_recorded_as_having_run(
    ray_cluster: tuple[Any, str], tmp_path: Path
) -> None:
    """Cycles driven by the test: Ray runs the job to its end between two of them, so the coordinator
    never sees it RUNNING, only STARTING and then SUCCEEDED."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster, dashboard = ray_cluster
    with loopless_coordinator(tmp_path / "coop", instance=f"s{os.getpid()}") as c:
        ray = RayBackend(dashboard, os.environ["RAY_AUTH_TOKEN"])
        alice, token = c.new_member("alice")
        box = c.agent("alice").register_node(node("box", gpus=1, cpus=2))["id"]
        ray_node = cluster.add_node(num_cpus=2, num_gpus=1, resources={f"coop_node_{box}": 1})
        jobs = JobSubmissionClient(dashboard)
        wait_for(lambda: accepts(jobs), timeout=60, interval=0.5, what="Ray's job agent")
        try:
            job_id = alice.submit(SHORT)["id"]
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, ray)
            ref = c.admin.job(job_id)["attempts_detail"][0]["backend_ref"]
            wait_for(lambda: jobs.get_job_status(ref) == JobStatus.SUCCEEDED, timeout=60, interval=0.1, what="Ray")
            assert c.admin.job(job_id)["state"] == "STARTING"
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, ray)
            done = c.admin.job(job_id)
            assert_ran(done)
            assert "short-and-done" in coop_logs(c.url, token, job_id, tmp_path / "cli")
        finally:
            cluster.remove_node(ray_node)


def test_a_short_job_under_the_live_loops(coop: Coop, tmp_path: Path) -> None:
    """The same under the coordinator's own loops: whether a cycle catches it running or not, it ran."""
    coop.add_node("box", "lab-a", gpus=1)
    token = coop.admin.create_member("lab-b")["token"]
    job_id = CoopClient(coop.url, token).submit(SHORT)["id"]
    done = coop.wait_state(job_id, "SUCCEEDED")
    assert_ran(done)
    assert "short-and-done" in coop_logs(coop.url, token, job_id, tmp_path / "cli")


def test_ray_logs_are_copied_as_they_grow_and_complete_once_the_job_ends(
    ray_cluster: tuple[Any, str], tmp_path: Path
) -> None:
    """The log loop and the cycles driven by the test on a real Ray: Ray gives only whole logs, so a
    read fetches them whole and hands back only what is past the stored size; the rest is stored,
    once, by the cycle that sees the job end (issue 14)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster, dashboard = ray_cluster
    with loopless_coordinator(tmp_path / "coop", instance=f"l{os.getpid()}") as c:
        ray = RayBackend(dashboard, os.environ["RAY_AUTH_TOKEN"])
        loop = LogShipLoop(c.engine, c.settings, ray, Leadership(c.engine, c.settings.data_dir, c.settings.instance))
        alice, _ = c.new_member("alice")
        box = c.agent("alice").register_node(node("box", gpus=1, cpus=2))["id"]
        ray_node = cluster.add_node(num_cpus=2, num_gpus=1, resources={f"coop_node_{box}": 1})
        jobs = JobSubmissionClient(dashboard)
        wait_for(lambda: accepts(jobs), timeout=60, interval=0.5, what="Ray's job agent")
        gate = tmp_path / "gate"
        run = f"echo first; while [ ! -e {gate} ]; do sleep 0.1; done; echo last"
        try:
            job_id = alice.submit(SHORT | {"name": "talks", "run": run})["id"]

            def copied() -> bool:
                with Session(c.engine, expire_on_commit=False) as session:
                    scheduling.cycle(session, c.settings, ray)
                loop.run(loops=1)
                return "first" in alice.logs(job_id)["data"]

            wait_for(copied, timeout=60, interval=0.2, what="the first line, copied while the job runs")
            ref = c.admin.job(job_id)["attempts_detail"][0]["backend_ref"]
            early = alice.logs(job_id)
            assert c.admin.job(job_id)["state"] == "RUNNING" and early["eof"] is False
            assert ray.read_logs(ref, early["next_offset"]) == LogRead(b"", early["next_offset"])  # nothing new

            gate.write_text("go")
            wait_for(lambda: jobs.get_job_status(ref) == JobStatus.SUCCEEDED, timeout=60, interval=0.1, what="Ray")
            whole = jobs.get_job_logs(ref).encode()
            assert whole.endswith(b"last\n")
            assert ray.read_logs(ref, early["next_offset"]).data == whole[early["next_offset"] :]  # only the rest
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, ray)
            final = alice.logs(job_id)
            assert c.admin.job(job_id)["state"] == "SUCCEEDED"
            assert (final["data"].encode(), final["eof"]) == (whole, True)  # complete, and each line once
            loop.run(loops=1)
            assert alice.logs(job_id)["data"].encode() == whole
        finally:
            cluster.remove_node(ray_node)
