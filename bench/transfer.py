"""Artifact store throughput against scp and cp: one file up to and down from a real coordinator.

On loopback, in one run: a file of ``--size-mb`` MiB of random bytes is sent to a coordinator
(uvicorn, SQLite) as an attempt's wrapper sends it (``coop.transfer.Sender.send``, as a checkpoint,
with the attempt's own credential), then downloaded as a researcher does (``coop.transfer.download``
of the job's output file: the same bytes sent again as the output set, which the store dedups).
The same file is then copied with ``cp`` and, where an sshd answers, sent with ``scp`` to that
host and fetched back. Prints seconds, MB/s and each time against scp's (target: the store within
2x of scp), with the store's own split: hashing on the sender, the PATCH requests, the server's
hash on finish; and on the way down, the transfer and the client's verifying hash.

scp goes to the Slurm testbed's sshd (``bash scripts/services/slurm.sh up``, as root:
cooptest@127.0.0.1:2222, key /tmp/coop-slurm/ssh/cooptest_key) unless ``--scp-target`` names
another; without one scp is skipped, saying why. Figures come from a warm page cache (the file was
just written), so they measure the transfer path, not the disk.

    python bench/transfer.py [--size-mb 1024] [--server thread|process] [--json]
        [--scp-target user@host[:port] --scp-key KEY]

``--server thread`` (the default) runs the coordinator in this process, as the tests do: the client
and server then share one interpreter (and its GIL). ``--server process`` runs it in a child process,
as a real coordinator is run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
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


def attempt_credential(c: Coordinator) -> tuple[Any, int, str]:
    """A researcher's client, a placed job of theirs, and its attempt's transfer credential."""
    from sqlmodel import Session, select

    from coop.server.models import Attempt
    from coop.server.services import scheduling
    from tests.api.helpers import job_spec, node

    c.new_member("alice")
    researcher, _ = c.new_member("bob")
    c.agent("alice").register_node(node("n1", gpus=1))
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
        return "POST finish (server hashes the blob, renames it)"
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


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def measure_scp(target: ScpTarget, src: Path, work: Path, size: int) -> tuple[list[Row], str]:
    """scp up to a temp folder on the target and back; the folder is removed after."""
    opts = ssh_options(target, work / "known_hosts")
    ssh = ["ssh", "-p", str(target.port), *opts, target.user_host]
    made = subprocess.run([*ssh, "mktemp -d /tmp/coop-bench-XXXXXX"], capture_output=True, text=True)
    if made.returncode != 0:
        return [], f"ssh {target.user_host} -p {target.port} failed: {made.stderr.strip()}"
    remote = made.stdout.strip()
    scp = ["scp", "-q", "-P", str(target.port), *opts]
    rows = []
    try:
        say(f"scp {size // MiB} MiB to {target.user_host}:{remote} ...")
        up = run([*scp, str(src), f"{target.user_host}:{remote}/file"])
        rows.append(row("scp", "upload", up, size, f"to {target.host}:{target.port}"))
        back = work / "scp-back"
        say(f"scp {size // MiB} MiB back ...")
        down = run([*scp, f"{target.user_host}:{remote}/file", str(back)])
        if back.stat().st_size != size:
            raise RuntimeError(f"scp brought back {back.stat().st_size} bytes, not {size}")
        back.unlink()
        rows.append(row("scp", "download", down, size, f"from {target.host}:{target.port}"))
    except RuntimeError as exc:
        return rows, str(exc)
    finally:
        subprocess.run([*ssh, f"rm -rf {remote}"], capture_output=True)
    return rows, ""


# --- the run -----------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from coop.transfer import Sender, download, sha256_of

    size = args.size_mb * MiB
    folder = work / "ckpt"
    folder.mkdir()
    src = folder / "shard.bin"
    say(f"writing {args.size_mb} MB test file...")
    write_random(src, size)
    rows: list[Row] = []

    say("hashing it once (sha256, as the sender and the server each do)...")
    t0 = time.perf_counter()
    sha = sha256_of(src)
    rows.append(row("sha256 pass", "hash", time.perf_counter() - t0, size, "coop.transfer.sha256_of, 1 MiB reads"))

    up_split, down_split = Split(), Split()
    with coordinator(args.server, work / "coop") as c:
        say(f"coordinator up at {c.url} ({args.server}); placing a job for its attempt's credential...")
        researcher, job_id, token = attempt_credential(c)

        sender = Sender(c.url, token)
        up_split.wrap(sender.client, upload_step)
        say(f"store upload: Sender.send of {args.size_mb} MB as a checkpoint...")
        t0 = time.perf_counter()
        done = sender.send(folder, "checkpoint")
        up = time.perf_counter() - t0
        assert done is not None and done["bytes"] == size, done
        requests = sum(up_split.seconds.values())
        up_split.add("client hash (manifest) and the rest", up - requests, requests=0)
        up_split.on = False
        rows.append(row("store (Sender.send)", "upload", up, size, "2 sha256 passes + PATCHes, see split"))

        before = sender.sent_bytes
        say("sending the same file as the output set (dedup: no bytes should go)...")
        t0 = time.perf_counter()
        sender.send(folder, "output")
        dedup_s = time.perf_counter() - t0
        resent = sender.sent_bytes - before
        sender.close()

        [output] = researcher.outputs(job_id)
        [item] = output["items"]
        assert item["sha256"] == sha and item["size"] == size, item
        down_split.wrap(researcher, lambda m, p: f"{m} other")
        dest = work / "pulled.bin"
        say(f"store download: coop.transfer.download of file {item['id']}...")
        t0 = time.perf_counter()
        download(researcher, f"/jobs/{job_id}/files/{item['id']}", dest, size, sha)
        down = time.perf_counter() - t0
        streamed = down_split.seconds["GET (body streamed)"]
        down_split.add("client verifying hash and the rest", down - streamed, requests=0)
        rows.append(row("store (download)", "download", down, size, "transfer + 1 sha256 pass, see split"))
        dest.unlink()

    say(f"cp {args.size_mb} MB...")
    copy = work / "copied.bin"
    rows.append(row("cp", "local copy", run(["cp", str(src), str(copy)]), size, "no fsync"))
    copy.unlink()

    target, skipped = scp_target(args)
    if target is not None:
        scp_rows, skipped = measure_scp(target, src, work, size)
        rows += scp_rows
    if skipped:
        say(f"scp skipped: {skipped}")

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
        "server": args.server,
        "rows": [asdict(r) for r in rows],
        "upload_split": {k: {"seconds": v, "requests": up_split.count[k]} for k, v in up_split.seconds.items()},
        "download_split": {k: {"seconds": v, "requests": down_split.count[k]} for k, v in down_split.seconds.items()},
        "dedup_resend": {"seconds": dedup_s, "bytes_sent": resent},
        "scp_skipped": skipped or None,
        "target": f"store within {TARGET:g}x of scp's time",
        "within_target": verdict,
    }


def report(result: dict[str, Any]) -> None:
    size = result["size_mib"]
    print(
        f"one {size} MiB file over loopback; {result['cores']} cores ({result['cores_usable']} usable); "
        f"coordinator in a {result['server']}; MB = MiB (2^20 bytes); warm page cache"
    )
    print()
    print(f"{'method':<22}{'direction':<12}{'seconds':>9}{'MB/s':>9}{'x scp':>8}  note")
    for r in result["rows"]:
        ratio = f"{r['vs_scp']:.2f}" if r["vs_scp"] is not None else "-"
        print(f"{r['method']:<22}{r['direction']:<12}{r['seconds']:>9.2f}{r['mb_s']:>9.0f}{ratio:>8}  {r['note']}")
    print("(x scp: seconds against scp's in the same direction; cp and sha256 against scp's upload)")
    for title, key in (("store upload, split", "upload_split"), ("store download, split", "download_split")):
        print()
        print(f"{title}:")
        for what, v in result[key].items():
            n = v["requests"]
            print(f"  {what:<52}{v['seconds']:>8.2f} s" + (f"  ({n} request{'s' if n != 1 else ''})" if n else ""))
    print()
    dedup = result["dedup_resend"]
    print(f"same file sent again as the output set: {dedup['seconds']:.2f} s, {dedup['bytes_sent']} blob bytes sent")
    print("the store's upload includes hashing the file on the sender (manifest) and again on the server (finish);")
    print("its download includes the client's verifying hash: compare with the 'sha256 pass' row.")
    if result["scp_skipped"]:
        print(f"scp skipped: {result['scp_skipped']}")
    for direction, ok in result["within_target"].items():
        if ok is not None:
            print(f"store {direction}: {'within' if ok else 'NOT within'} {TARGET:g}x of scp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="test file size, MiB (default 1024)")
    parser.add_argument("--server", choices=["thread", "process"], default="thread", help="where the coordinator runs")
    parser.add_argument("--scp-target", help=f"user@host[:port] to scp to and from (default {DEFAULT_SCP_TARGET})")
    parser.add_argument("--scp-key", help=f"ssh private key for scp (default {DEFAULT_SCP_KEY} for the testbed)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.size_mb <= 0:
        parser.error("--size-mb must be positive")
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
