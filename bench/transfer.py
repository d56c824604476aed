"""Artifact store throughput against scp and cp: one file up to and down from a real coordinator.

On loopback, in one run: a file of ``--size-mb`` MiB of random bytes is sent to a coordinator
(uvicorn, SQLite) as an attempt's wrapper sends it (``coop.transfer.Sender.send``, as a checkpoint,
with the attempt's own credential), then downloaded as a researcher does (``coop.transfer.download``
of the job's output file: the same bytes sent again as the output set, which the store dedups).
The same file is then copied with ``cp`` and, where an sshd answers, sent with ``scp`` to that
host and fetched back. Prints seconds, MB/s and each time against scp's (target: the store within
2x of scp), with the store's own split: hashing on the sender, the PATCH requests (the server
hashes as they arrive), the finish; and on the way down, the transfer (hashed as it arrives).

scp goes to the Slurm testbed's sshd (``bash scripts/services/slurm.sh up``, as root:
cooptest@127.0.0.1:2222, key /tmp/coop-slurm/ssh/cooptest_key) unless ``--scp-target`` names
another; without one scp is skipped, saying why. The file was just written, so reads come from a
warm page cache; a ``sync`` before each timed step keeps one step's dirty pages from slowing the
next. The store fsyncs each 8 MiB request it is sent; cp and scp do not fsync.

    python bench/transfer.py [--size-mb 1024] [--repeat 1] [--server process|thread] [--json]
        [--scp-target user@host[:port] --scp-key KEY]

``--server process`` (the default) runs the coordinator in a child process, as a real one runs (on
another machine, in production). ``--server thread`` runs it in a thread of this process, as the
tests do: the client and the server then share one interpreter and its GIL, which slows both.
``--repeat N`` runs every method N times (a new member each time, so the blob is sent again rather
than deduplicated) and prints the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Coordinator, free_port, loopless_coordinator, wait_for  # noqa: E402
from tests.observability.cooperative import InProcessBackend  # noqa: E402

MiB = 1 << 20
WRITE_CHUNK = 8 * MiB
TARGET = 2.0  # the store's time at most this many times scp's
DEFAULT_SCP_TARGET = "cooptest@127.0.0.1:2222"
DEFAULT_SCP_KEY = Path("/tmp/coop-slurm/ssh/cooptest_key")


def quiet() -> None:
    """The coordinator's own warnings (no admin yet, a node awaiting approval) are not the bench's."""
    logging.getLogger("coop").setLevel(logging.ERROR)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Row:
    method: str
    direction: str
    seconds: float
    mb_s: float
    vs_scp: float | None = None  # seconds / scp's seconds in the same direction (upload for cp, sha256)
    note: str = ""


def row(method: str, direction: str, seconds: float, size: int, note: str = "") -> Row:
    return Row(method, direction, seconds, size / MiB / seconds if seconds > 0 else float("inf"), note=note)


# --- the test file -----------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    """``size`` random bytes, a chunk at a time (never the whole file in memory)."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(WRITE_CHUNK, left)
            f.write(os.urandom(n))
            left -= n


# --- the coordinator ---------------------------------------------------------------------------------


class RecordingBackend(InProcessBackend):
    """Stands in for Ray (not what is measured here): keeps each launch, whose credential the bench
    plays the wrapper with, as tests/api/test_artifacts.py does."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: dict[str, Any] = {}

    def submit(self, launch: Any) -> None:
        self.launches[launch.ref] = launch
        super().submit(launch)


def _serve_child(data_dir: str, port: int) -> None:
    """The coordinator of ``--server process``: no background loops, as ``loopless_coordinator``."""
    import uvicorn

    quiet()
    from coop.server.app import create_app
    from coop.server.config import Settings

    app = create_app(Settings(data_dir=Path(data_dir), heartbeat_interval_s=0.5), start_loops=False)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run()


@contextmanager
def child_coordinator(data_dir: Path) -> Iterator[Coordinator]:
    """A coordinator in a process of its own (its database and key under ``data_dir``), with a first admin."""
    import httpx
    from sqlmodel import Session

    from coop.server.config import Settings
    from coop.server.db import make_engine
    from coop.server.services import accounts

    port = free_port()
    child = multiprocessing.get_context("spawn").Process(target=_serve_child, args=(str(data_dir), port), daemon=True)
    child.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not child.is_alive():
            raise RuntimeError(f"the coordinator process exited ({child.exitcode}) before it answered")
        try:
            return httpx.get(f"{url}/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    engine = None
    c = None
    try:
        wait_for(up, timeout=60, interval=0.1, what="the coordinator process to answer")
        settings = Settings(data_dir=data_dir, heartbeat_interval_s=0.5)
        engine = make_engine(settings.resolved_database_url)
        with Session(engine) as session:
            token = accounts.bootstrap_admin(session)
        assert token, "a fresh data dir has no admin yet"
        c = Coordinator(url, settings, engine, admin_token=token)
        yield c
    finally:
        if c is not None:
            for client in c.clients:
                client.close()
        if engine is not None:
            engine.dispose()
        child.terminate()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()


def coordinator(how: str, data_dir: Path) -> AbstractContextManager[Coordinator]:
    return loopless_coordinator(data_dir) if how == "thread" else child_coordinator(data_dir)


def attempt_credential(c: Coordinator, n: int) -> tuple[Any, int, str]:
    """A researcher's client, a placed job of theirs, and its attempt's transfer credential: the
    ``n``-th of each (members and a node of its own, so each run's upload sends the whole blob)."""
    from sqlmodel import Session, select

    from coop.server.models import Attempt
    from coop.server.services import scheduling
    from tests.api.helpers import job_spec, node

    c.new_member(f"donor{n}")
    researcher, _ = c.new_member(f"researcher{n}")
    c.agent(f"donor{n}").register_node(node(f"n{n}", gpus=1))
    job_id = researcher.submit(job_spec("bench", 1))["id"]
    backend = RecordingBackend()
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)
        attempt = session.exec(select(Attempt).where(Attempt.job_id == job_id)).first()
    if attempt is None or attempt.backend_ref not in backend.launches:
        raise RuntimeError(f"job {job_id} was not placed: no attempt, so no credential")
    return researcher, job_id, backend.launches[attempt.backend_ref].transfer_token


# --- timing the store's steps ------------------------------------------------------------------------


class Split:
    """Seconds spent in each kind of request a client makes (``CoopClient.request`` and ``stream``),
    recorded by wrapping them on one client instance: nothing of the product is changed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.on = True  # off: what the client does next is not recorded

    def add(self, what: str, seconds: float, requests: int = 1) -> None:
        if self.on:
            self.seconds[what] += seconds
            self.count[what] += requests

    def wrap(self, client: Any, name: Callable[[str, str], str]) -> None:
        request, stream = client.request, client.stream

        def timed_request(method: str, path: str, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return request(method, path, **kwargs)
            finally:
                self.add(name(method, path), time.perf_counter() - t0)

        @contextmanager
        def timed_stream(path: str, start: int = 0) -> Iterator[Iterator[bytes]]:
            t0 = time.perf_counter()
            try:
                with stream(path, start=start) as chunks:
                    yield chunks
            finally:
                self.add("GET (body streamed)", time.perf_counter() - t0)

        client.request = timed_request
        client.stream = timed_stream


def upload_step(method: str, path: str) -> str:
    if method == "PATCH":
        return "PATCH blob bytes (network, server write + fsync)"
    if path.endswith("/finish"):
        return "POST finish (server checks the hash, renames it)"
    if path.endswith("/commit"):
        return "POST commit"
    if path == "/transfer/sets":
        return "POST begin (manifest)"
    return f"{method} other"


# --- scp ---------------------------------------------------------------------------------------------


@dataclass
class ScpTarget:
    user_host: str
    host: str
    port: int
    key: Path | None


def scp_target(args: argparse.Namespace) -> tuple[ScpTarget | None, str]:
    """Where scp goes, or None and why not."""
    for tool in ("scp", "ssh"):
        if shutil.which(tool) is None:
            return None, f"{tool} is not installed"
    spec = args.scp_target or DEFAULT_SCP_TARGET
    key = Path(args.scp_key) if args.scp_key else (DEFAULT_SCP_KEY if not args.scp_target else None)
    user_host, colon, port = spec.rpartition(":")
    if not colon or not port.isdigit():
        user_host, port = spec, "22"
    host = user_host.rpartition("@")[2]
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except (OSError, ValueError) as exc:
        hint = " (start the Slurm testbed: bash scripts/services/slurm.sh up)" if not args.scp_target else ""
        return None, f"no sshd answers on {host}:{port}: {exc}{hint}"
    if key is not None and not os.access(key, os.R_OK):
        return None, f"the key {key} cannot be read"
    return ScpTarget(user_host, host, int(port), key), ""


def ssh_options(target: ScpTarget, known_hosts: Path) -> list[str]:
    options = [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip
    return options + (["-o", "IdentitiesOnly=yes", "-i", str(target.key)] if target.key else [])


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")


class Scp:
    """scp to a temp folder on the target (made by ``open``, removed by ``close``) and back."""

    def __init__(self, target: ScpTarget, work: Path) -> None:
        self.target = target
        self.work = work
        opts = ssh_options(target, work / "known_hosts")
        self.ssh = ["ssh", "-p", str(target.port), *opts, target.user_host]
        self.scp = ["scp", "-q", "-P", str(target.port), *opts]
        self.remote = ""

    def open(self) -> str:
        """'' once the remote folder is made, else why not."""
        made = subprocess.run([*self.ssh, "mktemp -d /tmp/coop-bench-XXXXXX"], capture_output=True, text=True)
        if made.returncode != 0:
            return f"ssh -p {self.target.port} {self.target.user_host} failed: {made.stderr.strip()}"
        self.remote = made.stdout.strip()
        return ""

    def close(self) -> None:
        if self.remote:
            subprocess.run([*self.ssh, f"rm -rf {self.remote}"], capture_output=True)

    def up(self, src: Path) -> None:
        run([*self.scp, str(src), f"{self.target.user_host}:{self.remote}/file"])

    def down(self, dest: Path) -> None:
        run([*self.scp, f"{self.target.user_host}:{self.remote}/file", str(dest)])


# --- the run -----------------------------------------------------------------------------------------

METHODS = [  # key, method, direction, note
    ("sha256", "sha256 pass", "hash", "coop.transfer.sha256_of, 1 MiB reads"),
    ("store_up", "store (Sender.send)", "upload", "sender's sha256 + PATCHes (hashed, fsynced), see split"),
    ("store_down", "store (download)", "download", "transfer + 1 sha256 pass, see split"),
    ("cp", "cp", "local copy", "no fsync"),
    ("scp_up", "scp", "upload", "no fsync"),
    ("scp_down", "scp", "download", "no fsync"),
]


def clock(step: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Seconds ``step(*args)`` takes, after a sync: no dirty pages left by the step before slow it down."""
    os.sync()
    t0 = time.perf_counter()
    result = step(*args)
    return time.perf_counter() - t0, result


def store_round(c: Coordinator, n: int, folder: Path, sha: str, work: Path, size: int) -> dict[str, Any]:
    """One upload and one download through the store, by a new member (so the blob is sent, not deduped)."""
    from coop.transfer import Sender, download

    researcher, job_id, token = attempt_credential(c, n)
    sender = Sender(c.url, token)
    up_split, down_split = Split(), Split()
    up_split.wrap(sender.client, upload_step)
    say(f"store upload: Sender.send of {size // MiB} MB as a checkpoint...")
    up, done = clock(sender.send, folder, "checkpoint")
    assert done is not None and done["bytes"] == size, done
    up_split.add("client hash (manifest) and the rest", up - sum(up_split.seconds.values()), requests=0)
    up_split.on = False

    before = sender.sent_bytes
    say("sending the same file as the output set (dedup: no blob bytes should go)...")
    dedup_s, _ = clock(sender.send, folder, "output")
    resent = sender.sent_bytes - before
    sender.close()

    [output] = researcher.outputs(job_id)
    [item] = output["items"]
    assert item["sha256"] == sha and item["size"] == size, item
    down_split.wrap(researcher, lambda m, p: f"{m} other")
    dest = work / "pulled.bin"
    say(f"store download: coop.transfer.download of job {job_id}'s file {item['id']}...")
    down, _ = clock(download, researcher, f"/jobs/{job_id}/files/{item['id']}", dest, size, sha)
    down_split.add("client verifying hash and the rest", down - down_split.seconds["GET (body streamed)"], requests=0)
    dest.unlink()
    return {
        "store_up": up,
        "store_down": down,
        "upload_split": (dict(up_split.seconds), dict(up_split.count)),
        "download_split": (dict(down_split.seconds), dict(down_split.count)),
        "dedup": (dedup_s, resent),
    }


def mean_split(splits: list[tuple[dict[str, float], dict[str, int]]]) -> dict[str, dict[str, float]]:
    keys = list(dict.fromkeys(k for seconds, _ in splits for k in seconds))
    return {
        k: {
            "seconds": statistics.mean(seconds.get(k, 0.0) for seconds, _ in splits),
            "requests": statistics.mean(count.get(k, 0) for _, count in splits),
        }
        for k in keys
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from coop.transfer import sha256_of

    size = args.size_mb * MiB
    folder = work / "ckpt"
    folder.mkdir()
    src = folder / "shard.bin"
    say(f"writing {args.size_mb} MB test file...")
    write_random(src, size)
    sha = sha256_of(src)
    samples: dict[str, list[float]] = defaultdict(list)
    rounds: list[dict[str, Any]] = []

    target, skipped = scp_target(args)
    scp = Scp(target, work) if target is not None else None
    with ExitStack() as stack:
        c = stack.enter_context(coordinator(args.server, work / "coop"))
        say(f"coordinator up at {c.url} ({args.server})")
        if scp is not None:
            stack.callback(scp.close)
            skipped = scp.open()
            scp = None if skipped else scp
        for n in range(args.repeat):
            if args.repeat > 1:
                say(f"--- run {n + 1} of {args.repeat}")
            say("hashing the file once (sha256, as the sender and the server each do)...")
            samples["sha256"].append(clock(sha256_of, src)[0])
            rounds.append(store_round(c, n, folder, sha, work, size))
            for key in ("store_up", "store_down"):
                samples[key].append(rounds[-1][key])
            say(f"cp {args.size_mb} MB...")
            samples["cp"].append(clock(run, ["cp", str(src), str(work / "copied.bin")])[0])
            (work / "copied.bin").unlink()
            if scp is None:
                continue
            try:
                say(f"scp {args.size_mb} MB to {scp.target.user_host}:{scp.remote}...")
                samples["scp_up"].append(clock(scp.up, src)[0])
                say(f"scp {args.size_mb} MB back...")
                back = work / "scp-back"
                samples["scp_down"].append(clock(scp.down, back)[0])
                if back.stat().st_size != size:
                    raise RuntimeError(f"scp brought back {back.stat().st_size} bytes, not {size}")
                back.unlink()
            except RuntimeError as exc:
                skipped, scp = str(exc), None
                samples.pop("scp_up", None)
                samples.pop("scp_down", None)
    if skipped:
        say(f"scp skipped: {skipped}")

    rows = []
    for key, method, direction, note in METHODS:
        if key not in samples:
            continue
        xs = samples[key]
        if len(xs) > 1:
            note = f"{note}; min {min(xs):.2f}, max {max(xs):.2f} s"
        if key.startswith("scp") and target is not None:
            note = f"{note}; {target.host}:{target.port}"
        rows.append(row(method, direction, statistics.median(xs), size, note))
    scp_s = {r.direction: r.seconds for r in rows if r.method == "scp"}
    for r in rows:
        base = scp_s.get(r.direction if r.direction in ("upload", "download") else "upload")
        if base:
            r.vs_scp = r.seconds / base
    verdict = {}
    for direction in ("upload", "download"):
        store = next(r for r in rows if r.method.startswith("store") and r.direction == direction)
        verdict[direction] = None if store.vs_scp is None else store.vs_scp <= TARGET
    return {
        "size_bytes": size,
        "size_mib": args.size_mb,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg(),
        "server": args.server,
        "runs": args.repeat,
        "rows": [asdict(r) for r in rows],
        "samples_s": dict(samples),
        "upload_split": mean_split([r["upload_split"] for r in rounds]),
        "download_split": mean_split([r["download_split"] for r in rounds]),
        "dedup_resend": {
            "seconds": statistics.mean(r["dedup"][0] for r in rounds),
            "bytes_sent": max(r["dedup"][1] for r in rounds),
        },
        "scp_skipped": skipped or None,
        "target": f"store within {TARGET:g}x of scp's time",
        "within_target": verdict,
    }


def report(result: dict[str, Any]) -> None:
    runs = result["runs"]
    load = ", ".join(f"{x:.2f}" for x in result["load_average"])
    print(
        f"one {result['size_mib']} MiB file over loopback; {result['cores']} cores ({result['cores_usable']} usable), "
        f"load average {load} at the end; coordinator in a {result['server']}"
    )
    print(
        f"seconds: {'median of ' + str(runs) + ' runs' if runs > 1 else 'one run'}; MB = MiB (2^20 bytes); "
        "warm page cache, a sync before each step"
    )
    print()
    print(f"{'method':<22}{'direction':<12}{'seconds':>9}{'MB/s':>9}{'x scp':>8}  note")
    for r in result["rows"]:
        ratio = f"{r['vs_scp']:.2f}" if r["vs_scp"] is not None else "-"
        print(f"{r['method']:<22}{r['direction']:<12}{r['seconds']:>9.2f}{r['mb_s']:>9.0f}{ratio:>8}  {r['note']}")
    print("(x scp: seconds against scp's in the same direction; cp and sha256 against scp's upload)")
    each = f", mean of {runs} runs" if runs > 1 else ""
    for title, key in (("store upload, split", "upload_split"), ("store download, split", "download_split")):
        print()
        print(f"{title}{each}:")
        for what, v in result[key].items():
            n = round(v["requests"])
            print(f"  {what:<52}{v['seconds']:>8.2f} s" + (f"  ({n} request{'s' if n != 1 else ''})" if n else ""))
    print()
    dedup = result["dedup_resend"]
    print(
        f"same file sent again as the output set: {dedup['seconds']:.2f} s, {dedup['bytes_sent']} blob bytes sent "
        "(the sender keeps the hashes of files unchanged since it last sent them)"
    )
    print("the store's upload includes hashing the file on the sender (manifest) and on the server (as it")
    print("arrives), and an fsync per 8 MiB request; its download includes the client's verifying hash: compare")
    print("with the 'sha256 pass' row. cp and scp do not fsync.")
    if result["scp_skipped"]:
        print(f"scp skipped: {result['scp_skipped']}")
    for direction, ok in result["within_target"].items():
        if ok is not None:
            print(f"store {direction}: {'within' if ok else 'NOT within'} {TARGET:g}x of scp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="test file size, MiB (default 1024)")
    parser.add_argument(
        "--server", choices=["process", "thread"], default="process",
        help="the coordinator in a child process (default, as deployed) or in a thread of this one (as tests run it)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs of every method; the median is printed")
    parser.add_argument("--scp-target", help=f"user@host[:port] to scp to and from (default {DEFAULT_SCP_TARGET})")
    parser.add_argument("--scp-key", help=f"ssh private key for scp (default {DEFAULT_SCP_KEY} for the testbed)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.size_mb <= 0 or args.repeat <= 0:
        parser.error("--size-mb and --repeat must be positive")
    quiet()
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="coop-bench-transfer-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        result = measure(args, work)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
