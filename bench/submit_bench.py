"""Submission throughput of a real `coop server` beside Slurm's `sbatch`, on the same machine.

Prints submissions per second, p50/p99 latency and the server's CPU time per submission for each
database and number of concurrent clients, and, when `sbatch` is on PATH, Slurm's figure from the same
run (`sbatch --hold` from 8 client processes, the jobs cancelled afterwards) and Coop's ratio to it.
Not a test: figures to compare (issue 18's targets: >= 1,000/s and >= 2x sbatch, p99 < 100 ms at 32).

    python bench/submit_bench.py [--jobs 5000] [--concurrency 8,32] [--db sqlite|postgres|both]
        [--workers 1] [--pg-workers 2] [--sbatch-jobs 1000] [--no-sbatch]

Slurm keeps ended jobs for MinJobAge (an hour here) and refuses more than MaxJobCount (10,000): keep
--sbatch-jobs small when the bench is run often.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx  # setup calls only; the load itself uses raw sockets
import psutil

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


def server_cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds the server (and its worker processes) used so far."""
    total = 0.0
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def sbatch_rate(jobs: int, clients: int) -> float:
    """Submissions per second of ``sbatch --hold`` from ``clients`` threads, each running sbatch as a user
    would (one process per job). The jobs are cancelled afterwards."""
    ids: list[str] = []
    left = [jobs]
    lock = threading.Lock()
    name = f"coop-submit-bench-{os.getpid()}"
    command = ["sbatch", "--hold", "--parsable", "-J", name, "-o", "/dev/null", "--wrap", "true"]

    def client() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            with lock:
                ids.append(out.strip().split(";")[0])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for i in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[i : i + 500]], check=False)
    if len(ids) != jobs:
        raise SystemExit(f"sbatch: {len(ids)} of {jobs} jobs submitted")
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="submissions per measured run")
    parser.add_argument("--concurrency", default="8,32", help="concurrent clients, comma-separated: one run each")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server")
    parser.add_argument("--pg-workers", type=int, default=2, help="workers on PostgreSQL (SQLite: --workers)")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--sbatch-jobs", type=int, default=1000, help="jobs for Slurm's figure")
    parser.add_argument("--sbatch-clients", type=int, default=8)
    parser.add_argument("--no-sbatch", action="store_true", help="leave Slurm's figure out")
    args = parser.parse_args()
    slurm = None
    if not args.no_sbatch and shutil.which("sbatch"):
        slurm = sbatch_rate(args.sbatch_jobs, args.sbatch_clients)
        print(f"sbatch --hold, {args.sbatch_clients} clients, {args.sbatch_jobs} jobs: {slurm:.0f} submissions/s")
    elif not args.no_sbatch:
        print("sbatch is not on PATH: no Slurm figure to compare with")
    print(
        f"{'database':10} {'workers':>7} {'jobs':>6} {'conc':>5} {'subs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu ms/sub':>10}" + (f" {'x sbatch':>8}" if slurm else "")
    )
    for db in ["sqlite", "postgres"] if args.db == "both" else [args.db]:
        workers = args.pg_workers if db == "postgres" and args.pg_workers else args.workers
        proc, url, token = start_server(db, workers)
        try:
            asyncio.run(drive(url, token, 200 * workers, 32))  # warm-up (every worker)
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                cpu = server_cpu_s(proc)
                elapsed, lat = asyncio.run(drive(url, token, args.jobs, concurrency))
                cpu = server_cpu_s(proc) - cpu
                q = statistics.quantiles(lat, n=100)
                rate = args.jobs / elapsed
                ratio = f" {rate / slurm:>8.2f}" if slurm else ""
                print(
                    f"{db:10} {workers:>7} {args.jobs:>6} {concurrency:>5} {rate:>8.0f} {q[49] * 1000:>7.1f} "
                    f"{q[98] * 1000:>7.1f} {cpu / args.jobs * 1000:>10.2f}{ratio}"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
