"""What other members may see of a donor's node: its GPUs and their readings, not the names of what
its owner runs on them (a donor's processes are its own business), in the node listing and in the
preemption reason its guests read."""

from __future__ import annotations

import json

from sqlmodel import Session

from coop.schemas import ForeignProcess, GpuTelemetry, Heartbeat
from coop.server.services import scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import Coordinator
from tests.observability.cooperative import InProcessBackend

BUSY = Heartbeat(
    gpus=[GpuTelemetry(index=0, utilization_pct=97, memory_used_gb=20, temperature_c=81, power_w=420)],
    foreign_processes=[ForeignProcess(pid=4242, name="secret-render", gpu_index=0)],
)


def test_other_members_see_a_nodes_gpus_but_not_its_owners_processes(coordinator: Coordinator) -> None:
    c = coordinator
    alice, _ = c.new_member("alice")
    bob, _ = c.new_member("bob")
    agent = c.agent("alice")
    box = agent.register_node(node("box"))["id"]
    agent.heartbeat(box, BUSY)

    for who in (alice, c.admin):  # the donor and admins see what runs there, and why it is taken back
        (seen,) = who.nodes()
        assert seen["telemetry"]["foreign_processes"][0]["name"] == "secret-render"
        assert seen["reclaim_reason"] == "GPU processes Coop did not start: secret-render"
    for shown in (bob.nodes()[0], bob.request("GET", f"/nodes/{box}")):
        assert "secret-render" not in json.dumps(shown) and "4242" not in json.dumps(shown)
        assert shown["reclaim"] is True  # that the owner has it back is no secret: guests cannot use it
        assert shown["reclaim_reason"] == "its owner runs GPU processes Coop did not start"
        assert shown["telemetry"] == {"gpus": [BUSY.gpus[0].model_dump()]}  # the readings stay

    agent.heartbeat(box, Heartbeat(paused=True))
    assert bob.nodes()[0]["reclaim_reason"] == "owner paused the node"


def test_a_guest_stopped_for_the_owners_processes_is_not_told_their_names(loopless: Coordinator) -> None:
    c, backend = loopless, InProcessBackend()
    c.new_member("alice")
    bob = c.new_member("bob")[0]
    agent = c.agent("alice")
    box = agent.register_node(node("box", gpus=1))["id"]
    job = bob.submit(job_spec("guest", 1))["id"]
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)  # placed
        scheduling.cycle(session, c.settings, backend)  # seen running
    assert bob.job(job)["state"] == "RUNNING"

    agent.heartbeat(box, BUSY)
    with Session(c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, c.settings, backend)
    shown = bob.job(job)
    stop = "preempted: node box is reclaimed by its owner (its owner runs GPU processes Coop did not start)"
    assert shown["attempts_detail"][0]["reason"] == stop
    assert "secret-render" not in json.dumps(shown)
