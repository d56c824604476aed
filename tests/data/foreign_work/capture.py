"""Captures ``listing.json``: what ``RayBackend.listing`` read from a real Ray 2.60 cluster (token auth)
holding Coop's own work and foreign work of every kind. Run: ``.venv/bin/python -m
tests.data.foreign_work.capture`` (under ``flock /tmp/coop-ray.lock``). ``tests/server/
test_foreign_work.py`` classifies it.

- head (no coop resource); ``n7`` (label ``coop/node-id=7`` and resource ``coop_node_7``); ``n8``
  (resource ``coop_node_8`` only)
- ``tcap-1-1``: Coop's own attempt on n7, whose driver uses Ray (an actor and a running task)
- ``tcap-2-1``: a made-up Coop-like submission id on n8 (not an attempt: foreign)
- a ``raysubmit_…`` job on the head whose task runs on n8
- a plain driver (exited) that left a detached actor on n7 and a detached actor dressed as the job
  supervisor of ``tcap-0-1`` (an old Coop attempt)
- a plain driver still running (``ray.init`` and sleep)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

from coop.server.backends.ray import RayBackend  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.e2e.conftest import ray_cluster_with_jobs_api  # noqa: E402

OUT = Path(__file__).parent / "listing.json"
OURS = ["tcap-0-1", "tcap-1-1"]

OWN = """
import ray, time
ray.init()
@ray.remote(num_cpus=0)
class Helper:
    def ping(self): return 1
@ray.remote(num_cpus=0, resources={"coop_node_7": 0.001})
def step(): time.sleep(300)
h = Helper.options(resources={"coop_node_7": 0.001}).remote()
ray.get(h.ping.remote())
s = step.remote()
time.sleep(300)
"""
FOREIGN = """
import ray, time
ray.init()
@ray.remote(num_cpus=0, resources={"coop_node_8": 0.001})
def mine(): time.sleep(300)
m = mine.remote()
time.sleep(300)
"""
DRIVER = """
import ray
ray.init(address={address!r})
@ray.remote(num_cpus=0)
class Miner:
    def ping(self): return 1
@ray.remote(num_cpus=0)
class JobSupervisor:
    def ping(self): return 1
m = Miner.options(name="miner", namespace="mine", lifetime="detached", resources={{"coop_node_7": 0.001}}).remote()
f = JobSupervisor.options(name="_ray_internal_job_actor_tcap-0-1", namespace="SUPERVISOR_ACTOR_RAY_NAMESPACE",
                          lifetime="detached").remote()
ray.get([m.ping.remote(), f.ping.remote()])
"""

LIVE_DRIVER = """
import ray, time
ray.init(address={address!r})
time.sleep(300)
"""


def main() -> None:
    own, foreign = (Path(tempfile.mkdtemp(prefix="coop-capture-")) for _ in range(2))
    try:
        capture(own, foreign)
    finally:
        for folder in (own, foreign):
            shutil.rmtree(folder, ignore_errors=True)


def capture(own: Path, foreign: Path) -> None:
    (own / "own.py").write_text(OWN)
    (foreign / "foreign.py").write_text(FOREIGN)  # a working_dir of its own: Ray shares a package by hash
    with ray_cluster_with_jobs_api() as (cluster, dashboard):
        cluster.add_node(num_cpus=2, resources={"coop_node_7": 1}, labels={"coop/node-id": "7"})
        cluster.add_node(num_cpus=2, resources={"coop_node_8": 1})
        cluster.wait_for_nodes()
        backend = RayBackend(dashboard, os.environ["RAY_AUTH_TOKEN"])
        backend.client.submit_job(
            entrypoint=f"{sys.executable} own.py",
            submission_id="tcap-1-1",
            runtime_env={"working_dir": str(own)},
            entrypoint_resources={"coop_node_7": 0.001},
            metadata={"coop_job": "1", "coop_attempt": "1"},
        )
        backend.client.submit_job(
            entrypoint=f"{sys.executable} -c 'import time; time.sleep(300)'",
            submission_id="tcap-2-1",
            entrypoint_resources={"coop_node_8": 0.001},
        )
        backend.client.submit_job(entrypoint=f"{sys.executable} foreign.py", runtime_env={"working_dir": str(foreign)})
        subprocess.run([sys.executable, "-c", DRIVER.format(address=cluster.address)], check=True, timeout=120)
        live = subprocess.Popen([sys.executable, "-c", LIVE_DRIVER.format(address=cluster.address)])

        def settled() -> dict | None:  # type: ignore[type-arg]
            listing = backend.listing()
            running = [t for t in listing["tasks"] if t["type"] == "NORMAL_TASK" and t["state"] == "RUNNING"]
            actors = [a for a in listing["actors"] if a["state"] == "ALIVE"]
            driving = any(j["type"] == "DRIVER" and j["status"] == "RUNNING" for j in listing["jobs"])
            return listing if len(running) == 2 and len(actors) == 6 and driving else None

        try:
            listing = wait_for(settled, timeout=120, interval=1, what="all the work running")
        finally:
            live.kill()
            live.wait()
        OUT.write_text(json.dumps({"ours": OURS, "coop_nodes": [7, 8], "listing": listing}, indent=1) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
