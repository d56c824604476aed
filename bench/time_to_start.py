"""Submit-to-RUNNING through Coop against a bare Ray `submit_job`, on the same local cluster.

Prints the median and spread of both and what Coop adds. Coop's figure includes its placement
cycle (COOP_SCHEDULER_INTERVAL_S, default 1 s) and the cycle that observes RUNNING.

    python bench/time_to_start.py [--runs 5] [--interval 1.0]

``--guest`` measures instead what the guest sandbox adds to each job's start, on this machine's real
sandbox (agent/sandbox.py, bubblewrap): inside a node's outer sandbox, a trivial command started as Ray
started entrypoints before (``sh -c true``), through the job wrapper without and with its sandbox.

    python bench/time_to_start.py --guest [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import wait_for  # noqa: E402  (also sets the session's Ray token)

RUN = f"{sys.executable} -c 'import time; time.sleep(3)'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="Coop's scheduler interval, seconds")
    parser.add_argument("--guest", action="store_true", help="measure the per-job sandbox cost only (no Ray)")
    args = parser.parse_args()
    if args.guest:
        guest_start(args.runs)
        return
    from ray.job_submission import JobSubmissionClient

    from tests.e2e.conftest import ray_cluster_with_jobs_api

    with ray_cluster_with_jobs_api() as (cluster, dashboard):
        measure(args, cluster, dashboard, JobSubmissionClient(dashboard))


def measure(args: argparse.Namespace, cluster: Any, dashboard: str, ray_client: Any) -> None:
    from ray.job_submission import JobStatus

    from coop.client import CoopClient
    from coop.schemas import Heartbeat
    from tests.e2e.conftest import Coop, coop_settings, start_coordinator

    data = Path(tempfile.mkdtemp(prefix="coop-tts-"))
    settings = coop_settings(data, dashboard, scheduler_interval_s=args.interval)
    settings.heartbeat_interval_s = 5
    from sqlmodel import Session

    from coop.server.db import make_engine, upgrade
    from coop.server.services import accounts

    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine) as session:
        admin = accounts.bootstrap_admin(session)
    server, thread, url = start_coordinator(settings)
    coop = Coop(url, settings, cluster, dashboard, CoopClient(url, admin))
    node = coop.add_node("box", "donor", gpus=1)
    node.heartbeats.interval = 1.0
    coop_times, ray_times = [], []
    try:
        researcher = coop.member("researcher")
        for i in range(args.runs):
            t0 = time.perf_counter()
            sid = ray_client.submit_job(
                entrypoint=RUN,
                submission_id=f"bare-{i}-{time.time_ns()}",
                entrypoint_num_gpus=1,
                entrypoint_resources={f"coop_node_{node.id}": 0.001},
            )
            wait_for(lambda sid=sid: ray_client.get_job_status(sid) == JobStatus.RUNNING, timeout=60, interval=0.01)
            ray_times.append(time.perf_counter() - t0)
            wait_for(lambda sid=sid: ray_client.get_job_status(sid).is_terminal(), timeout=60, interval=0.05)

            t0 = time.perf_counter()
            job = researcher.submit({"name": f"tts-{i}", "run": RUN, "resources": {"gpus": 1}})
            wait_for(lambda job=job: researcher.job(job["id"])["state"] == "RUNNING", timeout=60, interval=0.01)
            coop_times.append(time.perf_counter() - t0)
            coop.wait_state(job["id"], "SUCCEEDED")
        node.heartbeats.client.heartbeat(node.id, Heartbeat())
    finally:
        node.heartbeats.stop()
        server.should_exit = True
        thread.join(timeout=15)

    def fmt(xs: list[float]) -> str:
        return f"median {statistics.median(xs) * 1000:6.0f} ms  (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"

    print(f"submit -> RUNNING over {args.runs} runs, scheduler interval {args.interval:g} s")
    print(f"  bare Ray submit_job : {fmt(ray_times)}")
    print(f"  through Coop        : {fmt(coop_times)}")
    print(f"  Coop adds           : {(statistics.median(coop_times) - statistics.median(ray_times)) * 1000:.0f} ms")


GUEST_TIMER = """
import json, os, subprocess, sys, time
runs = int(sys.argv[1])
def timed(argv, env):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
guest = {"ref": "bench", "command": "true", "env": {"COOP_CHECKPOINT_DIR": "/tmp/bench-ckpt"}, "owner": "1",
         "cpus": 1, "memory_bytes": 2**30}
env = {**os.environ, "COOP_GUEST": json.dumps(guest)}
off = {**env, "COOP_SANDBOX_POLICY": json.dumps({**json.loads(env["COOP_SANDBOX_POLICY"]), "enabled": False})}
wrapper = [sys.executable, "-I", "-m", "agent.guest"]
print(json.dumps({"bare": timed(["/bin/sh", "-c", "true"], env), "wrapper": timed(wrapper, off),
                  "sandbox": timed(wrapper, env)}))
"""


def guest_start(runs: int) -> None:
    """Median start of a trivial job: bare, through the wrapper unsandboxed, and sandboxed."""
    import json
    import subprocess

    from agent.sandbox import make_policy, outer_command, ray_environment

    root = Path(tempfile.mkdtemp(prefix="coop-guest-bench-"))
    policy = make_policy(True, root / "guest")
    argv = outer_command(policy, [sys.executable, "-c", GUEST_TIMER, str(runs)])
    env = ray_environment(policy, {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    print(
        f"a trivial job's start, median of {runs}, inside a node's sandbox "
        f"(cgroups: {', '.join(policy.cgroups) or 'none'})"
    )
    print(f"  sh -c true (as Ray ran entrypoints before)  : {figures['bare'] * 1000:6.1f} ms")
    print(f"  through the job wrapper, sandbox off        : {figures['wrapper'] * 1000:6.1f} ms")
    print(f"  through the job wrapper, sandbox on         : {figures['sandbox'] * 1000:6.1f} ms")
    print(
        f"  the sandbox adds                            : {(figures['sandbox'] - figures['bare']) * 1000:6.1f} ms "
        f"(of which bubblewrap and cgroups {(figures['sandbox'] - figures['wrapper']) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
