"""Which node a machine is: the ids the agent makes (agent/identity.py), how the coordinator matches a
registration to a node with them, and a real agent rejoining under another name and stopping when its
node is removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.identity import identity_of, machine_identity, read_machine_id
from agent.models import GpuInfo
from agent.runner import EXIT_RETIRED
from coop.client import CoopError
from coop.schemas import Heartbeat, NodeRegister
from tests.api.helpers import node
from tests.conftest import Coordinator, wait_for

MACHINE = "3d1219c7c4c5404aaa1f6d2a48adfda4"
H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"
on_sqlite = pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)


def test_the_ids_name_the_machine_and_its_gpus_without_giving_away_the_machine_id() -> None:
    one = identity_of(MACHINE, ["GPU-b", "GPU-a"])
    assert one == identity_of(MACHINE, ["GPU-a", "GPU-b"])  # the order GPUs are listed in does not count
    assert one.hardware_id and one.host_id and len(one.hardware_id) == len(one.host_id) == 64
    assert MACHINE not in one.hardware_id + one.host_id
    swapped = identity_of(MACHINE, ["GPU-a", "GPU-c"])
    assert swapped.hardware_id != one.hardware_id and swapped.host_id == one.host_id  # same host, other GPUs
    other_host = identity_of("0" * 32, ["GPU-a", "GPU-b"])
    assert other_host.hardware_id != one.hardware_id and other_host.host_id != one.host_id
    # no machine-id: the GPUs' UUIDs alone, when every GPU has one; else no id (the name only)
    gpus_only = identity_of(None, ["GPU-a", "GPU-b"])
    assert gpus_only.hardware_id and gpus_only.host_id is None and gpus_only.source == "GPU UUIDs"
    assert identity_of(None, ["GPU-a", None]).hardware_id is None
    assert identity_of(None, []).hardware_id is None


def test_the_machine_id_is_read_where_systemd_keeps_it(tmp_path: Path) -> None:
    empty, fresh, real = tmp_path / "empty", tmp_path / "fresh", tmp_path / "real"
    empty.write_text("")
    fresh.write_text("uninitialized\n")  # a first boot's image
    real.write_text(MACHINE.upper() + "\n")
    assert read_machine_id([tmp_path / "missing", empty, fresh, real]) == (MACHINE, str(real))
    assert read_machine_id([empty, fresh]) is None
    gpus = [GpuInfo(index=0, uuid="GPU-a", name="H100", memory_gb=80)]
    assert machine_identity(gpus, "none").hardware_id is None
    assert machine_identity(gpus, "clone-7") == identity_of("clone-7", ["GPU-a"], "COOP_AGENT_MACHINE_ID")


def _req(name: str, machine: str = MACHINE, gpus: int = 1, uuids: list[str] | None = None) -> NodeRegister:
    req = node(name, gpus=gpus)
    if uuids is not None:
        gpus = [g.model_copy(update={"uuid": u}) for g, u in zip(req.gpus, uuids, strict=True)]
        req = req.model_copy(update={"gpus": gpus})
    ids = identity_of(machine, [g.uuid for g in req.gpus])
    return req.model_copy(update={"hardware_id": ids.hardware_id, "host_id": ids.host_id})


def test_a_machine_rejoins_as_its_node_whatever_its_name(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    first = agent.register_node(_req("gpu-box-1", uuids=["GPU-x"]))
    agent.leave(first["id"])

    # restarted without --name, from a fresh state dir (e.g. as the service): the same machine
    again = agent.register_node(_req("hostname", uuids=["GPU-x"]))
    assert (again["id"], again["name"], again["matched_by"]) == (first["id"], "hostname", "machine")
    assert "renamed from 'gpu-box-1' to 'hostname'" in again["note"]
    # its state dir's node id wins over everything: another name and other GPUs
    claimed = agent.register_node(_req("renamed", uuids=["GPU-y"]).model_copy(update={"node_id": first["id"]}))
    assert (claimed["id"], claimed["matched_by"]) == (first["id"], "state_dir")
    assert [g["uuid"] for g in claimed["gpus"]] == ["GPU-y"]
    agent.leave(first["id"])
    # a card added beside the one it had, from a fresh state dir: the same host, a GPU in common
    grown = agent.register_node(_req("renamed", gpus=2, uuids=["GPU-y", "GPU-z"]).model_copy(update={"name": "x"}))
    assert (grown["id"], grown["matched_by"]) == (first["id"], "gpus_changed")
    assert "GPUs changed" in grown["note"]
    assert len(coordinator.admin.nodes()) == 1


def test_two_agents_on_one_machine_are_two_nodes_while_both_run(coordinator: Coordinator) -> None:
    """Separate state dirs and names on one machine (tests, a split of its GPUs): a machine whose node
    a live agent heartbeats is not taken over; each agent's state dir keeps its own node."""
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    a = agent.register_node(_req("a", gpus=0))
    b = agent.register_node(_req("b", gpus=0))
    assert a["id"] != b["id"]
    assert agent.register_node(_req("a", gpus=0).model_copy(update={"node_id": a["id"]}))["id"] == a["id"]
    assert agent.register_node(_req("b", gpus=0).model_copy(update={"node_id": b["id"]}))["id"] == b["id"]
    # a rename onto the other live node's name is refused, naming the field and the fix, and changes nothing
    with pytest.raises(CoopError) as caught:
        agent.register_node(_req("b", gpus=0).model_copy(update={"node_id": a["id"]}))
    assert caught.value.status == 409 and caught.value.errors[0]["field"] == "name"
    assert "--name a" in caught.value.errors[0]["fix"]
    assert sorted(n["name"] for n in coordinator.admin.nodes()) == ["a", "b"]


def test_another_members_token_never_reaches_a_node_by_its_ids(coordinator: Coordinator) -> None:
    coordinator.new_member("alice")
    coordinator.new_member("mallory")
    alice = coordinator.agent("alice")
    box = alice.register_node(_req("box", uuids=["GPU-a"]))
    alice.leave(box["id"])
    mallory = coordinator.agent("mallory", approve=False)
    forged = mallory.register_node(_req("box", uuids=["GPU-a"]).model_copy(update={"node_id": box["id"]}))
    assert forged["id"] != box["id"] and forged["member"] == "mallory" and forged["approved"] is False
    assert (
        forged["note"]
        == f"the coordinator has no node {box['id']} of yours: this machine registered as node {forged['id']}"
    )
    with pytest.raises(CoopError) as caught:
        mallory.heartbeat(box["id"], Heartbeat())
    assert caught.value.status == 403
    mine = coordinator.admin.request("GET", f"/nodes/{box['id']}")
    assert (mine["member"], mine["state"]) == ("alice", "left")


@pytest.mark.parametrize(
    ("field", "value"),
    [("hardware_id", "ABC"), ("host_id", "g" * 64), ("hardware_id", MACHINE), ("node_id", 0), ("node_id", 2**40)],
)
def test_bad_ids_are_refused_naming_the_field(coordinator: Coordinator, field: str, value: object) -> None:
    coordinator.new_member("alice")
    agent = coordinator.agent("alice")
    body = {**_req("box").model_dump(mode="json"), field: value}
    with pytest.raises(CoopError) as caught:
        agent.request("POST", "/nodes", json=body)
    assert caught.value.status == 422 and caught.value.errors[0]["field"] == field
    assert coordinator.admin.nodes() == []


def _agent(coordinator: Coordinator, token: str, name: str, state_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COOP_AGENT_TOKEN": token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.1",
           "COOP_AGENT_MACHINE_ID": "test-" + MACHINE, "COOP_AGENT_LOG_LEVEL": "INFO"}  # fmt: skip
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", coordinator.url, "--name", name,
           "--state-dir", str(state_dir), "--hardware-from", str(H100_CSV), "--no-calibrate",
           "--no-sandbox"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@on_sqlite
def test_a_real_agent_rejoins_under_another_name_and_stops_when_its_node_is_removed(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    coordinator.new_member("dora")
    token = coordinator.admin.create_token(kind="agent", member="dora")["token"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _agent(coordinator, token, "gpu-box-1", tmp_path / "by-hand", first_log)
    try:
        wait_for(lambda: "awaits approval" in first_log.read_text(), timeout=30, what="the first agent")
        (registered,) = coordinator.admin.nodes()
        coordinator.admin.approve_node(registered["id"])
        wait_for(lambda: "joined as node" in first_log.read_text(), timeout=30, what="the first agent to join")
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    assert coordinator.admin.nodes()[0]["state"] == "left"

    # the same machine, another name and another state dir (the service's): the same node, approved
    service_dir = tmp_path / "service"
    second = _agent(coordinator, token, "gpu-box", service_dir, second_log)
    try:
        wait_for(lambda: "joined as node" in second_log.read_text(), timeout=30, what="the second agent to join")
        (again,) = coordinator.admin.nodes()
        assert (again["id"], again["name"], again["state"], again["approved"]) == (
            registered["id"], "gpu-box", "online", True,
        )  # fmt: skip
        text = second_log.read_text()
        assert f"registered as node {registered['id']} (gpu-box), found by this machine's id" in text
        assert "machine id from COOP_AGENT_MACHINE_ID" in text and "renamed from 'gpu-box-1'" in text

        coordinator.admin.request("POST", f"/nodes/{registered['id']}/remove")
        assert second.wait(timeout=30) == EXIT_RETIRED
    finally:
        if second.poll() is None:
            second.kill()
    text = second_log.read_text()
    assert f"ERROR coop.agent: node {registered['id']} (gpu-box) was removed from the cooperative" in text
    assert "this agent stops (exit status 78: systemd does not restart it)" in text
    assert json.loads((service_dir / "state.json").read_text())["node_id"] is None  # the next join: a new node
    assert coordinator.admin.nodes() == []
