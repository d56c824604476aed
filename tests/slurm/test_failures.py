"""When the cluster is not what it should be: a changed host key, a node that fails under a job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coop.client import CoopClient
from tests.api.helpers import node
from tests.conftest import wait_for
from tests.slurm.conftest import SSH_PORT, Hpc, SlurmCluster, own_postgres, start_hpc

pytestmark = pytest.mark.slurm


@pytest.fixture(params=["sqlite"])
def fresh(request: pytest.FixtureRequest, testbed: SlurmCluster) -> Iterator[Hpc]:
    """A coordinator of its own; the tests that ask for it run on PostgreSQL too."""
    hpc, stop = start_hpc(testbed, database_url=own_postgres() if request.param == "postgres" else None)
    try:
        yield hpc
    finally:
        stop()


def other_host_key() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_a_pool_whose_host_key_does_not_match_is_refused_and_gets_nothing(fresh: Hpc, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{SSH_PORT} {other_host_key()}\n")  # someone else's key for that address
    added = fresh.cli(*fresh.pool_args("evil", **{"known-hosts": known_hosts}))
    assert added.exit_code == 0, added.output
    tested = fresh.cli("admin", "pool", "test", "evil")
    assert tested.exit_code == 1
    assert "does not match" in tested.stderr and "refusing to connect" in tested.stderr, tested.stderr
    client, _ = fresh.member("eve")
    job = client.submit({"name": "never", "run": "touch /tmp/should-not-exist", "resources": {"tier": "hpc"}})
    # the scheduler has looked at the job (and the pool refresh tried again) without sending it anywhere
    wait_for(lambda: (fresh.job(job["id"])["reason"] or "").startswith("waiting: "), timeout=20, what="a cycle")
    (pool,) = json.loads(fresh.cli("admin", "pool", "list", "--json").stdout)
    assert pool["state"] == "refused" and "does not match" in pool["detail"] and pool["capacity"] == []
    done = fresh.job(job["id"])
    assert (done["state"], done["attempts"]) == ("PENDING", 0)
    # this coordinator has no Ray either: a donated machine is there, but a job for it is told why it waits
    agent = CoopClient(fresh.url, fresh.admin.create_token(kind="agent", member="eve")["token"])
    agent.register_node(node("eve-box", gpus=1))
    donated = client.submit({"name": "donated", "run": "true", "resources": {"tier": "consumer", "gpus": 1}})
    wait_for(lambda: "no Ray cluster" in (fresh.job(donated["id"])["reason"] or ""), timeout=20, what="the reason")
    assert fresh.slurm_job(fresh.ref(job["id"])) is None  # Slurm never heard of it
    assert fresh.cluster.size(f"/home/cooptest/{fresh.scratch}") is None  # nothing was written either


def test_a_failed_node_requeues_the_job_as_a_new_attempt(fresh: Hpc) -> None:
    if os.geteuid() != 0:
        pytest.skip("setting the test node DOWN needs root (scontrol update)")
    assert fresh.cli(*fresh.pool_args("hpc")).exit_code == 0
    client, _ = fresh.member("nina")
    run = 'echo "attempt $COOP_ATTEMPT"; if [ "$COOP_ATTEMPT" = 1 ]; then sleep 300; fi'
    job = client.submit({"name": "unlucky", "run": run, "retries": 1, "resources": {"tier": "hpc"}})
    fresh.wait_state(job["id"], "RUNNING", timeout=30)
    wait_for(lambda: "attempt 1" in client.logs(job["id"])["data"], timeout=20, what="attempt 1 to start")
    node = socket.gethostname().split(".")[0]
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=coop-test"], check=True)
    try:
        done = fresh.wait_state(job["id"], "SUCCEEDED", timeout=60)
    finally:  # ReturnToService=2 usually brings it back by itself; make sure
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True)
    first, second = done["attempts_detail"]
    assert first["state"] == "LOST" and "NODE_FAIL" in first["reason"]
    assert second["state"] == "SUCCEEDED" and first["pool_id"] == second["pool_id"]
    assert client.logs(job["id"], attempt=2)["data"] == "attempt 2\n"


@pytest.mark.parametrize("fresh", ["sqlite", "postgres"], indirect=True)
def test_a_pool_never_runs_more_jobs_than_its_cap(fresh: Hpc) -> None:
    added = fresh.cli(*fresh.pool_args("small", **{"max-jobs": 1}))
    assert added.exit_code == 0, added.output
    client, _ = fresh.member("olga")
    jobs = [client.submit({"name": f"j{i}", "run": "sleep 1", "resources": {"tier": tier}})
            for i, tier in enumerate(("hpc", "any"))]  # fmt: skip
    reasons: set[str] = set()

    def both_done() -> bool:
        states = [fresh.job(j["id"]) for j in jobs]
        reasons.update(s["reason"] for s in states if s["state"] == "PENDING")
        return all(s["state"] == "SUCCEEDED" for s in states)

    wait_for(both_done, timeout=60, interval=0.1, what="both jobs")
    first, second = sorted((fresh.job(j["id"])["attempts_detail"][0] for j in jobs), key=lambda a: a["started_at"])
    assert first["backend"] == second["backend"] == "slurm"
    assert second["started_at"] >= first["finished_at"]  # one at a time
    assert any("cap of 1 jobs" in r or "busy" in r for r in reasons), reasons


def test_a_pool_that_refuses_submissions_stops_taking_jobs(testbed: SlurmCluster) -> None:
    """sbatch says no (here: a constraint no node has): the job waits, instead of spending every retry."""
    hpc, stop = start_hpc(testbed, pool_refresh_s=60)  # no refresh puts the pool back during the test
    try:
        added = hpc.cli(*hpc.pool_args("picky", **{"sbatch-option": "--constraint=nosuchfeature"}))
        assert added.exit_code == 0, added.output
        wait_for(lambda: hpc.admin.request("GET", "/pools/picky")["state"] == "ok", timeout=30, what="capacity")
        client, _ = hpc.member("pat")
        job = client.submit({"name": "picky", "run": "true", "retries": 5, "resources": {"tier": "hpc"}})
        wait_for(lambda: "offline" in (hpc.job(job["id"])["reason"] or ""), timeout=20, what="the job to wait")
        done = hpc.job(job["id"])
        assert (done["state"], done["attempts"]) == ("PENDING", 1)
        assert "Invalid feature" in done["attempts_detail"][0]["reason"]  # sbatch's own words
        pool = hpc.admin.request("GET", "/pools/picky")
        assert pool["state"] == "refused" and "sbatch failed" in pool["detail"]
    finally:
        stop()
