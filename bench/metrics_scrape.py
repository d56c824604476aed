"""Cost of one Prometheus scrape of the coordinator's /metrics on a large ledger, SQLite and PostgreSQL.

Fills a ledger with members, nodes with GPUs and telemetry, jobs (mostly finished, some pending and
running) with their events, and credit entries; then times the scrape-time collector (the queries and
the text exposition) and prints the median and p90, the number of SQL statements and the size.
Not a test: a figure to keep well under Prometheus' scrape interval (15 s).

    python bench/metrics_scrape.py [--nodes 500] [--jobs 100000] [--ledger 500000] [--db sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import event, insert, text

from coop.server.config import Settings
from coop.server.db import make_engine, upgrade
from coop.server.metrics.collector import LedgerCollector
from coop.server.models import Attempt, Gpu, Job, JobEvent, LedgerEntry, Member, Node, utcnow

PG_URL = os.environ.get("COOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPEC = {"name": "bench", "kind": "finetune", "run": "python train.py", "resources": {"gpus": 1}}


def fill(url: str, members: int, nodes: int, jobs: int, entries: int) -> None:
    rng = random.Random(7)
    now = utcnow()
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(Member), [{"name": f"m{i}", "share": 1.0, "created_at": now} for i in range(members)])
        hb = {
            "gpus": [
                {"index": g, "utilization_pct": 80, "memory_used_gb": 12, "temperature_c": 70, "power_w": 300}
                for g in range(4)
            ],
            "foreign_processes": [],
        }
        conn.execute(
            insert(Node),
            [
                {
                    "member_id": 1 + i % members,
                    "name": f"n{i}",
                    "state": "online",
                    "tier": "consumer",
                    "cpus": 32,
                    "memory_gb": 128,
                    "telemetry": hb,
                    "registered_at": now,
                    "last_heartbeat_at": now,
                    "paused": False,
                    "draining": False,
                    "reclaim": False,
                    "disk_gb": 0,
                    "os": "Linux",
                    "python_version": "3.11",
                }
                for i in range(nodes)
            ],
        )
        conn.execute(
            insert(Gpu),
            [
                {"node_id": 1 + i, "index": g, "name": "NVIDIA GeForce RTX 4090", "model": "RTX4090", "memory_gb": 24}
                for i in range(nodes)
                for g in range(4)
            ],
        )
        states = ["SUCCEEDED"] * 90 + ["FAILED"] * 4 + ["CANCELLED"] * 2 + ["PENDING"] * 2 + ["RUNNING"] * 2
        rows = []
        for i in range(jobs):
            state = rng.choice(states)
            reason = rng.choice(["waiting for the scheduler", "waiting: no node has 1 GPU free; 3 nodes match"])
            rows.append(
                {
                    "member_id": 1 + i % members,
                    "name": "bench",
                    "kind": "finetune",
                    "state": state,
                    "spec": SPEC,
                    "gpus": 1,
                    "priority": "normal",
                    "preemptible": True,
                    "retries": 2,
                    "attempts": 1,
                    "reason": reason,
                    "submitted_at": now - timedelta(minutes=i % 600),
                }
            )
        conn.execute(insert(Job), rows)
        conn.execute(
            insert(JobEvent),
            [{"job_id": 1 + i, "to_state": "PENDING", "reason": "submitted", "at": now} for i in range(jobs)],
        )
        running = [i + 1 for i, r in enumerate(rows) if r["state"] == "RUNNING"]
        conn.execute(
            insert(Attempt),
            [
                {
                    "job_id": j,
                    "number": 1,
                    "state": "RUNNING",
                    "backend": "ray",
                    "node_id": 1 + k % nodes,
                    "gpu_indices": [k % 4],
                    "cpus": 1,
                    "started_at": now,
                }
                for k, j in enumerate(running)
            ],
        )
        kinds = ["spend", "earn", "idle", "own"]
        for start in range(0, entries, 50_000):
            conn.execute(
                insert(LedgerEntry),
                [
                    {
                        "member_id": 1 + i % members,
                        "amount": 0.5,
                        "kind": rng.choice(kinds),
                        "gpu_hours": 0.01,
                        "at": now,
                        "note": "",
                    }
                    for i in range(start, min(entries, start + 50_000))
                ],
            )
    engine.dispose()


def measure(url: str, label: str, runs: int) -> None:
    engine = make_engine(url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(engine, Settings(database_url=url)))
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine, "before_cursor_execute", count)
    generate_latest(registry)  # warm up: connections, statement cache
    statements = 0
    times, size = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        size = len(generate_latest(registry))
        times.append(time.perf_counter() - t)
    times.sort()
    p90 = times[int(0.9 * (len(times) - 1))]
    print(
        f"{label:>10}: scrape median {statistics.median(times) * 1000:7.1f} ms, p90 {p90 * 1000:7.1f} ms, "
        f"{statements / runs:.0f} SQL statements, {size / 1024:.0f} KiB of text"
    )
    engine.dispose()


@contextmanager
def database(db: str) -> Iterator[str]:
    """A fresh database URL (a temporary SQLite file, or a schema of its own), removed afterwards."""
    if db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="coop-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'coop.db'}"
        return
    engine = make_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS bench_metrics CASCADE"))
        conn.execute(text("CREATE SCHEMA bench_metrics"))
    try:
        yield PG_URL + "?options=-csearch_path%3Dbench_metrics"
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA bench_metrics CASCADE"))
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=500, help="each with 4 GPUs and telemetry")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--ledger", type=int, default=500_000, help="credit entries")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    args = ap.parse_args()
    print(f"{args.members} members, {args.nodes} nodes x 4 GPUs, {args.jobs} jobs, {args.ledger} ledger entries")
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        with database(db) as url:
            t = time.perf_counter()
            fill(url, args.members, args.nodes, args.jobs, args.ledger)
            print(f"{db:>10}: filled in {time.perf_counter() - t:.1f} s")
            measure(url, db, args.runs)


if __name__ == "__main__":
    main()
