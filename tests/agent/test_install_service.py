"""``coop-agent install-service`` for real: a system user, a Python environment of its own that this
user runs (the clone's interpreter may be closed to it: "bad interpreter: Permission denied"), a unit
that ``systemd-analyze verify`` accepts, and the unit's own command line, run as the service user with
the unit's environment, joins a real coordinator and is found by ``coop-agent pause``. The shipped
``coop-server.service``, pointed at that environment, is verified and run the same way."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Coordinator, free_port, require_service, wait_for

USER = "coop-svc-test"
pytestmark = pytest.mark.timeout(900)


@dataclass
class Installed:
    root: Path
    prefix: Path
    state_dir: Path
    said: str


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    """install-service --no-enable once, below a root the service user can traverse (pytest's tmp_path
    is under a 0700 folder); the environment takes a minute or two to copy. Session-scoped: pytest
    groups the tests by database across modules, so a module-scoped one was built twice."""
    require_service(os.geteuid() == 0 and shutil.which("runuser") is not None, "needs root and runuser")
    top = Path(tempfile.mkdtemp(prefix="coopsvc", dir="/var/tmp"))
    top.chmod(0o755)
    prefix, state_dir = top / "opt" / "coop-agent", top / "var" / "lib" / "coop-agent"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent.main", "install-service", "--coordinator", "http://127.0.0.1:9",
             "--token", "coop_placeholder", "--user", USER, "--root", str(top), "--prefix", str(prefix),
             "--state-dir", str(state_dir), "--no-enable"],
            capture_output=True, text=True, timeout=800,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        yield Installed(top, prefix, state_dir, done.stdout)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        subprocess.run(["userdel", USER], capture_output=True)


def _unit(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)
def test_the_installed_service_runs_as_its_user_and_joins(coordinator: Coordinator, installed: Installed) -> None:
    coordinator.new_member("svc")
    token = coordinator.admin.create_token(kind="agent", member="svc")["token"]
    root, prefix, state_dir = installed.root, installed.prefix, installed.state_dir
    assert f"checked as {USER}" in installed.said
    env_file = root / "etc" / "coop-agent" / "agent.env"
    assert env_file.read_text() == "COOP_AGENT_COORDINATOR=http://127.0.0.1:9\nCOOP_AGENT_TOKEN=coop_placeholder\n"
    assert (env_file.stat().st_mode & 0o777, env_file.stat().st_gid) == (0o640, pwd.getpwnam(USER).pw_gid)
    env_file.write_text(f"COOP_AGENT_COORDINATOR={coordinator.url}\nCOOP_AGENT_TOKEN={token}\n")  # this test's
    unit_path = root / "etc" / "systemd" / "system" / "coop-agent.service"
    unit = _unit(unit_path)
    command = shlex.split(unit["ExecStart"][0])
    assert command == [str(prefix / "bin" / "coop-agent"), "join", "--state-dir", str(state_dir)]
    assert sys.prefix not in unit_path.read_text()  # nothing of the clone's venv
    assert unit["User"] == [USER]
    if shutil.which("systemd-analyze"):
        assert "systemd-analyze verify: ok" in installed.said
        verified = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    # root owns the environment; the service user may run it, not change it
    assert prefix.stat().st_uid == 0
    entry = pwd.getpwnam(USER)
    assert (state_dir.stat().st_uid, state_dir.stat().st_mode & 0o777) == (entry.pw_uid, 0o700)
    denied = subprocess.run(["runuser", "-u", USER, "--", "touch", str(prefix / "bin" / "x")], capture_output=True)
    assert denied.returncode != 0

    # the unit's command line, as its user, with its environment (Environment= and EnvironmentFile=)
    env = dict(e.split("=", 1) for e in unit["Environment"])
    for line in (root / unit["EnvironmentFile"][0].lstrip("/")).read_text().splitlines():
        key, value = line.split("=", 1)
        env[key] = value
    env |= {"COOP_AGENT_CALIBRATE_SECONDS": "1", "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.3", "PATH": "/usr/bin:/bin"}
    log = root / "agent.log"
    agent = subprocess.Popen(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *command],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd="/",
    )  # fmt: skip
    try:
        wait_for(lambda: "awaits approval" in log.read_text(), timeout=120, what="the service's agent to register")
        (node,) = coordinator.admin.nodes()
        assert node["member"] == "svc"
        assert (state_dir / "state.json").stat().st_uid == entry.pw_uid  # its state, written as its user
        # `coop-agent pause` (as root) finds the service's agent through its state dir
        paused = subprocess.run(
            [sys.executable, "-m", "agent.main", "pause", "--state-dir", str(state_dir)], capture_output=True, text=True
        )
        assert paused.returncode == 0 and "the running agent (pid" in paused.stdout, paused.stdout + paused.stderr
        _stop_as_systemd_does(agent)
        assert agent.wait(timeout=60) == 0, log.read_text()  # left cleanly: runuser passes its exit code on
        assert "leaving the cooperative" in log.read_text()
    finally:
        if agent.poll() is None:
            started = psutil.Process(agent.pid).children(recursive=True)
            agent.kill()
            agent.wait()
            for proc in started:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def test_the_shipped_server_unit_verifies_and_serves_as_its_user(installed: Installed) -> None:
    """deploy/systemd/coop-server.service with its paths moved under the test's root and pointed at the
    environment install-service built (it has `coop` too), verified, then its ExecStart run as its user."""
    root = installed.root
    shipped = (Path(__file__).parents[2] / "deploy" / "systemd" / "coop-server.service").read_text()
    data = root / "var" / "lib" / "coop"
    text = (
        shipped.replace("/opt/coop/bin/", f"{installed.prefix}/bin/")
        .replace("/var/lib/coop", str(data))
        .replace("/etc/coop/", f"{root}/etc/coop/")
        .replace("User=coop", f"User={USER}")
        .replace("Group=coop", f"Group={USER}")
    )
    unit_path = root / "etc" / "systemd" / "system" / "coop-server.service"
    unit_path.write_text(text)
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    unit = _unit(unit_path)
    port = free_port()
    env_file = Path(unit["EnvironmentFile"][0].lstrip("-"))
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(f"COOP_PORT={port}\n")
    data.mkdir(parents=True, mode=0o750)  # systemd's StateDirectory= does this
    entry = pwd.getpwnam(USER)
    os.chown(data, entry.pw_uid, entry.pw_gid)
    env = dict(e.split("=", 1) for e in unit["Environment"]) | {"COOP_PORT": str(port), "PATH": "/usr/bin:/bin"}
    log = root / "server.log"
    server = subprocess.Popen(
        ["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
         *shlex.split(unit["ExecStart"][0])],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=unit["WorkingDirectory"][0],
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1/health"
        wait_for(lambda: _answers(url), timeout=60, what=f"coop server as {USER}")
        assert (data / "coop.db").stat().st_uid == entry.pw_uid  # its ledger, written as its user
        _stop_as_systemd_does(server)
        # uvicorn shuts down, then ends by its SIGTERM: a clean exit to systemd (128 + 15 through runuser)
        assert server.wait(timeout=60) in (0, 143), log.read_text()
        assert "Finished server process" in log.read_text()
    finally:
        if server.poll() is None:
            started = psutil.Process(server.pid).children(recursive=True)
            server.kill()
            server.wait()
            for proc in started:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def _stop_as_systemd_does(runuser: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the service's main process (runuser's child: env exec'd it), not to runuser, which
    would kill its session outright."""
    (main,) = psutil.Process(runuser.pid).children()
    main.send_signal(signal.SIGTERM)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
