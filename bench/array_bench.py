"""How fast a real `coop server` accepts a job array: one POST /v1/arrays of --tasks tasks, SQLite and
PostgreSQL. Target: 10,000 tasks accepted in under 1 s.

Prints, per database and per form (a count, and a 100 x 100 matrix), the seconds from sending the request
to its answer (every task and its first event committed), median and worst of --runs, and how long
cancelling the array takes (each array is cancelled before the next, so the scheduler's queue stays the
same size). Not a test: figures only, no timing asserts.

    python bench/array_bench.py [--tasks 10000] [--runs 5] [--db sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

PG_URL = os.environ.get("COOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_arrays"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """(server, URL, the token of a member "bench"): a `coop server` on a fresh database."""
    env = {**os.environ, "COOP_DATA_DIR": tempfile.mkdtemp(prefix="coop-array-bench-"), "COOP_PORT": str(free_port())}
    env.pop("COOP_DATABASE_URL", None)
    if db == "postgres":
        from sqlalchemy import text

        from coop.server.db import make_engine

        engine = make_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        engine.dispose()
        env["COOP_DATABASE_URL"] = PG_URL + f"?options=-csearch_path%3D{SCHEMA}"
    coop = [sys.executable, "-m", "coop.cli.main"]
    boot = subprocess.run([*coop, "admin", "bootstrap", "--json"], env=env, capture_output=True, text=True)
    if boot.returncode != 0:
        raise SystemExit(f"coop admin bootstrap failed:\n{boot.stderr}")
    admin = json.loads(boot.stdout)["token"]
    proc = subprocess.Popen([*coop, "server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{env['COOP_PORT']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/v1/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("coop server did not start")
        time.sleep(0.1)
    member = httpx.post(url + "/v1/members", json={"name": "bench"}, headers={"Authorization": f"Bearer {admin}"})
    return proc, url, member.json()["token"]


def arrays_of(tasks: int) -> dict[str, Any]:
    side = max(1, round(tasks**0.5))
    return {
        "count": tasks,
        f"matrix {side}x{tasks // side}": {"model": [f"m{i}" for i in range(side)], "seed": list(range(tasks // side))},
    }


def run(db: str, tasks: int, runs: int) -> None:
    proc, url, token = start_server(db)
    try:
        with httpx.Client(base_url=url + "/v1", headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            for form, array in arrays_of(tasks).items():
                spec = {"name": "sweep", "kind": "eval", "run": "python eval.py", "resources": {"cpus": 1}}
                accepted, cancelled = [], []
                for _ in range(runs):
                    started = time.perf_counter()
                    reply = http.post("/arrays", json={"spec": spec | {"array": array}})
                    accepted.append(time.perf_counter() - started)
                    if reply.status_code != 201:
                        raise SystemExit(f"{db}: {reply.status_code} {reply.text[:500]}")
                    size = reply.json()["size"]
                    started = time.perf_counter()
                    http.post(f"/arrays/{reply.json()['id']}/cancel").raise_for_status()
                    cancelled.append(time.perf_counter() - started)
                print(
                    f"{db:8} {form:14} {size:6} tasks: accepted in {statistics.median(accepted):.3f} s median, "
                    f"{max(accepted):.3f} s worst ({runs} runs; {size / statistics.median(accepted):,.0f} tasks/s); "
                    f"cancelled in {statistics.median(cancelled):.3f} s median",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    print(f"job arrays of {args.tasks} tasks, one POST /v1/arrays each, on a real coop server ({os.cpu_count()} CPUs)")
    for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
        run(db, args.tasks, args.runs)


if __name__ == "__main__":
    main()
