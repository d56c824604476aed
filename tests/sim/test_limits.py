"""The max_runtime members are taken to declare in traces that hold none (coop.sim.limits)."""

from __future__ import annotations

import random

import pytest

from coop.sim.inputs import SimJob, SimNode
from coop.sim.limits import MIN_MARGIN, ROUND_LIMITS, declare_limits, declared_limit


@pytest.mark.parametrize("run_s", [10.0, 600.0, 5000.0, 3 * 86400.0])
def test_a_declared_limit_is_round_and_covers_the_run_with_a_margin(run_s: float) -> None:
    rng = random.Random(1)
    for _ in range(200):
        limit = declared_limit(run_s, rng)
        assert limit in ROUND_LIMITS and limit >= MIN_MARGIN * run_s


def test_a_run_longer_than_any_allowed_limit_declares_none() -> None:
    assert declared_limit(ROUND_LIMITS[-1], random.Random(1)) is None


def _node(nid: int, gpus: int, model: str, tflops: float) -> SimNode:
    return SimNode(nid, f"n{nid}", "a", gpus, model, 24.0, tflops, "consumer", ())


def test_limits_cover_the_slowest_card_each_job_may_get() -> None:
    nodes = [_node(1, 1, "RTX4090", 200.0), _node(2, 1, "RTX3090", 50.0), _node(3, 2, "A6000", 100.0)]
    jobs = [
        SimJob(i, f"j{i}", "b", 0.0, 60.0 * i, 2 if i % 2 == 0 else 1, None, ("RTX4090",) if i % 4 == 1 else (), True)
        for i in range(1, 121)
    ]
    declared = declare_limits(jobs, nodes, 1.0, seed=4)
    impossible = SimJob(999, "j999", "b", 0.0, 60.0, 2, None, ("RTX4090",), True)  # refused at submit
    assert declare_limits([impossible], nodes, 1.0, seed=4) == [impossible]
    for job in declared:
        # 2 GPUs: only the A6000 node (100); pinned to RTX4090: 200; any 1 GPU: the RTX3090 (50)
        slowest = 100.0 if job.gpus == 2 else 200.0 if job.gpu_models else 50.0
        assert job.max_runtime is not None and job.max_runtime >= MIN_MARGIN * job.duration * 100 / slowest
    assert declare_limits(jobs, nodes, 1.0, seed=4) == declared  # seeded
    assert declare_limits(jobs, nodes, 0.0, seed=4) == jobs
    some = sum(j.max_runtime is not None for j in declare_limits(jobs, nodes, 0.5, seed=4))
    assert 40 <= some <= 80
