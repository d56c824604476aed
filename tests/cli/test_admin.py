"""coop admin: bootstrap on the database, then members, quotas, grants and tokens over the API."""

from __future__ import annotations

import json
from pathlib import Path

from coop.client import CoopClient
from tests.api.helpers import node
from tests.cli.conftest import Cli
from tests.conftest import Coordinator


def test_bootstrap_creates_the_first_admin_once(cli: Cli, tmp_path: Path) -> None:
    cli.monkeypatch.setenv("COOP_DATA_DIR", str(tmp_path / "data"))
    cli.monkeypatch.setenv("COOP_PORT", "9123")
    first = cli("admin", "bootstrap")
    assert first.exit_code == 0, first.output
    assert (tmp_path / "data" / "coop.db").is_file()
    token_lines = [line.strip() for line in first.stdout.splitlines() if line.strip().startswith("coop_")]
    assert token_lines, first.stdout
    assert f"coop login --url http://127.0.0.1:9123 --token {token_lines[0]}" in first.stdout

    second = cli("admin", "bootstrap")
    assert second.exit_code == 1
    assert "an admin already exists" in second.stderr and "coop admin token create" in second.stderr


def test_bootstrap_json_and_name(cli: Cli, tmp_path: Path) -> None:
    cli.monkeypatch.setenv("COOP_DATA_DIR", str(tmp_path / "data"))
    out = cli.json("admin", "bootstrap", "--name", "root")
    assert out["member"] == "root" and out["token"] and out["url"].startswith("http://")
    bad = cli("admin", "bootstrap", "--name", "not a name")
    assert bad.exit_code == 1


def test_member_add_and_list(coordinator: Coordinator, cli: Cli) -> None:
    cli.use(coordinator.url, coordinator.admin_token)
    created = cli.json("admin", "member", "add", "alice", "--share", "2", "--gpu-cap", "4")
    assert (created["name"], created["share"], created["gpu_cap"]) == ("alice", 2.0, 4)
    assert CoopClient(coordinator.url, created["token"]).me()["member"] == "alice"

    text = cli("admin", "member", "add", "bob", "--admin")
    assert text.exit_code == 0 and "shown once" in text.stdout and "coop login --url" in text.stdout
    assert {m["name"] for m in cli.json("admin", "member", "list")} == {"admin", "alice", "bob"}
    listed = cli("admin", "member", "list")
    assert listed.exit_code == 0 and "alice" in listed.stdout and "GPU CAP" in listed.stdout

    duplicate = cli("admin", "member", "add", "alice")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr and "fix: " in duplicate.stderr


def test_quota_set(coordinator: Coordinator, cli: Cli) -> None:
    coordinator.new_member("alice")
    cli.use(coordinator.url, coordinator.admin_token)
    assert cli.json("admin", "quota", "set", "alice", "--gpu-cap", "2", "--share", "3")["gpu_cap"] == 2
    updated = cli.json("admin", "quota", "set", "alice", "--no-gpu-cap")
    assert (updated["gpu_cap"], updated["share"]) == (None, 3.0)
    assert cli("admin", "quota", "set", "alice").exit_code == 1
    assert cli("admin", "quota", "set", "alice", "--gpu-cap", "1", "--no-gpu-cap").exit_code == 1


def test_tokens_create_list_revoke(coordinator: Coordinator, cli: Cli) -> None:
    coordinator.new_member("alice")
    cli.use(coordinator.url, coordinator.admin_token)
    agent = cli.json("admin", "token", "create", "--agent", "--member", "alice", "--name", "box")
    assert (agent["kind"], agent["member"], agent["user"]) == ("agent", "alice", None)
    assert CoopClient(coordinator.url, agent["token"]).register_node(node("box"))["member"] == "alice"

    text = cli("admin", "token", "create", "--member", "alice")
    assert text.exit_code == 0 and "coop login --url" in text.stdout
    tokens = cli.json("admin", "token", "list")
    assert agent["id"] in {t["id"] for t in tokens}
    assert "agent" in cli("admin", "token", "list").stdout

    revoked = cli.json("admin", "token", "revoke", agent["id"])
    assert revoked["revoked_at"] is not None
    result = cli("admin", "token", "revoke", 424242)
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_admin_commands_need_an_admin(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    result = cli("admin", "member", "list")
    assert result.exit_code == 1
    assert "needs an admin token" in result.stderr and "fix: " in result.stderr
    assert json.loads(cli("whoami", "--json").stdout)["role"] == "member"
