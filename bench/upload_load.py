"""Does a bomb upload freeze the API? A real `coop server` under a mixed load while bombs upload.

For ``--seconds`` (60): job submissions, status reads, log reads, heartbeats of ``--nodes`` (500)
nodes each every 5 s, normal workdir uploads, and ``--bombs`` (2) clients uploading bombs back to
back: a 61.7 MiB gzip of zeros (about 64 GB expanded), 1,000,000 empty entries, and 600 MiB of
zeros (under the default expanded cap: accepted, after reading all of it). Prints request counts,
p50/p99/max latency per kind, errors, the server's peak memory, and whether ``/v1/health`` kept its
p99 under 100 ms. Not a test: figures to compare (issue 12: the 61.7 MiB bomb froze every endpoint
for 263 s).

    python bench/upload_load.py [--seconds 60] [--nodes 500] [--bombs 2] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import multiprocessing
import random
import statistics
import subprocess
import tarfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from submit_bench import SPEC, start_server  # same folder: the coordinator it starts, with a member

TARGET_MS = 100.0
HEARTBEAT_S = 5.0
MAX_OUTSTANDING = 40  # unanswered requests per kind; an agent waits for its last heartbeat
_ZEROS = 1 << 24  # 16 MiB of zeros per gzip member of a bomb


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    skipped: Counter[str] = field(default_factory=Counter)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def plain(self) -> dict[str, object]:
        """What a client process sends back (the defaultdicts' factories do not pickle)."""
        return {
            "latencies": dict(self.latencies),
            "statuses": {k: dict(v) for k, v in self.statuses.items()},
            "skipped": dict(self.skipped),
            "errors": dict(self.errors),
        }

    def add(self, other: dict[str, Any]) -> None:
        for kind, values in other["latencies"].items():
            self.latencies[kind].extend(values)
        for kind, counts in other["statuses"].items():
            self.statuses[kind].update(counts)
        self.skipped.update(other["skipped"])
        for kind, n in other["errors"].items():
            self.errors[kind] += n

    async def timed(
        self, kind: str, call: Awaitable[httpx.Response], ok: tuple[int, ...] = (200, 201)
    ) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            resp = await call
        except httpx.HTTPError as exc:
            self.latencies[kind].append(time.perf_counter() - t0)
            self.statuses[kind][type(exc).__name__] += 1
            self.errors[kind] += 1
            return None
        self.latencies[kind].append(time.perf_counter() - t0)
        self.statuses[kind][str(resp.status_code)] += 1
        if resp.status_code not in ok:
            self.errors[kind] += 1
        return resp


# --- archives -----------------------------------------------------------------------------------


def _gz_zeros(n: int) -> bytes:
    return gzip.compress(bytes(n), compresslevel=9)


def zeros_bomb(compressed_mb: float) -> bytes:
    """One member of zeros, ~1000x its compressed size: repeated gzip members (readers join them)."""
    block = _gz_zeros(_ZEROS)
    blocks = max(1, int(compressed_mb * 2**20 / len(block)))
    info = tarfile.TarInfo("zeros.bin")
    info.size = blocks * _ZEROS
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT)) + block * blocks + _gz_zeros(2 * tarfile.BLOCKSIZE)


def entries_bomb(entries: int) -> bytes:
    """``entries`` empty files (one name, repeated: the count is what costs)."""
    header = tarfile.TarInfo("f").tobuf(tarfile.USTAR_FORMAT)
    chunk = gzip.compress(header * 10_000, compresslevel=9)
    return chunk * (entries // 10_000) + _gz_zeros(2 * tarfile.BLOCKSIZE)


def workdir(seed: int) -> bytes:
    """A small, realistic workdir, unique per seed (so every upload is stored anew)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, size in [("train.py", 4_000), ("config.yaml", 500), ("data/sample.jsonl", 60_000)]:
            data = rng.randbytes(size // 2).hex().encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- the load -----------------------------------------------------------------------------------


async def every(
    interval: float,
    until: float,
    action: Callable[[], Awaitable[object]],
    skipped: Counter[str],
    kind: str,
    cap: int = MAX_OUTSTANDING,
) -> None:
    """Open loop: start ``action()`` every ``interval`` whether or not the last one answered, so a
    frozen server shows as latency, not as fewer requests. Past ``MAX_OUTSTANDING`` unanswered
    requests of one kind, the next are counted as skipped instead (a client with thousands of
    queued requests would spend the CPU the server needs)."""
    tasks: set[asyncio.Task[object]] = set()
    next_at = time.monotonic() + random.random() * interval
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        if len(tasks) >= cap:
            skipped[kind] += 1
            continue
        task = asyncio.ensure_future(action())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)


Node = tuple[int, dict[str, str]]


async def register(url: str, token: str, count: int) -> tuple[list[Node], int]:
    """``count`` nodes, each with its own agent token, and a first job to read: before the clock starts."""
    user = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        print(f"registering {count} nodes ...", flush=True)
        nodes: list[Node] = []
        for i in range(count):
            agent = (await client.post("/v1/tokens", json={"kind": "agent"}, headers=user)).json()["token"]
            headers = {"Authorization": f"Bearer {agent}"}
            gpus = [{"index": g, "name": "NVIDIA GeForce RTX 4090", "memory_gb": 24, "compute_capability": 8.9}
                    for g in range(2)]  # fmt: skip
            body = {"name": f"node-{i}", "cpus": 16, "memory_gb": 64, "tflops_per_gpu": 165, "gpus": gpus}
            resp = await client.post("/v1/nodes", json=body, headers=headers)
            resp.raise_for_status()
            node_id = resp.json()["id"]
            (await client.post(f"/v1/nodes/{node_id}/approve", headers=user)).raise_for_status()
            nodes.append((node_id, headers))
        first = await client.post("/v1/jobs", json={"spec": SPEC}, headers=user)
        return nodes, int(first.json()["id"])


@dataclass
class Part:
    """One client process's share of the load. The load is spread over processes, and ``/v1/health``
    is probed from a process of its own, so that what is measured is the server, not a client whose
    event loop is itself saturated (one process could not send 500 nodes' heartbeats on 2 cores)."""

    index: int
    parts: int
    nodes: list[Node]
    first_job: int
    probe: bool = False  # health only


async def run_part(url: str, token: str, args: argparse.Namespace, part: Part) -> Stats:
    stats = Stats()
    user = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as client:
        job_ids = [part.first_job]
        bombs = {
            f"{args.bomb_mb:g} MiB zeros": zeros_bomb(args.bomb_mb),
            "1M entries": entries_bomb(1_000_000),
            "600 MiB zeros": zeros_bomb(0.6),
        }
        start = time.monotonic()
        until = start + args.seconds

        async def put(kind: str, data: bytes, ok: tuple[int, ...]) -> httpx.Response | None:
            sha = hashlib.sha256(data).hexdigest()
            return await stats.timed(kind, client.put(f"/v1/workdirs/{sha}", content=data, headers=user), ok)

        async def bomber(n: int) -> None:
            order = list(bombs.items())
            i = n
            while time.monotonic() < until:
                name, data = order[i % len(order)]
                i += 1
                resp = await put("bomb upload", data, ok=(201, 413, 422))
                stats.statuses[f"bomb {name}"][str(resp.status_code) if resp is not None else "error"] += 1

        async def submit() -> None:
            resp = await stats.timed("submit", client.post("/v1/jobs", json={"spec": SPEC}, headers=user))
            if resp is not None and resp.status_code == 201:
                job_ids.append(resp.json()["id"])

        async def status() -> None:
            await stats.timed("job status", client.get(f"/v1/jobs/{random.choice(job_ids)}", headers=user))

        async def logs() -> None:
            await stats.timed("job logs", client.get(f"/v1/jobs/{random.choice(job_ids)}/logs", headers=user))

        async def health() -> None:
            await stats.timed("health", client.get("/v1/health"))

        seeds = iter(range(part.index * 10**6, 10**9))

        async def upload() -> None:
            await put("workdir upload", workdir(next(seeds)), ok=(201,))

        def heartbeat(node_id: int, headers: dict[str, str]) -> Callable[[], Awaitable[object]]:
            telemetry = {"gpus": [{"index": g, "utilization_pct": 50.0, "memory_used_gb": 8.0} for g in range(2)]}
            return lambda: stats.timed(
                "heartbeat", client.post(f"/v1/nodes/{node_id}/heartbeat", json=telemetry, headers=headers)
            )

        sk = stats.skipped
        if part.probe:
            await every(0.05, until, health, sk, "health")
            return stats
        n = part.parts
        await asyncio.gather(
            every(n / args.submit_rate, until, submit, sk, "submit"),
            every(n / args.status_rate, until, status, sk, "job status"),
            every(n / args.status_rate, until, logs, sk, "job logs"),
            every(n * args.upload_every, until, upload, sk, "workdir upload"),
            *(every(HEARTBEAT_S, until, heartbeat(node_id, h), sk, "heartbeat", cap=1) for node_id, h in part.nodes),
            *(bomber(b) for b in range(args.bombs) if b % n == part.index),
        )
        return stats


def _run_part(url: str, token: str, args: argparse.Namespace, part: Part) -> dict[str, object]:
    return asyncio.run(run_part(url, token, args, part)).plain()


def run_load(url: str, token: str, args: argparse.Namespace) -> tuple[Stats, float]:
    nodes, first_job = asyncio.run(register(url, token, args.nodes))
    parts = [Part(i, args.clients, nodes[i :: args.clients], first_job) for i in range(args.clients)]
    parts.append(Part(args.clients, args.clients, [], first_job, probe=True))
    print(f"mixed load for {args.seconds:g} s from {args.clients} client processes (and a health probe), "
          f"{args.bombs} bomb uploader(s) ...", flush=True)  # fmt: skip
    start = time.monotonic()
    with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_run_part, *zip(*((url, token, args, p) for p in parts), strict=True)))
    total = Stats()
    for result in results:
        total.add(result)
    return total, time.monotonic() - start


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--bombs", type=int, default=2, help="clients uploading bombs back to back")
    parser.add_argument("--bomb-mb", type=float, default=61.7, help="compressed size of the zeros bomb")
    parser.add_argument("--submit-rate", type=float, default=10, help="job submissions per second")
    parser.add_argument("--status-rate", type=float, default=20, help="status reads (and log reads) per second")
    parser.add_argument("--upload-every", type=float, default=2.0, help="seconds between normal workdir uploads")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout per request (s)")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--clients", type=int, default=3, help="client processes sharing the load")
    args = parser.parse_args()
    proc, url, token = start_server(args.db, workers=1, admin=True)
    try:
        stats, elapsed = run_load(url, token, args)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"\n{args.db}, {elapsed:.0f} s, {args.nodes} nodes, {args.bombs} bomb uploader(s)")
    print(f"{'kind':16} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses, skipped")
    for kind in ["health", "submit", "job status", "job logs", "heartbeat", "workdir upload", "bomb upload"]:
        lat = stats.latencies.get(kind)
        if not lat:
            continue
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(stats.statuses[kind].items()))
        print(f"{kind:16} {len(lat):>8} {stats.errors[kind]:>6} {quantile(lat, 50) * 1000:>8.1f} "
              f"{quantile(lat, 99) * 1000:>8.1f} {max(lat) * 1000:>8.1f}  {statuses}"
              + (f", skipped:{stats.skipped[kind]}" if stats.skipped[kind] else ""))  # fmt: skip
    for name, counts in sorted(stats.statuses.items()):
        if name.startswith("bomb ") and name != "bomb upload":
            print(f"  {name}: " + " ".join(f"{s}:{n}" for s, n in sorted(counts.items())))
    if rss is not None:
        print(f"server peak RSS: {rss:.0f} MiB")
    p99 = quantile(stats.latencies["health"], 99) * 1000
    verdict = "met" if p99 < TARGET_MS and not stats.errors["health"] and not stats.skipped["health"] else "NOT met"
    print(f"/v1/health p99 {p99:.1f} ms, {stats.errors['health']} errors: target < {TARGET_MS:g} ms {verdict}")


if __name__ == "__main__":
    main()
