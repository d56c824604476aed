"""``coop-agent install-service``: a systemd unit, a dedicated user and a private environment file."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_NAME = "coop-agent.service"


TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / TEMPLATE_NAME


def template_text() -> str:
    """The unit template from the checkout Coop was installed from (``pip install -e``)."""
    if not TEMPLATE.is_file():
        raise RuntimeError(
            f"unit template {TEMPLATE} not found: install Coop from a checkout "
            "(git clone … && pip install -e .), or copy deploy/systemd/coop-agent.service by hand"
        )
    return TEMPLATE.read_text()


@dataclass
class ServicePlan:
    unit_path: Path
    env_path: Path
    unit: str
    env: str
    user: str
    commands: list[list[str]]


def plan(
    coordinator: str,
    token: str,
    *,
    user: str = "coop-agent",
    root: Path = Path("/"),
    exec_start: str | None = None,
    state_dir: str = "/var/lib/coop-agent",
) -> ServicePlan:
    unit_path = root / "etc/systemd/system/coop-agent.service"
    env_path = root / "etc/coop-agent/agent.env"
    exe = exec_start or str(
        Path(sys.argv[0]).resolve()
        if Path(sys.argv[0]).name == "coop-agent"
        else Path(sys.executable).with_name("coop-agent")
    )
    unit = template_text().format(
        user=user, group=user, env_file="/etc/coop-agent/agent.env", state_dir=state_dir, exec_start=exe
    )
    env = f"COOP_AGENT_COORDINATOR={coordinator}\nCOOP_AGENT_TOKEN={token}\n"
    commands = []
    try:
        pwd.getpwnam(user)
    except KeyError:
        commands.append(["useradd", "--system", "--home-dir", state_dir, "--shell", "/usr/sbin/nologin", user])
    commands += [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "coop-agent.service"]]
    return ServicePlan(unit_path, env_path, unit, env, user, commands)


def install(p: ServicePlan, run_commands: bool = True) -> None:
    """Write the unit and the 0640 env file, then create the user and enable the unit."""
    p.unit_path.parent.mkdir(parents=True, exist_ok=True)
    p.unit_path.write_text(p.unit)
    p.env_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(p.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(p.env)
    os.chmod(p.env_path, 0o640)
    if not run_commands:
        return
    if shutil.which("systemctl") is None:
        raise RuntimeError(
            "systemctl not found: this machine does not run systemd; start 'coop-agent join' "
            "another way (see docs/agent.md)"
        )
    for cmd in p.commands:
        subprocess.run(cmd, check=True)
        if cmd[0] == "useradd":
            entry = pwd.getpwnam(p.user)
            os.chown(p.env_path, 0, entry.pw_gid)
