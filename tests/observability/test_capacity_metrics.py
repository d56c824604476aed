"""The metrics behind the dashboard's node table, CPU-only capacity, job outcomes and HPC pool health,
scraped from a real coordinator over a known cooperative (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlmodel import Session, select

from coop.server.models import Attempt
from tests.conftest import Coordinator
from tests.observability.conftest import METRICS_TOKEN
from tests.observability.cooperative import populate
from tests.observability.extras import add_cpu_node, add_pools
from tests.observability.test_metrics import scrape, value


def test_node_pool_and_outcome_metrics(quiet_coordinator_db: Coordinator) -> None:
    c = quiet_coordinator_db
    coop = populate(c)  # a1, a2 run on gpu-a (1 GPU each); b1 was preempted on gpu-b, which alice paused
    try:
        add_cpu_node(c, coop)
        refreshed = add_pools(c)
        m = scrape(c.url, METRICS_TOKEN)
    finally:
        coop.heartbeats.stop()

    # what each node is, for the node table
    assert value(m, "coop_node_info", node="gpu-a", member="alice", tier="consumer", state="online",
                 gpu_model="RTX4090") == 1  # fmt: skip
    assert value(m, "coop_node_info", node="gpu-b", state="paused", gpu_model="A100") == 1
    assert value(m, "coop_node_info", node="cpu-box", state="online", gpu_model="cpu") == 1
    # GPUs and CPU cores per node: allocated, idle (taking work) or unavailable (paused, offline)
    gpus = {(n, s): value(m, "coop_node_gpus", node=n, state=s) for n in ("gpu-a", "gpu-b", "cpu-box")
            for s in ("allocated", "idle", "unavailable")}  # fmt: skip
    assert gpus == {("gpu-a", "allocated"): 2, ("gpu-a", "idle"): 0, ("gpu-a", "unavailable"): 0,
                    ("gpu-b", "allocated"): 0, ("gpu-b", "idle"): 0, ("gpu-b", "unavailable"): 1,
                    ("cpu-box", "allocated"): 0, ("cpu-box", "idle"): 0, ("cpu-box", "unavailable"): 0}  # fmt: skip
    with Session(c.engine) as session:
        held = sum(a.cpus for a in session.exec(select(Attempt).where(Attempt.state == "RUNNING")))
    assert held >= 2 and value(m, "coop_node_cpus", node="gpu-a", state="allocated") == held
    assert value(m, "coop_node_cpus", node="gpu-a", gpu_model="RTX4090", state="idle") == 16 - held
    assert value(m, "coop_node_cpus", node="gpu-b", state="unavailable") == 16
    # CPU-only capacity: the CPU-only nodes' cores
    assert value(m, "coop_node_cpus", node="cpu-box", gpu_model="cpu", state="idle") == 8
    assert value(m, "coop_node_cpus", node="cpu-box", state="allocated") == 0

    # attempts that ended: b1's preemption (the rest still run); every state and backend is there, from 0
    assert value(m, "coop_attempts_ended_total", state="PREEMPTED", backend="ray") == 1
    for state in ("SUCCEEDED", "FAILED", "LOST", "CANCELLED", "REFUSED"):
        assert value(m, "coop_attempts_ended_total", state=state, backend="slurm") == 0
    assert not [k for k in m if k[0] == "coop_attempts_ended_total" and ("state", "RUNNING") in k[1]]

    # HPC pools: up or not, their state, machines, Coop's jobs there and its cap; a removed pool is left out
    assert value(m, "coop_pool_up", pool="hpc-a", member="alice") == 1
    assert value(m, "coop_pool_up", pool="hpc-b") == 0
    states = {
        s: value(m, "coop_pool_state", pool="hpc-b", state=s) for s in ("ok", "unknown", "unreachable", "refused")
    }
    assert states == {"ok": 0, "unknown": 0, "unreachable": 1, "refused": 0}
    assert value(m, "coop_pool_nodes", pool="hpc-a", state="usable") == 3
    assert value(m, "coop_pool_nodes", pool="hpc-a", state="unusable") == 1
    assert (value(m, "coop_pool_jobs", pool="hpc-a"), value(m, "coop_pool_max_jobs", pool="hpc-a")) == (0, 4)
    assert abs(value(m, "coop_pool_last_refresh_timestamp_seconds", pool="hpc-a") - refreshed) < 1
    assert not [k for k in m if k[0].startswith("coop_pool") and ("pool", "gone") in k[1]]
    assert not [k for k in m if k[0] == "coop_pool_last_refresh_timestamp_seconds" and ("pool", "hpc-b") in k[1]]
