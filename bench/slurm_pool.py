"""What an HPC pool costs: SSH round trips, and submit-to-RUNNING through Coop against a bare sbatch.

Needs the test cluster (``bash scripts/services/slurm.sh up``, as root). Prints medians of: a new
SSH connection plus one command, one command over the kept connection, a bare ``sbatch`` over SSH
until squeue says RUNNING, and the same job submitted through Coop until Coop says RUNNING (that
includes the placement cycle, COOP_SCHEDULER_INTERVAL_S, and the cycle that sees RUNNING).

    python bench/slurm_pool.py [--runs 5] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import wait_for  # noqa: E402


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:6.0f} ms  (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="Coop's scheduler interval, seconds")
    args = parser.parse_args()

    from coop.server.backends.slurm import commands
    from coop.server.backends.slurm.parse import parse_sbatch, parse_squeue
    from coop.server.backends.slurm.ssh import Connection
    from tests.slurm.conftest import USER, find_cluster, start_hpc

    cluster = find_cluster()
    fresh, kept = [], []
    for _ in range(args.runs * 4):
        t0 = time.perf_counter()
        conn = Connection(cluster.target)
        conn.run("true")
        fresh.append(time.perf_counter() - t0)
        conn.close()
    conn = Connection(cluster.target)
    conn.connect()
    for _ in range(args.runs * 4):
        t0 = time.perf_counter()
        conn.run(commands.squeue(USER))
        kept.append(time.perf_counter() - t0)

    bare = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        name = f"bench-{time.time_ns()}-{i}"
        job_id = parse_sbatch(conn.run(f"sbatch --parsable --job-name={name} --wrap 'sleep 2'").out)

        def running(job_id: str = job_id) -> bool:
            queue = parse_squeue(conn.run(commands.squeue(USER)).out)
            return any(e.job_id == job_id and e.state != "PENDING" for e in queue)

        wait_for(running, timeout=60, interval=0.01)
        bare.append(time.perf_counter() - t0)

    hpc, stop = start_hpc(cluster, scheduler_interval_s=args.interval)
    through = []
    try:
        assert hpc.cli(*hpc.pool_args("bench")).exit_code == 0
        wait_for(lambda: hpc.admin.request("GET", "/pools/bench")["state"] == "ok", timeout=30)
        client, _ = hpc.member("bench")
        for i in range(args.runs):
            t0 = time.perf_counter()
            job = client.submit({"name": f"b{i}", "run": "sleep 2", "resources": {"tier": "hpc"}})
            wait_for(lambda job=job: client.job(job["id"])["state"] == "RUNNING", timeout=60, interval=0.01)
            through.append(time.perf_counter() - t0)
            hpc.wait_state(job["id"], "SUCCEEDED")
    finally:
        stop()
        conn.close()

    print(f"SSH to the test cluster's login node (paramiko), {len(fresh)} calls each")
    print(f"  new connection + one command : {fmt(fresh)}")
    print(f"  squeue over the kept one     : {fmt(kept)}")
    print(f"submit -> RUNNING over {args.runs} runs, scheduler interval {args.interval:g} s")
    print(f"  bare sbatch over SSH         : {fmt(bare)}")
    print(f"  through Coop                 : {fmt(through)}")
    print(f"  Coop adds                    : {(statistics.median(through) - statistics.median(bare)) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
