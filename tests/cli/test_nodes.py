"""coop nodes / coop node pause|resume|drain|undrain."""

from __future__ import annotations

from tests.api.helpers import node
from tests.cli.conftest import Cli
from tests.conftest import Coordinator


def test_nodes_table_json_and_actions(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    assert cli.json("nodes") == []
    assert "No nodes yet" in cli("nodes").stdout
    registered = coordinator.agent("alice").register_node(node("gpu-box", gpus=2))

    table = cli("nodes")
    assert table.exit_code == 0
    assert "gpu-box" in table.stdout and "2× RTX4090 24GB" in table.stdout and "online" in table.stdout
    (listed,) = cli.json("nodes")
    assert listed["id"] == registered["id"] and len(listed["gpus"]) == 2

    node_id = registered["id"]
    assert cli.json("node", "pause", node_id)["paused"] is True
    assert "paused" in cli("nodes").stdout
    assert cli.json("node", "resume", node_id)["paused"] is False
    assert cli.json("node", "drain", node_id)["draining"] is True
    result = cli("node", "undrain", node_id)
    assert result.exit_code == 0 and "undrained" in result.stdout

    missing = cli("node", "pause", 424242)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_only_the_donor_or_an_admin_changes_a_node(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    coordinator.new_member("bob")
    registered = coordinator.agent("bob").register_node(node("bobs-box"))
    result = cli("node", "drain", registered["id"])
    assert result.exit_code == 1 and "belongs to another member" in result.stderr
    cli.use(coordinator.url, coordinator.admin_token)
    assert cli.json("node", "drain", registered["id"])["draining"] is True
