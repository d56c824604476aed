"""Runs ``ray start --address … --block`` as a supervised child and restarts it with backoff."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

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

    def command(self) -> list[str]:
        cmd = [
            self.ray_bin,
            "start",
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
        if self.node_ip_address:
            cmd.append(f"--node-ip-address={self.node_ip_address}")
        if self.temp_dir:
            cmd.append(f"--temp-dir={self.temp_dir}")
        return outer_command(self.sandbox, cmd) if self.sandbox is not None else cmd


def label_value(text: str) -> str:
    """Ray label values: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:63].strip("._-")
    return cleaned or "unknown"


class RaySupervisor:
    """Keeps one ``ray start --block`` child alive until :meth:`stop`."""

    def __init__(self, config: RayNodeConfig, backoff_max_s: float = 60.0, log_file: Path | None = None) -> None:
        self.config = config
        self.backoff_max_s = backoff_max_s
        self.log_file = log_file
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        sandbox = self.config.sandbox
        # sandboxed, Ray gets only what it needs: never the agent's environment (its token among it)
        env = ray_environment(sandbox, self.config.env) if sandbox else {**os.environ, **self.config.env}
        # its own process group, so stopping it reaches raylet and friends too
        return subprocess.Popen(
            self.config.command(), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                self.proc = self._spawn()
            started = time.monotonic()
            log.info("ray node started (pid %s): %s", self.proc.pid, " ".join(self.config.command()))
            code = self.proc.wait()
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


def _ray_start(pid: int) -> psutil.Process:
    """The ``ray start`` process itself: inside the sandbox, a descendant of bubblewrap, which would
    kill everything at once on SIGTERM (raylet then cannot say goodbye to the head)."""
    top = psutil.Process(pid)
    for proc in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            cmdline = proc.cmdline()
            if "start" in cmdline and any(Path(arg).name == "ray" for arg in cmdline[:2]):
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
