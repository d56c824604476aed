"""``coop-agent pause/resume/status``: find the running agent's state dir, and read back what it told
the coordinator.

A running ``coop-agent join`` records itself in its state dir (``agent.pid``) and, after every
heartbeat, the pause flag it carried and what the coordinator answered (``coordinator.json``). A
pause written anywhere else would be read by nobody (a donor's home folder while the service reads
/var/lib/coop-agent), so ``pause`` writes only where a running agent reads, and says where it looked
otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent import state

SERVICE_STATE_DIR = Path("/var/lib/coop-agent")  # install-service's (deploy/systemd/coop-agent.service)


class NotFound(Exception):
    """No running agent to talk to (the message says where we looked and what to do)."""


@dataclass(frozen=True)
class RunningAgent:
    pid: int
    user: str
    state_dir: Path | None  # None: it runs, but its state dir cannot be told from outside


def is_agent_command(cmdline: list[str]) -> bool:
    """``coop-agent join …``, ``python …/coop-agent join …`` or ``python -m agent.main join …``."""
    head = cmdline[:4]
    if "join" not in head:
        return False
    return any(Path(a).name == "coop-agent" for a in head[:2]) or (
        "-m" in head and "agent.main" in head or any(a.endswith("agent/main.py") for a in head[:2])
    )


def _process_state_dir(proc: psutil.Process, cmdline: list[str]) -> Path | None:
    """Its ``--state-dir``, else its ``COOP_AGENT_STATE_DIR``, else its user's default. None when
    that cannot be known (another user's environment is not readable)."""
    given = None
    for i, arg in enumerate(cmdline):
        if arg == "--state-dir" and i + 1 < len(cmdline):
            given = cmdline[i + 1]
        elif arg.startswith("--state-dir="):
            given = arg.split("=", 1)[1]
    env: dict[str, str] | None = None
    if given is None:
        try:
            env = proc.environ()
        except psutil.Error:
            return None
        given = env.get("COOP_AGENT_STATE_DIR")
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_absolute():
            try:
                path = Path(proc.cwd()) / path
            except psutil.Error:
                return None
        return path
    uid = proc.uids().real
    if uid == 0:
        return SERVICE_STATE_DIR
    env = env or {}
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "coop-agent"
    with contextlib.suppress(KeyError):
        return Path(pwd.getpwuid(uid).pw_dir) / ".local" / "state" / "coop-agent"
    return None


def running_agents() -> list[RunningAgent]:
    found = []
    for proc in psutil.process_iter(["cmdline", "username"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if proc.pid != os.getpid() and is_agent_command(cmdline):
                found.append(RunningAgent(proc.pid, proc.info["username"] or "?", _process_state_dir(proc, cmdline)))
    return found


def agent_in(state_dir: Path) -> RunningAgent | None:
    """The live agent that recorded itself in ``state_dir`` (a pid of a killed agent, or reused by
    another program, does not count)."""
    recorded = state.recorded_agent(state_dir)
    if not recorded:
        return None
    try:
        proc = psutil.Process(int(recorded["pid"]))
        if abs(proc.create_time() - float(recorded["created"])) > 1 or not is_agent_command(proc.cmdline()):
            return None
        return RunningAgent(proc.pid, proc.username(), state_dir)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def locate(explicit: Path | None, default: Path) -> RunningAgent:
    """The running agent whose state dir a pause must go to: the one using ``explicit`` (--state-dir,
    COOP_AGENT_STATE_DIR) if given, else the only agent running on this machine, else the one using
    ``default``. Raises NotFound saying where it looked."""
    looked = [explicit] if explicit is not None else list(dict.fromkeys([default, SERVICE_STATE_DIR]))
    for candidate in looked:
        with contextlib.suppress(PermissionError):
            if found := agent_in(candidate):
                return found
    others = running_agents()
    if explicit is not None:
        for agent in others:
            if agent.state_dir is not None and _same(agent.state_dir, explicit):
                return agent  # its pid file is not readable to us: writing the flag will say so
    else:
        known = [a for a in others if a.state_dir is not None]
        dirs = {os.path.realpath(a.state_dir) for a in known if a.state_dir is not None}
        if len(dirs) == 1:
            return known[0]
        for agent in known:
            if agent.state_dir is not None and _same(agent.state_dir, default):
                return agent
    where = " or ".join(str(p) for p in looked)
    lines = [f"no running coop-agent uses {where}."]
    if others:
        lines.append("Running agents on this machine:")
        lines += [
            f"  pid {a.pid} (user {a.user}): "
            + (f"--state-dir {a.state_dir}" if a.state_dir else "state dir unknown (run this as root to see it)")
            for a in others
        ]
        lines.append("Pick one with --state-dir DIR (or COOP_AGENT_STATE_DIR).")
    else:
        lines.append(
            "No coop-agent join is running here: start it ('systemctl start coop-agent' for the service, "
            "or 'coop-agent join …'), or give the state dir of the agent you mean with --state-dir DIR "
            f"(the service's is {SERVICE_STATE_DIR}: 'sudo coop-agent pause'). "
            "'--state-dir DIR --force' writes the flag anyway: an agent started with that dir joins paused."
        )
    raise NotFound("\n".join(lines))


def wait_reported(state_dir: Path, paused: bool, since: float, timeout: float) -> dict[str, Any] | None:
    """The agent's record of its first heartbeat after ``since`` that carried ``paused`` (with the
    coordinator's answer or the error), or None if none came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = state.last_seen(state_dir)
        if seen is not None and float(seen.get("at", 0)) >= since and seen.get("paused") is paused:
            return seen
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def describe(seen: dict[str, Any]) -> str:
    """What the coordinator said of the node in the agent's last heartbeat, in words."""
    node = seen.get("node") or {}
    if not node:
        return f"the agent could not reach the coordinator: {seen.get('error') or 'no answer'}"
    words = [str(node.get("state"))]
    if node.get("paused"):
        words.append("paused")
    if node.get("reclaim"):
        words.append(f"reclaimed ({node.get('reclaim_reason')}): no new guest jobs, running ones are stopped")
    elif not node.get("paused"):
        words.append("taking guest jobs" if node.get("approved") else "awaiting an admin's approval")
    if node.get("coordinator_paused"):
        words.append(f"also paused from the coordinator (an admin's 'coop node resume {node.get('id')}' lifts that)")
    return f"the coordinator sees node {node.get('id')} ({node.get('name')}): " + ", ".join(words)
