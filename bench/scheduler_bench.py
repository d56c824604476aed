"""One scheduler cycle on a large seeded random pool: how long `place`, `preemptions` and `decide` take.

Prints jobs, nodes, placements, cycle seconds (median of --runs), placements/s and peak memory of
one cycle (tracemalloc, measured on a separate run). Not a test: figures only, no timing asserts.
Target: 10,000 pending jobs on 5,000 heterogeneous nodes in under 2 s, at least 5,000 placements/s.

    python bench/scheduler_bench.py [--jobs 10000] [--nodes 5000] [--seed 1] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc
from collections import Counter
from typing import Any

from coop.scheduler.decide import Snapshot, after_placements, decide
from coop.scheduler.feasibility import GpuShape
from coop.scheduler.model import JobView, MemberView, NodeView, Policy, RunningView
from coop.scheduler.placement import place
from coop.scheduler.preemption import preemptions
from coop.spec import Resources

# model, measured memory (GiB as tools report it), compute capability, tier, weight
CARDS = [
    ("RTX3060", 11.99, 8.6, "consumer", 8),
    ("RTX3090", 23.69, 8.6, "consumer", 20),
    ("RTX4090", 23.99, 8.9, "consumer", 20),
    ("RTX4060TI", 15.99, 8.9, "consumer", 6),
    ("A6000", 47.99, 8.6, "consumer", 5),
    ("T4", 15.0, 7.5, "consumer", 4),
    ("L4", 22.49, 8.9, "hpc", 6),
    ("A100", 39.59, 8.0, "hpc", 5),
    ("A100", 79.6, 8.0, "hpc", 6),
    ("H100", 79.6, 9.0, "hpc", 6),
]
COUNTS = {"consumer": ([1, 2, 4], [60, 30, 10]), "hpc": ([1, 2, 4, 8], [10, 20, 40, 30])}
REQUESTS: list[tuple[dict[str, Any], int]] = [  # resources, weight
    ({"gpus": 1, "gpu_memory": "8GB+"}, 20),
    ({"gpus": 1, "gpu_memory": "16GB+", "cpus": 4, "memory": "32GB"}, 20),
    ({"gpus": 1, "gpu_memory": "24GB+", "cpus": 8}, 15),
    ({"gpus": 1, "gpu": ["RTX4090", "RTX3090"], "cpus": 4}, 8),
    ({"gpus": 2, "gpu_memory": "24GB+", "cpus": 8, "memory": "64GB"}, 10),
    ({"gpus": 2, "compute_capability": "8.9+"}, 5),
    ({"gpus": 4, "gpu_memory": "40GB+", "cpus": 16, "tier": "hpc"}, 6),
    ({"gpus": 8, "gpu": ["A100", "H100"], "gpu_memory": "80GB", "cpus": 32}, 3),
    ({"gpus": 1, "gpu": "H100"}, 3),
    ({"gpus": 0, "cpus": 4, "memory": "16GB"}, 6),
    ({"gpus": 0, "cpus": 16}, 2),
    ({"gpus": 1, "gpu_memory": "12GB..24GB", "cpus": 2}, 2),
]


def build(
    n_jobs: int, n_nodes: int, seed: int
) -> tuple[list[JobView], list[NodeView], list[MemberView], list[RunningView]]:
    rnd = random.Random(seed)
    n_members = max(2, n_nodes // 100)
    now = 1_700_000_000.0
    nodes, running = [], []
    job_ids = iter(range(10**6, 10**7))
    for node_id in range(1, n_nodes + 1):
        owner = rnd.randrange(1, n_members + 1)
        if rnd.random() < 0.05:  # CPU-only boxes
            gpus: tuple[GpuShape, ...] = ()
            tier = "consumer"
        else:
            model, mem, cc, tier, _ = rnd.choices(CARDS, weights=[c[4] for c in CARDS])[0]
            count = rnd.choices(*COUNTS[tier])[0]
            gpus = (GpuShape(model, mem, cc),) * count
            if rnd.random() < 0.01 and count > 1:  # a few mixed workstations
                other = rnd.choice(CARDS)
                gpus = gpus[:-1] + (GpuShape(other[0], other[1], other[2]),)
        cpus = max(4, len(gpus) * rnd.choice([4, 8, 16]))
        memory = cpus * rnd.choice([2.0, 4.0])
        free = set(range(len(gpus)))
        free_cpus, free_mem = cpus, memory
        if gpus and rnd.random() < 0.3:  # partly busy with one running attempt
            held = rnd.randint(1, len(gpus))
            idx = tuple(sorted(rnd.sample(sorted(free), held)))
            free -= set(idx)
            free_cpus -= min(cpus - 1, held * 2)
            running.append(RunningView(next(job_ids), rnd.randrange(1, n_members + 1), node_id, held,
                                       rnd.random() < 0.8, now - rnd.uniform(0, 7200), idx, held * 2, 0.0))  # fmt: skip
        state = rnd.random()
        nodes.append(NodeView(
            id=node_id, name=f"node-{node_id}", member_id=owner, tier=tier, cpus=cpus, memory_gb=memory,
            gpus=gpus, free_gpus=free, free_cpus=free_cpus, free_memory_gb=free_mem,
            online=state >= 0.05, paused=0.05 <= state < 0.09, draining=0.09 <= state < 0.10,
            reclaim=0.10 <= state < 0.11, reclaim_reason="the owner paused it" if 0.10 <= state < 0.11 else None,
        ))  # fmt: skip
    members = [
        MemberView(id=m, share=rnd.choice([0.5, 1.0, 1.0, 2.0]), gpu_cap=rnd.choice([None, None, None, 64]),
                   gpus_in_use=0, usage_gpu_hours=rnd.uniform(0, 500), balance=rnd.uniform(-50, 50), name=f"lab-{m}")
        for m in range(1, n_members + 1)
    ]  # fmt: skip
    resources = [Resources.model_validate(r, strict=False) for r, _ in REQUESTS]
    weights = [w for _, w in REQUESTS]
    jobs = [
        JobView(id=j, member_id=rnd.randrange(1, n_members + 1), resources=rnd.choices(resources, weights)[0],
                priority=rnd.choice(["low", "normal", "normal", "high"]), submitted_at=now - rnd.uniform(0, 86400),
                preemptible=rnd.random() < 0.8)
        for j in range(1, n_jobs + 1)
    ]  # fmt: skip
    return jobs, nodes, members, running


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    jobs, nodes, members, running = build(args.jobs, args.nodes, args.seed)
    now = 1_700_000_000.0
    policy = Policy()
    times, result = [], None
    for _ in range(args.runs):
        start = time.perf_counter()
        result = place(jobs, nodes, members, policy, now)
        times.append(time.perf_counter() - start)
    assert result is not None
    cycle = statistics.median(times)
    snap = Snapshot(jobs, nodes, members, running, policy, now)
    after = after_placements(snap, result.placements)
    still_running, still_pending = after.running, after.jobs
    pre_times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        pre = preemptions(still_running, still_pending, after.nodes, members, policy, now + 3600)
        pre_times.append(time.perf_counter() - start)
    decide_times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        decided = decide(snap)
        decide_times.append(time.perf_counter() - start)
    tracemalloc.start()
    place(jobs, nodes, members, policy, now)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    start = time.perf_counter()
    fifo = place(jobs, nodes, members, Policy(fair_share=False), now)
    fifo_s = time.perf_counter() - start
    reasons = len(set(result.waiting.values()))
    print(f"jobs              {len(jobs)}")
    print(f"nodes             {len(nodes)} ({sum(n.schedulable for n in nodes)} schedulable, "
          f"{sum(len(n.gpus) for n in nodes)} GPUs, {sum(len(n.free_gpus) for n in nodes)} free)")  # fmt: skip
    print(f"placements        {len(result.placements)} (waiting {len(result.waiting)}, {reasons} distinct reasons)")
    print(f"cycle seconds     {cycle:.3f} (median of {args.runs}; min {min(times):.3f}, max {max(times):.3f})")
    print(f"placements/s      {len(result.placements) / cycle:,.0f}")
    print(f"peak memory       {peak / 2**20:.1f} MiB (tracemalloc, one cycle)")
    print(f"fifo cycle        {fifo_s:.3f} s, {len(fifo.placements)} placements")
    print(f"preemptions       {len(pre)} in {statistics.median(pre_times):.3f} s "
          f"({sum(p.kind == 'owner' for p in pre)} owner, {sum(p.kind == 'reclaim' for p in pre)} reclaim; "
          f"{len(still_running)} running, {len(still_pending)} pending; after the cycle, an hour later)")  # fmt: skip
    print(f"decide            {statistics.median(decide_times):.3f} s: the whole live cycle's policy "
          f"({len(decided.placements)} placements, then {len(decided.preemptions)} preemptions at once)")  # fmt: skip
    for reason, count in Counter(result.waiting.values()).most_common(4):
        print(f"  {count:5} x {reason}")


if __name__ == "__main__":
    main()
