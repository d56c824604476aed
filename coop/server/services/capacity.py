"""Snapshots of registered capacity (nodes and pools) for the pure scheduler code."""

from __future__ import annotations

from collections import defaultdict

from sqlmodel import Session, col, select

from coop.scheduler.feasibility import GpuShape, NodeShape
from coop.server.models import Gpu, Node, Pool
from coop.states import NodeState


def node_shapes(session: Session) -> list[NodeShape] | None:
    """Every node that has not left, and every enabled pool's node classes.

    None when a pool's capacity is not known yet: then nothing can be ruled impossible.
    """
    nodes = session.exec(select(Node).where(Node.state != NodeState.LEFT)).all()
    gpus: dict[int, list[GpuShape]] = defaultdict(list)
    if nodes:
        for g in session.exec(select(Gpu).where(col(Gpu.node_id).in_([n.id for n in nodes]))):
            gpus[g.node_id].append(GpuShape(g.model, g.memory_gb, g.compute_capability))
    shapes = [  # a pool's node class counts for gangs through its pool's capacity below (machines=0 here)
        NodeShape(n.name, n.tier, n.cpus, n.memory_gb, tuple(gpus[n.id]), 0 if n.pool_id is not None else 1)
        for n in nodes  # type: ignore[index]
        if n.id is not None
    ]
    for pool in session.exec(select(Pool).where(col(Pool.enabled))):
        if not pool.capacity:
            return None
        for cls in pool.capacity:
            gpu = GpuShape(cls.get("model", ""), float(cls.get("gpu_memory_gb", 0)), cls.get("compute_capability"))
            shapes.append(
                NodeShape(
                    f"{pool.name}/{cls.get('name', '')}",
                    "hpc",
                    int(cls.get("cpus", 0)),
                    float(cls.get("memory_gb", 0)),
                    (gpu,) * int(cls.get("gpus", 0)),
                    int(cls.get("nodes", 1)),
                )
            )
    return shapes
