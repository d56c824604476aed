"""Host RAM in one unit end to end: the agent reports GB (10^9 bytes), the unit jobs ask in, so a
24 GiB machine (25.77 GB) takes a ``memory: 24GB`` job (it was refused when RAM went out in GiB)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from agent import hardware
from agent.hardware import report_from_parsed
from agent.runner import registration
from agent.state import AgentState
from coop.client import CoopError
from coop.scheduler.model import Policy
from coop.scheduler.placement import place
from coop.server.backends import Launch
from coop.server.backends.ray import guest_env
from tests.conftest import Coordinator
from tests.scheduler import NOW, job, node

GIB = 2**30


@pytest.fixture
def ram_24_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.psutil, "virtual_memory", lambda: SimpleNamespace(total=24 * GIB))


@pytest.mark.usefixtures("ram_24_gib")
def test_the_agent_reports_host_ram_in_gb() -> None:
    assert hardware.host_info()["memory_gb"] == 25.76  # 25.769803776, rounded down: never more than there is
    assert hardware.host_gb(24 * 10**9) == 24.0
    assert hardware.host_gb(24 * 10**9 - 1) == 23.99


@pytest.mark.usefixtures("ram_24_gib")
@pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)
def test_a_24gb_job_is_accepted_for_a_24_gib_machine_and_26gb_is_refused(coordinator: Coordinator) -> None:
    researcher, _ = coordinator.new_member("ann")
    report = report_from_parsed(None)  # this machine's facts, CPU only, with 24 GiB of RAM
    node_out = coordinator.agent("ann").register_node(registration(report, "box-24gib", AgentState()))
    assert node_out["memory_gb"] == 25.76
    fits = {"name": "fits", "run": "true", "resources": {"gpus": 0, "cpus": 1, "memory": "24GB"}}
    assert researcher.submit(fits)["state"] == "PENDING"
    with pytest.raises(CoopError) as err:
        researcher.submit({**fits, "resources": {"gpus": 0, "cpus": 1, "memory": "26GB"}})
    assert err.value.status == 422 and "largest node has 25.76 GB" in err.value.message


def test_placement_puts_a_24gb_job_on_a_24_gib_machine() -> None:
    box = node(1, cpus=4, memory_gb=hardware.host_gb(24 * GIB))
    result = place([job(1, gpus=0, memory="24GB"), job(2, gpus=0, memory="26GB", age_s=1)], [box], [], Policy(), NOW)
    assert [(p.job_id, p.node_id) for p in result.placements] == [(1, 1)]
    assert result.waiting[2] == "waiting: 26 GB of RAM requested but the largest node has 25.76 GB"


def test_a_jobs_memory_limit_is_what_it_asked_for_in_gb() -> None:
    """The sandbox's cgroup limit (agent/guest.py) is the job's GB, not GiB: 24GB is 24 * 10^9 bytes."""
    launch = Launch(ref="coop-1-1", command="true", env={}, workdir=None, node_resource="coop_node_1", gpus=0,
                    cpus=1, grace_s=10, memory_gb=24.0)  # fmt: skip
    assert json.loads(guest_env(launch)["COOP_GUEST"])["memory_bytes"] == 24 * 10**9
