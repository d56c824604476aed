"""An odd sensor reading never stops a node's heartbeats: the agent drops what the coordinator's
bounds would refuse, and the heartbeat built from the rest is accepted."""

from __future__ import annotations

import math

from agent.models import ForeignProcess, GpuTelemetry
from coop.schemas import ForeignProcess as WireProcess
from coop.schemas import GpuTelemetry as WireTelemetry
from coop.schemas import Heartbeat


def test_impossible_readings_are_dropped_and_the_heartbeat_validates() -> None:
    odd = GpuTelemetry(index=0, utilization_pct=101, memory_used_gb=5000, temperature_c=math.nan, power_w=4294967295)
    assert (odd.utilization_pct, odd.memory_used_gb, odd.temperature_c, odd.power_w) == (None, None, None, None)
    fine = GpuTelemetry(index=1, utilization_pct=98, memory_used_gb=70.5, temperature_c=-5, power_w=690)
    assert (fine.utilization_pct, fine.memory_used_gb, fine.temperature_c, fine.power_w) == (98, 70.5, -5, 690)
    process = ForeignProcess(pid=42, name="python", used_memory_gb=math.inf)
    assert process.used_memory_gb is None

    heartbeat = Heartbeat(
        gpus=[WireTelemetry(**t.model_dump()) for t in (odd, fine)],
        foreign_processes=[WireProcess(pid=process.pid, name=process.name, used_memory_gb=process.used_memory_gb)],
    )
    assert Heartbeat.model_validate_json(heartbeat.model_dump_json()) == heartbeat
