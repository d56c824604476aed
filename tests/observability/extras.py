"""What the dashboard's newer panels need besides ``cooperative.populate``: a CPU-only node and two HPC
pools (one answering, one not), so that their queries have series."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from coop.schemas import Heartbeat
from coop.server.models import Member, Pool, utcnow
from tests.api.helpers import node
from tests.conftest import Coordinator
from tests.observability.cooperative import Cooperative


def add_pools(c: Coordinator) -> float:
    """alice's pool hpc-a answers (3 of its 4 machines take work); hpc-b did not answer its last refresh;
    "gone" was removed. Returns when hpc-a was refreshed (stored as a refresh would, without Slurm)."""
    refreshed = utcnow() - timedelta(seconds=30)
    with Session(c.engine) as session:
        alice = session.exec(select(Member).where(Member.name == "alice")).one()
        capacity = [
            {"name": "RTX4090x2-64cpu-500gb", "nodes": 3, "usable": 2},
            {"name": "cpu-128cpu-1000gb", "nodes": 1, "usable": 1},
        ]
        session.add(Pool(name="hpc-a", member_id=alice.id, capacity=capacity, max_jobs=4, state="ok",
                         refreshed_at=refreshed))  # fmt: skip
        session.add(Pool(name="hpc-b", member_id=alice.id, state="unreachable", detail="timed out"))
        session.add(Pool(name="gone", member_id=alice.id, state="removed", enabled=False))
        session.commit()
    return refreshed.timestamp()


def add_cpu_node(c: Coordinator, coop: Cooperative, cpus: int = 8) -> int:
    """alice also donates cpu-box, a machine without GPUs, which heartbeats from now on."""
    cpu_box: int = c.agent("alice").register_node(node("cpu-box", gpus=0, cpus=cpus))["id"]
    coop.heartbeats.set(cpu_box, Heartbeat())
    return cpu_box
