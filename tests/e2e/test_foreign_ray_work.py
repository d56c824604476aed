"""Work on the Ray cluster that Coop did not start, seen by a real coordinator on a real Ray cluster
with token auth: a Ray job submitted straight to the Jobs API (on the head), one with a made-up
Coop-like id pinned to a donor's node, and a detached actor a plain driver left there; Coop's own job
running on the same node is not counted. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from coop.cli.main import app
from coop.client import CoopError
from tests.conftest import wait_for
from tests.e2e.conftest import Coop

pytestmark = pytest.mark.ray

NAMESPACE = "coop-test-foreign"
SLEEP = f"{sys.executable} -c 'import time; time.sleep(600)'"
DRIVER = """
import ray, sys
ray.init(address=sys.argv[1], namespace={namespace!r}, logging_level="WARNING")
if sys.argv[2] == "start":
    @ray.remote(num_cpus=0)
    class Miner:
        def ping(self): return 1
    m = Miner.options(name="miner", lifetime="detached", resources={{sys.argv[3]: 0.001}}).remote()
    ray.get(m.ping.remote())
    print(m._actor_id.hex())
else:
    ray.kill(ray.get_actor("miner"))
"""


@pytest.fixture(autouse=True)
def checks_every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COOP_FOREIGN_WORK_INTERVAL_S", "1")  # read by the coordinator's settings


def driver(coop: Coop, *args: str) -> str:
    """A plain Ray driver (the token comes from the environment, as anyone holding it would do)."""
    script = DRIVER.format(namespace=NAMESPACE)
    done = subprocess.run(
        [sys.executable, "-c", script, coop.cluster.address, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def foreign_gauge(coop: Coop) -> dict[str, float]:
    text = httpx.get(f"{coop.url}/metrics", timeout=10).text
    return {
        s.labels["node"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "coop_foreign_ray_work"
        for s in family.samples
    }


def cli(coop: Coop, token: str, *args: str) -> str:
    env = {"COOP_URL": coop.url, "COOP_TOKEN": token, "COLUMNS": "250"}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_foreign_ray_work_is_named_by_node_counted_and_flagged_and_coops_own_is_not(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coop: Coop = request.getfixturevalue("coop" if database == "sqlite" else "coop_pg")
    assert coop.settings.foreign_work_interval_s == 1
    caplog.set_level(logging.INFO, logger="coop.foreign_work")
    admin_token = coop.admin.create_member("ops", admin=True)["token"]
    donor = coop.add_node("donor-a", "lab-a", gpus=1)
    resource = f"coop_node_{donor.id}"

    # Coop's own job, running on the donor's node through Coop
    gate = tmp_path / "gate"
    own = coop.submit("lab-b", "own", gpus=1, env={"GATE": str(gate)})
    coop.wait_state(own["id"], "RUNNING")
    own_ref = coop.job(own["id"])["attempts_detail"][0]["backend_ref"]

    # foreign work: straight to the Jobs API with the cluster's token, and a plain driver's actor
    from ray.job_submission import JobSubmissionClient

    jobs_api = JobSubmissionClient(coop.dashboard)
    assert os.environ["RAY_AUTH_MODE"] == "token"
    on_head = jobs_api.submit_job(entrypoint=SLEEP)
    forged = f"{coop.settings.instance}-9999-1"  # looks like Coop's, is no attempt of it
    jobs_api.submit_job(entrypoint=SLEEP, submission_id=forged, entrypoint_resources={resource: 0.001})
    actor_id = driver(coop, "start", resource)

    expected = {("job", on_head, "head"), ("job", forged, "donor-a"), ("actor", actor_id, "donor-a")}

    def seen() -> list[dict[str, Any]] | None:
        rows = coop.admin.foreign_work()
        return rows if {(r["kind"], r["ray_id"], r["node"]) for r in rows} == expected else None

    rows = wait_for(seen, timeout=60, interval=0.25, what=f"exactly {expected} (seen: {coop.admin.foreign_work()})")
    by_id = {r["ray_id"]: r for r in rows}
    assert by_id[actor_id]["name"] == "actor Miner miner" and by_id[actor_id]["node_id"] == donor.id
    assert by_id[on_head]["node_id"] is None and by_id[on_head]["name"].endswith("time.sleep(600)'")

    # a check or two later: still one event per piece of work, not one per check
    last_seen = by_id[on_head]["last_seen"]
    for _ in range(2):
        last_seen = wait_for(
            lambda ls=last_seen: next(
                (r["last_seen"] for r in coop.admin.foreign_work() if r["ray_id"] == on_head and r["last_seen"] > ls),
                None,
            ),
            timeout=30,
            what="another check",
        )
    events = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "coop.foreign_work"]
    for what in (f"the Ray head: job {on_head}", f"node {donor.id} (donor-a): job {forged}",
                 f"node {donor.id} (donor-a): actor {actor_id}"):  # fmt: skip
        assert len([m for m in events if m.startswith(f"foreign Ray work on {what},")]) == 1, (what, events)
    # nothing else, but this test's own plain driver, if a check caught it while it ran
    assert len([m for m in events if ": job " in m and ", Ray driver: " in m]) == len(events) - 3, events
    assert not [m for m in events if own_ref in m]

    # the metric, the API's node, coop nodes (--json and the table), coop admin foreign
    assert foreign_gauge(coop) == {"donor-a": 2, "head": 1}
    (node,) = [n for n in coop.admin.nodes() if n["id"] == donor.id]
    assert node["foreign_ray_work"] == 2
    (listed,) = [n for n in json.loads(cli(coop, admin_token, "nodes", "--json")) if n["id"] == donor.id]
    assert listed["foreign_ray_work"] == 2
    assert "! foreign Ray work (2)" in cli(coop, admin_token, "nodes")
    table = cli(coop, admin_token, "admin", "foreign")
    assert on_head in table and forged in table and "head" in table
    with pytest.raises(CoopError) as refused:
        coop.member("lab-b").foreign_work()  # an admin's listing
    assert refused.value.status == 403
    assert coop.job(own["id"])["state"] == "RUNNING"  # Coop's own job was running beside it all along

    # the foreign work ends: the findings are closed, the flags and the gauge go back to 0
    jobs_api.stop_job(on_head)
    jobs_api.stop_job(forged)
    driver(coop, "stop")
    wait_for(lambda: not coop.admin.foreign_work(), timeout=60, interval=0.25, what="the foreign work gone")
    assert foreign_gauge(coop) == {"donor-a": 0, "head": 0}
    assert [n["foreign_ray_work"] for n in coop.admin.nodes() if n["id"] == donor.id] == [0]
    history = coop.admin.foreign_work(gone=True)
    assert all(r["gone_at"] for r in history)
    drivers = [r for r in history if r["name"].startswith("Ray driver: ")]  # this test's own, if a check caught one
    assert {(r["kind"], r["ray_id"], r["node"]) for r in history if r not in drivers} == expected

    gate.write_text("go")
    coop.wait_state(own["id"], "SUCCEEDED")
    assert not [r for r in coop.admin.foreign_work(gone=True) if own_ref in r["ray_id"] or own_ref in r["name"]]
