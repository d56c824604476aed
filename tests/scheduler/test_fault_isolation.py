"""No single fault stops the cycle for others (issue 12).

A job whose stored spec no longer validates fails alone; a backend that cannot be reached holds up
only its own attempts and placements. The cycles are the real scheduler service over the HTTP app
(SQLite and PostgreSQL). The unreachable backend is the real ``RayBackend`` pointed at a loopback
port where nothing listens; the backend that works beside it is the real test Slurm cluster (sshd +
slurmctld, see tests/slurm) where it runs, and the in-process stand-in of tests/observability for
the spec test, where no backend is under test.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session

from coop.client import CoopClient
from coop.schemas import Heartbeat
from coop.server.backends.dispatch import Backends, SlurmPools
from coop.server.backends.ray import RayBackend
from coop.server.backends.slurm import commands
from coop.server.backends.slurm.parse import parse_squeue
from coop.server.backends.slurm.ssh import Connection
from coop.server.leader import Leadership
from coop.server.loops import LogShipLoop
from coop.server.models import Job
from coop.server.services import pools, scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator, free_port, loopless_coordinator, own_postgres, wait_for
from tests.observability.cooperative import InProcessBackend
from tests.slurm.conftest import SSH_PORT, USER, SlurmCluster, find_cluster

BROKEN_SPEC = {"name": "tampered", "run": "true", "resources": {"gpus": "lots"}, "no_such_field": 1}


def cycle(c: Coordinator, backend: Any) -> None:
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)


def corrupt(c: Coordinator, job_id: int) -> None:
    """What an older version's row or a hand edit leaves: a spec the job model refuses."""
    with Session(c.engine) as session:
        session.exec(update(Job).where(Job.id == job_id).values(spec=BROKEN_SPEC))  # type: ignore[call-overload, arg-type]
        session.commit()


def test_a_stored_spec_that_no_longer_validates_fails_its_job_only(coordinator: Coordinator) -> None:
    c, backend = coordinator, InProcessBackend()
    alice, bob = c.new_member("alice")[0], c.new_member("bob")[0]
    c.new_member("carol")
    c.agent("carol").register_node(node("box", gpus=2))
    running = alice.submit(job_spec("runs-on", 1))["id"]
    cycle(c, backend)
    cycle(c, backend)
    assert c.admin.job(running)["state"] == "RUNNING"
    bad = alice.submit(job_spec("bad", 1))["id"]
    good = bob.submit(job_spec("good", 1))["id"]
    corrupt(c, bad)
    corrupt(c, running)

    cycle(c, backend)  # raised SpecError here before, and nothing was placed for anyone

    failed = c.admin.job(bad)
    assert failed["state"] == "FAILED" and failed["attempts"] == 0
    assert failed["reason"].startswith("its stored spec no longer validates: ")
    assert "resources.gpus" in failed["reason"] and "no_such_field" in failed["reason"]
    assert failed["events"][-1]["to_state"] == "FAILED" and failed["events"][-1]["reason"] == failed["reason"]
    assert c.admin.job(good)["state"] == "STARTING"  # placed in the same cycle
    # a running job is not killed for its spec: it runs on to its end, and is followed like any other
    assert c.admin.job(running)["state"] == "RUNNING"
    backend.runs[c.admin.job(running)["attempts_detail"][0]["backend_ref"]] = "SUCCEEDED"
    cycle(c, backend)
    assert c.admin.job(running)["state"] == "SUCCEEDED"
    assert c.admin.job(good)["state"] == "RUNNING"


# --- an unreachable Ray beside a working Slurm pool ----------------------------------------------


@pytest.fixture(scope="module")
def testbed() -> SlurmCluster:
    return find_cluster()


@pytest.fixture(params=["sqlite", "postgres"])
def hybrid(request: pytest.FixtureRequest, testbed: SlurmCluster, tmp_path: Path) -> Iterator[Hybrid]:
    """A loopless coordinator with a Slurm pool on the test cluster and a Ray backend nobody answers."""
    url = own_postgres("h_faults_isolation") if request.param == "postgres" else None
    with loopless_coordinator(tmp_path / "coop", url, instance=f"t{secrets.token_hex(4)}") as c:
        scratch = f"coop-test-{c.settings.instance}"
        c.admin.request("POST", "/pools", json={"name": "hpc", "max_jobs": 4, "slurm": {
            "host": "127.0.0.1", "port": SSH_PORT, "user": USER, "key": testbed.key, "known_hosts": testbed.known_hosts,
            "partition": "debug", "gres_map": {"RTX4090": "gpu:rtx4090"}, "scratch_dir": scratch}})  # fmt: skip
        slurm = SlurmPools(poll_s=0.2)
        with Session(c.engine, expire_on_commit=False) as session:
            pools.refresh_all(session, slurm)
        assert c.admin.request("GET", "/pools/hpc")["state"] == "ok"
        dead_ray = RayBackend(f"http://127.0.0.1:{free_port()}")  # a real closed port: connection refused
        try:
            yield Hybrid(c, Backends(ray=dead_ray, slurm=slurm))
        finally:
            slurm.close()
            cluster = Connection(testbed.target)
            ours = [e.job_id for e in parse_squeue(cluster.run(commands.squeue(USER)).out)
                    if e.name.startswith(f"{c.settings.instance}-") and e.state in ("PENDING", "RUNNING")]  # fmt: skip
            cancel = f"scancel {' '.join(ours)}; " if ours else ""
            cluster.run(f"{cancel}rm -rf -- {scratch}", check=False)
            cluster.close()


class Hybrid:
    def __init__(self, c: Coordinator, backends: Backends) -> None:
        self.c, self.backends = c, backends

    def cycle(self) -> None:
        cycle(self.c, self.backends)

    def donated_node(self, owner: str) -> int:
        agent = self.c.agent(owner)
        node_id = int(agent.register_node(node(f"box-{uuid.uuid4().hex[:6]}", gpus=2))["id"])
        agent.heartbeat(node_id, Heartbeat())
        return node_id

    def job(self, job_id: int) -> dict[str, Any]:
        return self.c.admin.job(job_id)  # type: ignore[no-any-return]


def hpc_job(client: CoopClient, name: str) -> int:
    return int(client.submit({"name": name, "run": "echo from slurm", "resources": {"tier": "hpc"}})["id"])


def test_a_refused_launch_waits_without_a_retry_while_the_pool_places(hybrid: Hybrid) -> None:
    h = hybrid
    alice, bob = h.c.new_member("alice")[0], h.c.new_member("bob")[0]
    h.donated_node("alice")
    ray_job = alice.submit(job_spec("on-ray", 1, tier="consumer") | {"retries": 2})["id"]
    slurm_job = hpc_job(bob, "on-slurm")

    h.cycle()

    waiting = h.job(ray_job)
    assert (waiting["state"], waiting["attempts"]) == ("PENDING", 1)
    (refused,) = waiting["attempts_detail"]
    assert refused["state"] == "REFUSED" and "ConnectionError" in refused["reason"]
    assert "Ray could not start it (ConnectionError" in waiting["reason"]
    assert "no retry used, trying again in 2 s" in waiting["reason"]
    assert h.job(slurm_job)["state"] == "STARTING"  # the pool placed in the same cycle
    assert h.job(slurm_job)["attempts_detail"][0]["backend"] == "slurm"

    h.cycle()  # at once again: the refused job waits its turn instead of hammering Ray
    assert h.job(ray_job)["attempts"] == 1

    def slurm_done() -> bool:  # meanwhile the HPC job runs to its end
        h.cycle()
        return h.job(slurm_job)["state"] == "SUCCEEDED"

    wait_for(slurm_done, timeout=60, interval=0.2, what="the Slurm job to succeed")
    waiting = h.job(ray_job)
    tries = waiting["attempts_detail"]
    assert waiting["state"] == "PENDING" and {a["state"] for a in tries} == {"REFUSED"}
    assert f"trying again in {2 ** len(tries)} s" in waiting["reason"]  # 2 s, doubling with each refusal
    ends = [datetime.fromisoformat(a["finished_at"]) for a in tries]
    assert all((b - a).total_seconds() >= 2**i for i, (a, b) in enumerate(zip(ends, ends[1:], strict=False), 1))


def test_an_unreachable_ray_holds_up_only_its_own_attempts_and_placements(hybrid: Hybrid) -> None:
    h = hybrid
    alice, bob = h.c.new_member("alice")[0], h.c.new_member("bob")[0]
    h.donated_node("alice")
    working = Backends(ray=InProcessBackend(), slurm=h.backends.slurm)  # Ray up: one job starts running
    running = alice.submit(job_spec("running", 1, tier="consumer"))["id"]
    cycle(h.c, working)
    cycle(h.c, working)
    assert h.job(running)["state"] == "RUNNING"

    # Ray goes down: following its attempt fails; its placements wait; the pool goes on placing
    next_on_ray = alice.submit(job_spec("next", 1, tier="consumer"))["id"]
    slurm_job = hpc_job(bob, "on-slurm")
    h.cycle()
    assert h.job(running)["state"] == "RUNNING"  # unknown, so left as it was, not lost
    held = h.job(next_on_ray)
    assert (held["state"], held["attempts"]) == ("PENDING", 0)  # never tried: Ray did not answer this cycle
    assert "Ray is not answering (ConnectionError" in held["reason"]
    assert h.job(slurm_job)["state"] == "STARTING"

    # Ray back: the next cycle follows and places there again
    cycle(h.c, working)
    assert h.job(next_on_ray)["state"] == "STARTING"


def test_logs_of_an_unreachable_ray_hold_up_neither_the_pools_logs_nor_the_cycle(
    hybrid: Hybrid, testbed: SlurmCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The log loop (issue 14) beside the cycle: Ray refuses every read of its running attempt's logs,
    the pool's job's output is copied all the same while it runs, and complete once it has ended."""
    h = hybrid
    alice, bob = h.c.new_member("alice")[0], h.c.new_member("bob")[0]
    h.donated_node("alice")
    working = Backends(ray=InProcessBackend(), slurm=h.backends.slurm)
    on_ray = alice.submit(job_spec("on-ray", 1, tier="consumer"))["id"]
    cycle(h.c, working)
    cycle(h.c, working)
    assert h.job(on_ray)["state"] == "RUNNING"
    ray_ref = h.job(on_ray)["attempts_detail"][0]["backend_ref"]
    gate = f"coop-test-{h.c.settings.instance}/gate"
    run = f'echo from slurm; while [ ! -e "$HOME/{gate}" ]; do sleep 0.1; done; echo done'
    slurm_job = int(bob.submit({"name": "talks", "run": run, "resources": {"tier": "hpc"}})["id"])
    leader = Leadership(h.c.engine, h.c.settings.data_dir, h.c.settings.instance)
    loop = LogShipLoop(h.c.engine, h.c.settings, h.backends, leader)

    def copied() -> bool:  # Ray down: the cycles and the log loop go on for the pool's job
        h.cycle()
        loop.run(loops=1)
        return "from slurm" in bob.logs(slurm_job)["data"]

    with caplog.at_level(logging.WARNING, logger="coop.loops"):
        wait_for(copied, timeout=60, interval=0.2, what="the Slurm job's first output, copied while it runs")
    assert h.job(slurm_job)["state"] == "RUNNING" and bob.logs(slurm_job)["eof"] is False
    assert "ConnectionError" in loop.failing[ray_ref]
    warned = [r for r in caplog.records if r.name == "coop.loops" and ray_ref in r.getMessage()]
    assert len(warned) == 1  # the log loop warned once, not each pass
    assert h.job(on_ray)["state"] == "RUNNING"  # unknown, so left as it was

    cluster = Connection(testbed.target)
    try:
        cluster.write(gate, b"")
    finally:
        cluster.close()

    def ended() -> bool:
        h.cycle()
        return h.job(slurm_job)["state"] == "SUCCEEDED"

    wait_for(ended, timeout=60, interval=0.2, what="the Slurm job to succeed")
    final = bob.logs(slurm_job)
    assert (final["data"], final["eof"]) == ("from slurm\ndone\n", True)  # complete, each line once
