"""login / logout / whoami / balance, and how the CLI finds (or fails to find) its coordinator."""

from __future__ import annotations

import json
import stat

from tests.cli.conftest import Cli
from tests.conftest import Coordinator


def test_login_saves_url_and_token_privately(coordinator: Coordinator, cli: Cli) -> None:
    _, token = coordinator.new_member("alice")
    result = cli("login", "--url", coordinator.url + "/", "--token", token)
    assert result.exit_code == 0, result.output
    assert "alice" in result.stdout

    path = cli.config_dir / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config_dir.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": coordinator.url, "token": token}

    me = cli.json("whoami")  # no COOP_URL / COOP_TOKEN: the saved login is used
    assert (me["member"], me["user"], me["url"]) == ("alice", "alice", coordinator.url)


def test_login_prompts_for_a_hidden_token(coordinator: Coordinator, cli: Cli) -> None:
    _, token = coordinator.new_member("alice")
    result = cli("login", "--url", coordinator.url, "--json", input=token + "\n")
    assert result.exit_code == 0, result.output
    assert token not in result.output  # hidden input is not echoed
    assert json.loads(result.stdout)["member"] == "alice"
    assert json.loads((cli.config_dir / "config.json").read_text())["token"] == token


def test_login_refuses_a_wrong_token_and_saves_nothing(coordinator: Coordinator, cli: Cli) -> None:
    result = cli("login", "--url", coordinator.url, "--token", "coop_not-a-real-token")
    assert result.exit_code == 1
    assert "refused this token" in result.stderr
    assert "--token" in result.stderr and "fix: " in result.stderr
    assert not (cli.config_dir / "config.json").exists()


def test_login_refuses_an_agent_token(coordinator: Coordinator, cli: Cli) -> None:
    coordinator.new_member("alice")
    agent_token = coordinator.admin.create_token(kind="agent", member="alice")["token"]
    result = cli("login", "--url", coordinator.url, "--token", agent_token)
    assert result.exit_code == 1
    assert "agent token" in result.stderr


def test_login_needs_a_full_url(cli: Cli) -> None:
    result = cli("login", "--url", "coop.example.org:8470", "--token", "x")
    assert result.exit_code == 1
    assert "http://" in result.stderr


def test_environment_overrides_the_saved_login(coordinator: Coordinator, cli: Cli) -> None:
    _, alice = coordinator.new_member("alice")
    _, bob = coordinator.new_member("bob")
    assert cli("login", "--url", coordinator.url, "--token", alice).exit_code == 0
    cli.monkeypatch.setenv("COOP_TOKEN", bob)
    assert cli.json("whoami")["member"] == "bob"


def test_logout_forgets_the_login(coordinator: Coordinator, cli: Cli) -> None:
    _, token = coordinator.new_member("alice")
    assert cli("login", "--url", coordinator.url, "--token", token).exit_code == 0
    result = cli("logout")
    assert result.exit_code == 0 and "Logged out" in result.stdout
    assert not (cli.config_dir / "config.json").exists()
    result = cli("whoami")
    assert result.exit_code == 1
    assert "not logged in: run coop login --url URL --token TOKEN" in result.stderr


def test_unreachable_coordinator_is_one_clear_line(cli: Cli) -> None:
    url = cli.unreachable()
    for args in (["status"], ["whoami"], ["nodes"], ["balance"]):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert f"cannot reach the coordinator at {url}" in result.stderr
        assert "Traceback" not in result.output
    result = cli("login", "--url", url, "--token", "t")
    assert result.exit_code == 1 and "cannot reach the coordinator" in result.stderr


def test_balance_and_history_after_a_grant(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    assert cli.json("balance") == {
        "member": "alice",
        "balance": 0.0,
        "history": None,
        "storage_used_bytes": 0,
        "storage_quota_bytes": 200 * 10**9,  # COOP_STORAGE_QUOTA_GB's default
    }

    cli.use(coordinator.url, coordinator.admin_token)
    granted = cli.json("admin", "grant", "alice", "12.5", "--note", "welcome")
    assert (granted["amount"], granted["balance"], granted["note"]) == (12.5, 12.5, "welcome")
    assert cli.json("admin", "grant", "alice", "-2.5")["balance"] == 10.0
    assert cli.json("balance", "--member", "alice")["balance"] == 10.0

    cli.use(coordinator.url, alice)
    result = cli("balance")
    assert result.exit_code == 0 and "alice: +10.00 credits" in result.stdout
    assert "storage: 0 B of 200.0 GB (outputs and checkpoints)" in result.stdout
    history = cli.json("balance", "--history")["history"]
    assert sorted(e["amount"] for e in history) == [-2.5, 12.5]
    assert "welcome" in {e["note"] for e in history}
    text = cli("balance", "--history")
    assert text.exit_code == 0 and "welcome" in text.stdout and "+12.50" in text.stdout


def test_members_cannot_see_each_others_balance(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    coordinator.new_member("bob")
    result = cli("balance", "--member", "bob")
    assert result.exit_code == 1
    assert "not allowed" in result.stderr and "fix: " in result.stderr
