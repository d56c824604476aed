"""A person at the CLI gets CLI commands in an error's fix, not API advice (GET /v1/tokens, see /docs, the
Authorization header): ``coop`` run against a real coordinator, and every fix the coordinator can give
that names an API call has a CLI wording."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from coop.cli.output import cli_advice
from tests.cli.conftest import Cli
from tests.conftest import Coordinator

SERVER = Path(__file__).resolve().parents[2] / "coop" / "server"
API_WORDS = re.compile(r"/v1/|/docs\b|Authorization|\bGET |\bPOST |\bPUT ")
# said to other programs, never to a person at the CLI: an attempt's file wrapper, Prometheus
NOT_FOR_THE_CLI = ("fetch only what /v1/transfer/plan lists", "give Prometheus the token")


def api_error(result_stderr: str) -> None:
    assert not API_WORDS.search(result_stderr), result_stderr


def test_an_unknown_token_id_points_at_the_token_list(coordinator: Coordinator, cli: Cli) -> None:
    cli.use(coordinator.url, coordinator.admin_token)
    result = cli("admin", "token", "revoke", "99999")
    assert result.exit_code == 1
    assert "token 99999 does not exist" in result.stderr
    assert "fix: list your tokens with 'coop admin token list'" in result.stderr
    api_error(result.stderr)


def test_a_revoked_token_says_how_to_log_in_again(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    mine = [t for t in coordinator.admin.tokens() if t["member"] == "alice"]
    for token in mine:
        coordinator.admin.revoke_token(token["id"])
    result = cli("status")
    assert result.exit_code == 1
    assert "field: token (COOP_TOKEN or coop login)" in result.stderr
    assert "fix: log in again with 'coop login --url URL --token TOKEN' (or set COOP_TOKEN)" in result.stderr
    api_error(result.stderr)


def test_a_number_out_of_bounds_points_at_the_commands_help(coordinator: Coordinator, cli: Cli) -> None:
    coordinator.new_member("alice")
    cli.use(coordinator.url, coordinator.admin_token)
    result = cli("admin", "grant", "alice", "1e300")
    assert result.exit_code == 1, result.output
    assert "fix: give a finite number within the bounds 'coop admin grant --help' gives for amount" in result.stderr
    api_error(result.stderr)


def test_a_member_option_only_admins_have(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    coordinator.new_member("bob")
    result = cli("status", "--member", "bob")
    assert result.exit_code == 1
    assert "fix: leave --member out" in result.stderr and "field: --member" in result.stderr


def _server_fixes() -> list[str]:
    """Every fix text the coordinator's code spells out in full (string literals passed as ``fix=`` or
    assigned to a *FIX name), f-strings with their parts as written."""
    found = []
    for path in SERVER.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            values: list[ast.expr] = []
            if isinstance(n, ast.keyword) and n.arg == "fix":
                values.append(n.value)
            if isinstance(n, ast.Assign) and any(
                isinstance(t, ast.Name) and (t.id == "fix" or t.id.endswith("FIX")) for t in n.targets
            ):
                values.append(n.value)
            for v in values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    found.append(v.value)
                elif isinstance(v, ast.JoinedStr):
                    found.append("".join(str(p.value) if isinstance(p, ast.Constant) else "'x'" for p in v.values))
    return found


@pytest.mark.parametrize("fix", sorted({f for f in _server_fixes() if API_WORDS.search(f)}))
def test_every_fix_that_names_an_api_call_has_a_cli_wording(fix: str) -> None:
    if fix.startswith(NOT_FOR_THE_CLI):
        pytest.skip("said to a program, not to a person at the CLI")
    said = cli_advice(fix, "coop admin grant")
    assert not API_WORDS.search(said), f"{fix!r} -> {said!r}"
