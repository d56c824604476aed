"""coop nodes shows a node awaiting approval; coop admin node approve|revoke admit it or take it back."""

from __future__ import annotations

from tests.api.helpers import node
from tests.cli.conftest import Cli
from tests.conftest import Coordinator


def test_an_admin_approves_and_revokes_a_node_from_the_cli(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    agent = coordinator.agent("alice", approve=False)
    node_id = agent.register_node(node("gpu-box", gpus=2))["id"]

    listed = cli("nodes")
    assert listed.exit_code == 0 and "awaiting" in listed.stdout  # STATE: awaiting approval (online)
    assert f"coop admin node approve ID' (ID: {node_id})" in " ".join(listed.stderr.split())
    assert cli.json("nodes")[0]["approved"] is False

    refused = cli("admin", "node", "approve", node_id)  # alice is the donor, not an admin
    assert refused.exit_code == 1
    said = " ".join(refused.stderr.split())
    assert "only an admin may approve a node" in said and f"coop admin node approve {node_id}" in said
    assert cli.json("nodes")[0]["approved"] is False

    cli.use(coordinator.url, coordinator.admin_token)
    approved = cli("admin", "node", "approve", node_id)
    assert approved.exit_code == 0, approved.output
    assert f"Approved node {node_id} (gpu-box, alice)" in " ".join(approved.stdout.split())
    assert cli.json("admin", "node", "approve", node_id)["approved"] is True  # again: nothing changes
    after = cli("nodes")
    assert "awaiting" not in after.stdout and "online" in after.stdout and "approve" not in after.stderr
    assert agent.register_node(node("gpu-box", gpus=2))["approved"] is True

    revoked = cli("admin", "node", "revoke", node_id)
    assert revoked.exit_code == 0, revoked.output
    text = " ".join(revoked.stdout.split())
    assert f"Revoked node {node_id}" in text and "rotate the cluster's Ray token" in text
    assert cli.json("admin", "node", "revoke", node_id)["approved"] is False
    assert "awaiting" in cli("nodes").stdout

    missing = cli("admin", "node", "approve", 424242)
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
