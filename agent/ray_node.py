"""Runs ``ray start --address … --block`` as a supervised child and restarts it with backoff."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent.ray_loopback import DISABLED, LOOPBACK
from agent.sandbox import Policy, outer_command, ray_environment

log = logging.getLogger("coop.agent.ray")


@dataclass
class RayNodeConfig:
    ray_bin: str
    address: str
    node_id: int
    num_gpus: int
    num_cpus: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    node_ip_address: str | None = None
    temp_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # The head reads job logs from this node's dashboard agent over HTTP. Ray's default (52365) is
    # taken when the head or another agent runs on the same machine, and the node then reports no
    # port at all (logs fail with "http://IP:-1/..."): 0 lets the agent pick a free one.
    dashboard_agent_port: int = 0
    sandbox: Policy | None = None  # disabled (--no-sandbox): unconfined, but still without the agent's env

    @property
    def resource_name(self) -> str:
        return f"coop_node_{self.node_id}"

    @property
    def loopback(self) -> bool:
        """Ray on loopback only (a head on this machine, ``coop up``): see agent/ray_loopback.py."""
        host = self.address.rsplit(":", 1)[0]
        return (self.node_ip_address or host) in LOOPBACK

    def command(self) -> list[str]:
        start = [sys.executable, "-m", "agent.ray_loopback", "start"] if self.loopback else [self.ray_bin, "start"]
        cmd = [
            *start,
            f"--address={self.address}",
            f"--num-gpus={self.num_gpus}",
            f"--resources={json.dumps({self.resource_name: 1})}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_port}",
            "--block",
            "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.labels:  # hidden from --help, but supported; k=v,k2=v2 form (JSON is deprecated)
            cmd.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        if self.node_ip_address or self.loopback:
            cmd.append(f"--node-ip-address={self.node_ip_address or '127.0.0.1'}")
        if self.temp_dir:
            cmd.append(f"--temp-dir={self.temp_dir}")
        return outer_command(self.sandbox, cmd) if self.sandbox is not None else cmd


def label_value(text: str) -> str:
    """Ray label values: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:63].strip("._-")
    return cleaned or "unknown"


_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def _die_with_agent() -> None:
    """In the child, before exec: SIGTERM when the agent's thread that started it dies (SIGKILL, OOM
    killer included). ``ray start --block`` stops raylet and its agents on SIGTERM; the sandbox's
    bubblewrap sets its own (SIGKILL), and its PID namespace takes every Ray process with it. Only a
    pre-bound libc call here: nothing that could wait on a lock another thread held at fork."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


RECORD = "ray.json"  # in the state dir: the Ray processes this agent started, for the next agent


def is_ray_start(cmdline: list[str]) -> bool:
    """``ray start …``, or ``python -m agent.ray_loopback start …``."""
    head = cmdline[:4]
    return "start" in cmdline and (any(Path(a).name == "ray" for a in head[:2]) or "agent.ray_loopback" in head)


def _ray_like(proc: psutil.Process) -> bool:
    """A process of a Ray node as an agent starts it: ``ray start``, raylet, Ray's agents and workers,
    the log monitor, or the bubblewrap around them."""
    cmdline = proc.cmdline()
    text = " ".join(cmdline[:3])
    return bool(cmdline) and (
        Path(cmdline[0]).name == "bwrap" or "ray" in proc.name().lower() or "/ray/" in text or "ray" in text.split()
        or is_ray_start(cmdline) or cmdline[0].startswith("ray::")
    )  # fmt: skip


def record_processes(path: Path, procs: list[psutil.Process]) -> None:
    entries = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            entries.append({"pid": proc.pid, "created": proc.create_time(), "name": proc.name()})
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        agent = {"agent_pid": os.getpid(), "agent_created": psutil.Process().create_time()}
        tmp.write_text(json.dumps({**agent, "processes": entries}))
        tmp.replace(path)


def stop_leftovers(path: Path, timeout: float = 10.0) -> list[int]:
    """Stop the Ray processes a previous agent recorded in ``path`` and that still run (a killed agent
    whose Ray outlived it): each must be the very process recorded (same pid and start time, same
    name) and look like Ray, so a reused pid is never touched. ``ray start`` gets SIGTERM first, to
    take its node out of the cluster cleanly; whatever is left after ``timeout`` seconds, SIGKILL.
    Returns the pids stopped."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(recorded, dict) or _alive(recorded.get("agent_pid"), recorded.get("agent_created")):
        return []  # not left behind: the agent that started them runs (a second agent on one state dir)
    found: list[psutil.Process] = []
    for entry in recorded.get("processes", []):
        with contextlib.suppress(psutil.Error, KeyError, TypeError, ValueError):
            proc = psutil.Process(int(entry["pid"]))
            same = abs(proc.create_time() - float(entry["created"])) < 0.5 and proc.name() == entry["name"]
            if same and proc.pid != os.getpid() and _ray_like(proc):
                found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            if is_ray_start(proc.cmdline()):  # it stops the rest
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a stopped one would never see the SIGTERM
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    path.unlink(missing_ok=True)
    return [p.pid for p in found]


def _alive(pid: Any, created: Any) -> bool:
    try:
        return pid != os.getpid() and abs(psutil.Process(int(pid)).create_time() - float(created)) < 0.5
    except (psutil.Error, TypeError, ValueError):
        return False


class RaySupervisor:
    """Keeps one ``ray start --block`` child alive until :meth:`stop`. With a ``record`` file, keeps
    there the Ray processes it started (see :func:`stop_leftovers`), refreshed every few seconds."""

    def __init__(
        self,
        config: RayNodeConfig,
        backoff_max_s: float = 60.0,
        log_file: Path | None = None,
        record: Path | None = None,
        record_every_s: float = 2.0,
    ) -> None:
        self.config = config
        self.backoff_max_s = backoff_max_s
        self.log_file = log_file
        self.record = record
        self.record_every_s = record_every_s
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        sandbox = self.config.sandbox
        # sandboxed, Ray gets only what it needs: never the agent's environment (its token among it)
        extra = {**self.config.env, **(DISABLED if self.config.loopback else {})}
        env = ray_environment(sandbox, extra) if sandbox else {**os.environ, **extra}
        # its own process group, so stopping it reaches raylet and friends too
        return subprocess.Popen(
            self.config.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_agent,  # one pre-bound libc call: safe beside the agent's threads
        )

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the child to exit, keeping the record of its processes up to date meanwhile."""
        recorded: set[int] = set()
        while True:
            if self.record is not None:
                family = self.pids()
                if family and family != recorded:
                    record_processes(self.record, _processes(family))
                    recorded = family
            try:
                return proc.wait(timeout=self.record_every_s)
            except subprocess.TimeoutExpired:
                continue

    def run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                self.proc = self._spawn()
            started = time.monotonic()
            log.info("ray node started (pid %s): %s", self.proc.pid, " ".join(self.config.command()))
            code = self._wait(self.proc)
            if self._stop.is_set():
                break
            ran = time.monotonic() - started
            backoff = 1.0 if ran > 60 else min(backoff * 2, self.backoff_max_s)
            self.restarts += 1
            log.warning("ray node exited with %s after %.0f s; restarting in %.0f s", code, ran, backoff)
            self._stop.wait(backoff)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="ray-supervisor", daemon=True)
        self._thread.start()

    def pids(self) -> set[int]:
        """The Ray child and all its descendants: GPU processes among them are Coop's own."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return set()
        try:
            parent = psutil.Process(proc.pid)
            return {parent.pid, *(p.pid for p in parent.children(recursive=True))}
        except psutil.Error:
            return set()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM ``ray start`` (it stops raylet and its agents itself, in about a second), then SIGKILL
        whatever is left. Signalling the whole group instead makes raylet's own shutdown take ~25 s."""
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            family = self.pids()
            with contextlib.suppress(psutil.Error):
                _ray_start(proc.pid).terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            _, alive = psutil.wait_procs(_processes(family), timeout=10)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.record is not None:
            self.record.unlink(missing_ok=True)  # all stopped: nothing left for the next agent


def _ray_start(pid: int) -> psutil.Process:
    """The ``ray start`` process itself: inside the sandbox, a descendant of bubblewrap, which would
    kill everything at once on SIGTERM (raylet then cannot say goodbye to the head)."""
    top = psutil.Process(pid)
    for proc in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if is_ray_start(cmdline):
                return proc
    return top


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _processes(pids: set[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found
