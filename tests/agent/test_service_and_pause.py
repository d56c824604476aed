"""install-service writes a unit and a private env file; pause/resume flip the flag the service reads."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from agent import state
from agent.main import app

runner = CliRunner()


def test_install_service_writes_unit_and_private_env(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "install-service",
            "--coordinator",
            "https://coop.example.org",
            "--token",
            "coop_secret",
            "--root",
            str(tmp_path),
            "--no-enable",
            "--no-env",
            "--user",
            "donor",
        ],
    )
    assert result.exit_code == 0, result.output
    unit = (tmp_path / "etc/systemd/system/coop-agent.service").read_text()
    assert "User=donor" in unit and "Restart=on-failure" in unit
    assert "EnvironmentFile=/etc/coop-agent/agent.env" in unit
    assert "{" not in unit  # every placeholder filled
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == "ExecStart=/opt/coop-agent/bin/coop-agent join --state-dir /var/lib/coop-agent"
    env = tmp_path / "etc/coop-agent/agent.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o640
    assert env.read_text() == "COOP_AGENT_COORDINATOR=https://coop.example.org\nCOOP_AGENT_TOKEN=coop_secret\n"
    assert "coop_secret" not in unit


def test_install_service_gives_the_service_the_cooperatives_ca(tmp_path: Path) -> None:
    """The donor's CA file may sit in a home folder the service user cannot read: it is copied."""
    ca = tmp_path / "home" / "coop-ca.pem"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    root = tmp_path / "root"
    args = ["install-service", "--coordinator", "https://coop.lab", "--token", "coop_secret", "--ca-file", str(ca)]
    result = runner.invoke(app, [*args, "--root", str(root), "--no-enable", "--no-env", "--user", "donor"])
    assert result.exit_code == 0, result.output
    env = (root / "etc/coop-agent/agent.env").read_text()
    assert "COOP_AGENT_CA_FILE=/etc/coop-agent/ca.pem\n" in env
    copied = root / "etc/coop-agent/ca.pem"
    assert copied.read_text() == ca.read_text() and stat.S_IMODE(copied.stat().st_mode) == 0o644
    elsewhere = ["--root", str(root), "--no-enable", "--no-env"]
    missing = runner.invoke(app, [*args[:-1], str(tmp_path / "nope.pem"), *elsewhere])
    assert missing.exit_code == 2 and "--ca-file" in missing.output


def test_install_service_needs_a_token(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["install-service", "--root", str(tmp_path), "--no-enable", "--no-env"],
        env={"COOP_AGENT_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.exit_code == 1
    assert "--token" in result.output


def test_pause_without_a_running_agent_fails_and_says_where_it_looked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pause", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"no running coop-agent uses {tmp_path}" in result.output and "--state-dir" in result.output
    assert not state.is_paused(tmp_path)
    assert runner.invoke(app, ["resume", "--state-dir", str(tmp_path)]).exit_code == 1


def test_pause_force_writes_the_flag_for_the_next_agent(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pause", "--state-dir", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert "no agent runs with this state dir" in result.output
    assert state.is_paused(tmp_path)
    status = runner.invoke(app, ["status", "--state-dir", str(tmp_path), "--json"])
    assert '"paused": true' in status.output and '"agent_pid": null' in status.output
    assert runner.invoke(app, ["resume", "--state-dir", str(tmp_path), "--force"]).exit_code == 0
    assert not state.is_paused(tmp_path)


def test_state_file_is_private(tmp_path: Path) -> None:
    state.save(tmp_path, state.AgentState(coordinator="http://x", token="coop_t", node_id=3))
    assert stat.S_IMODE(state.state_file(tmp_path).stat().st_mode) == 0o600
    assert state.load(tmp_path).node_id == 3
