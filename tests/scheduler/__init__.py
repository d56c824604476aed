"""Builders for the pure scheduler tests: small hand-checkable pools, jobs and members."""

from __future__ import annotations

from typing import Any

from coop.scheduler.feasibility import GpuShape
from coop.scheduler.model import JobView, MemberView, NodeView, RunningView
from coop.spec import Resources

NOW = 1_700_000_000.0
CARDS = {  # model -> (measured memory as tools report it, compute capability)
    "RTX3060": (11.99, 8.6),
    "RTX3090": (23.69, 8.6),
    "RTX4090": (23.99, 8.9),
    "A100": (79.6, 8.0),
    "H100": (79.6, 9.0),
    "L4": (22.49, 8.9),
}


def gpu(model: str) -> GpuShape:
    mem, cc = CARDS[model]
    return GpuShape(model, mem, cc)


def node(
    id: int,
    *models: str,
    count: int = 1,
    busy: tuple[int, ...] = (),
    cpus: int = 16,
    memory_gb: float = 64.0,
    member_id: int = 100,
    tier: str = "consumer",
    **state: Any,
) -> NodeView:
    """``node(1, "RTX4090", count=4, busy=(0,))``: a 4 x RTX4090 node with GPU 0 in use.
    Several models give a mixed machine, one GPU each: ``node(2, "RTX3060", "RTX4090")``."""
    gpus = tuple(gpu(m) for m in models) if len(models) > 1 else tuple(gpu(m) for m in models) * count
    return NodeView(
        id=id, name=f"node-{id}", member_id=member_id, tier=tier, cpus=cpus, memory_gb=memory_gb, gpus=gpus,
        free_gpus=set(range(len(gpus))) - set(busy), free_cpus=cpus, free_memory_gb=memory_gb, **state,
    )  # fmt: skip


def job(id: int, member_id: int = 1, priority: str = "normal", age_s: float = 0.0, preemptible: bool = True,
        max_runtime_s: float | None = None, **resources: Any) -> JobView:  # fmt: skip
    """``job(7, member_id=2, gpus=2, gpu_memory="24GB")``; ``age_s`` = seconds since submission."""
    res = Resources.model_validate({"gpus": 1} | resources)
    return JobView(id, member_id, res, priority, NOW - age_s, preemptible, max_runtime_s)


def member(id: int, share: float = 1.0, cap: int | None = None, in_use: int = 0, usage: float = 0.0,
           balance: float = 0.0, name: str = "") -> MemberView:  # fmt: skip
    return MemberView(id, share, cap, in_use, usage, balance, name)


def running(job_id: int, member_id: int, node_id: int, gpu_indices: tuple[int, ...] = (0,), ran_s: float = 3600.0,
            preemptible: bool = True, cpus: int = 1) -> RunningView:  # fmt: skip
    return RunningView(job_id, member_id, node_id, len(gpu_indices), preemptible, NOW - ran_s, gpu_indices, cpus)
