"""coop node remove (a donor's own nodes) and coop admin node remove (any): the node leaves coop nodes,
coop nodes --retired shows it; another member's node is refused (tests/api/test_node_remove.py covers
the refusal while jobs run and --force's requeue)."""

from __future__ import annotations

from tests.api.helpers import node
from tests.cli.conftest import Cli
from tests.conftest import Coordinator


def test_a_donor_and_an_admin_remove_nodes_from_the_cli(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    coordinator.new_member("bob")
    mine = coordinator.agent("alice").register_node(node("gpu-box", gpus=1))["id"]
    bobs = coordinator.agent("bob").register_node(node("bob-box", gpus=1))["id"]

    refused = cli("node", "remove", bobs)
    assert refused.exit_code == 1 and f"node {bobs} belongs to another member" in " ".join(refused.stderr.split())
    assert {n["id"] for n in cli.json("nodes")} == {mine, bobs}

    removed = cli("node", "remove", mine)
    assert removed.exit_code == 0, removed.output
    said = " ".join(removed.stdout.split())
    assert f"Removed node {mine} (gpu-box, alice)" in said and "coop nodes --retired" in said
    assert [n["id"] for n in cli.json("nodes")] == [bobs]
    retired = cli("nodes", "--retired")
    assert "retired" in retired.stdout and "removed by its donor" in " ".join(retired.stdout.split())

    cli.use(coordinator.url, coordinator.admin_token)
    by_admin = cli.json("admin", "node", "remove", bobs, "--force")
    assert (by_admin["state"], by_admin["requeued_jobs"]) == ("retired", [])
    assert cli.json("nodes") == []
