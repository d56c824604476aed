"""Submission throughput of a real `coop server`: concurrent HTTP clients, SQLite and PostgreSQL.

Prints submissions per second and p50/p99 latency. Not a test: a figure to compare against
Slurm's published 1,000 submissions/s.

    python bench/submit_bench.py [--jobs 5000] [--concurrency 32] [--db sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx  # setup calls only; the load itself uses raw sockets

PG_URL = os.environ.get("COOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPEC = {"name": "bench", "kind": "batch", "run": "python train.py", "resources": {"gpus": 1, "gpu_memory": "16GB+"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(db: str, workers: int, admin: bool = False) -> tuple[subprocess.Popen[bytes], str, str]:
    """(server, URL, the token of a member "bench"; or, with ``admin``, the first admin's token)."""
    env = {**os.environ, "COOP_DATA_DIR": tempfile.mkdtemp(prefix="coop-bench-"), "COOP_PORT": str(free_port())}
    env.pop("COOP_DATABASE_URL", None)
    if db == "postgres":
        from sqlalchemy import text

        from coop.server.db import make_engine

        engine = make_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS bench CASCADE"))
            conn.execute(text("CREATE SCHEMA bench"))
        engine.dispose()
        env["COOP_DATABASE_URL"] = PG_URL + "?options=-csearch_path%3Dbench"
    coop = [sys.executable, "-m", "coop.cli.main"]
    boot = subprocess.run([*coop, "admin", "bootstrap", "--json"], env=env, capture_output=True, text=True)
    if boot.returncode != 0:
        raise SystemExit(f"coop admin bootstrap failed:\n{boot.stderr}")
    token = json.loads(boot.stdout)["token"]
    proc = subprocess.Popen(
        [*coop, "server", "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    if admin:  # only an admin creates agent tokens and approves nodes
        return proc, url, token
    member = httpx.post(url + "/v1/members", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"})
    return proc, url, member.json()["token"]


async def drive(url: str, token: str, jobs: int, concurrency: int) -> tuple[float, list[float]]:
    """Keep-alive HTTP/1.1 over raw asyncio streams: a client this cheap leaves the CPU to the server."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"spec": SPEC}).encode()
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    left = [jobs]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 201"):
                raise SystemExit(f"submission failed: {head!r} {payload[:300]!r}")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    print(f"{'database':10} {'workers':>7} {'jobs':>6} {'conc':>5} {'subs/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for db in ["sqlite", "postgres"] if args.db == "both" else [args.db]:
        proc, url, token = start_server(db, args.workers)
        try:
            asyncio.run(drive(url, token, 200, args.concurrency))  # warm-up
            elapsed, lat = asyncio.run(drive(url, token, args.jobs, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        q = statistics.quantiles(lat, n=100)
        print(
            f"{db:10} {args.workers:>7} {args.jobs:>6} {args.concurrency:>5} {args.jobs / elapsed:>8.0f} "
            f"{q[49] * 1000:>7.1f} {q[98] * 1000:>7.1f}"
        )


if __name__ == "__main__":
    main()
