"""A pause from the coordinator and the owner's pause are kept apart: neither lifts the other."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from coop.cli.main import app as cli_app
from coop.schemas import ForeignProcess, Heartbeat
from tests.api.helpers import node
from tests.conftest import Coordinator


def test_a_coordinator_pause_survives_the_agents_heartbeats(coordinator: Coordinator) -> None:
    c = coordinator
    alice, _ = c.new_member("alice")
    agent = c.agent("alice")
    box = agent.register_node(node("box"))["id"]

    paused = alice.node_action(box, "pause")
    assert (paused["paused"], paused["coordinator_paused"]) == (True, True)
    after = agent.heartbeat(box, Heartbeat(paused=False))  # the agent's next heartbeat: its owner has not paused
    assert (after["paused"], after["reclaim"], after["reclaim_reason"]) == (True, True, "paused from the coordinator")

    both = agent.heartbeat(box, Heartbeat(paused=True))
    assert both["reclaim_reason"] == "owner paused the node; paused from the coordinator"
    resumed = alice.node_action(box, "resume")  # the coordinator's pause is lifted, the owner's is not
    assert (resumed["paused"], resumed["coordinator_paused"]) == (True, False)
    assert resumed["reclaim_reason"] == "owner paused the node"
    assert agent.heartbeat(box, Heartbeat(paused=True))["paused"] is True

    free = agent.heartbeat(box, Heartbeat(paused=False))  # the owner resumes too
    assert (free["paused"], free["reclaim"], free["reclaim_reason"]) == (False, False, None)


def test_a_resume_from_the_coordinator_keeps_the_owners_gpu_work_in_the_reason(coordinator: Coordinator) -> None:
    c = coordinator
    alice, _ = c.new_member("alice")
    agent = c.agent("alice")
    box = agent.register_node(node("box"))["id"]
    agent.heartbeat(box, Heartbeat(foreign_processes=[ForeignProcess(pid=7, name="blender", gpu_index=0)]))
    alice.node_action(box, "pause")
    resumed = alice.node_action(box, "resume")
    assert (resumed["paused"], resumed["reclaim"]) == (False, True)  # not paused, but still in its owner's use
    assert resumed["reclaim_reason"] == "GPU processes Coop did not start: blender"


def test_coop_nodes_says_who_paused(coordinator: Coordinator, tmp_path: Path) -> None:
    c = coordinator
    _, token = c.new_member("alice")
    agent = c.agent("alice")
    box = agent.register_node(node("box"))["id"]
    env = {"COOP_URL": c.url, "COOP_TOKEN": token, "COOP_CONFIG_DIR": str(tmp_path)}

    def cli(*args: object) -> str:
        result = CliRunner().invoke(cli_app, [str(a) for a in args], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("node", "pause", box)
    agent.heartbeat(box, Heartbeat(paused=True))
    assert "paused from the coordinator" in " ".join(cli("nodes").split())  # the table may wrap the cell
    said = " ".join(cli("node", "resume", box).split())
    assert "resumed from the coordinator, but still paused: owner paused the node" in said
    listed = " ".join(cli("nodes").split())
    assert "owner paused the node" in listed and "coordinator" not in listed
