"""Replay speed of ``coop simulate`` on a seeded synthetic trace (default: 100,000 jobs on 2,000 GPUs).

Prints, per policy, the wall and CPU time of the pool replay (CPU time tells the replay's own cost
when other work shares the machine) and of the replays of each member alone, cycles
that consulted the policy, jobs replayed per second, the policy's own share of the time and its
decision time per cycle (p50/p99). Not a test: figures only. Target: the pool replay of 100,000 jobs
on 2,000 GPUs in under 5 minutes on the 2-core development machine.

    python bench/simulate_bench.py [--jobs 100000] [--gpus 2000] [--members 20] [--load 1.5] [--seed 1]
                                   [--policy coop,fifo] [--alone] [--wide 0.01]
"""

from __future__ import annotations

import argparse
import time

from coop.sim.engine import Options, replay
from coop.sim.report import alone_runs, percentile
from coop.sim.synthetic import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--gpus", type=int, default=2000)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--load", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", default="coop,fifo")
    parser.add_argument("--alone", action="store_true", help="also time the replays of each member alone")
    parser.add_argument("--wide", type=float, default=0.0, help="share of jobs wider than a node (gangs)")
    args = parser.parse_args()
    started = time.perf_counter()
    jobs, nodes = generate(
        jobs=args.jobs, members=args.members, gpus=args.gpus, load=args.load, seed=args.seed, wide=args.wide
    )
    print(f"trace: {len(jobs)} jobs, {len(nodes)} nodes, {sum(n.gpus for n in nodes)} GPUs, "
          f"{args.members} members, load {args.load} (generated in {time.perf_counter() - started:.1f} s)")  # fmt: skip
    for policy in args.policy.split(","):
        options = Options(policy=policy, seed=args.seed, series=False)
        started, cpu = time.perf_counter(), time.process_time()
        out = replay(jobs, nodes, options)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        ms = [s * 1000 for s in out.decision_s]
        preempted = sum(out.preemptions.values())
        print(f"{policy}: pool replay {wall:.1f} s wall, {cpu:.1f} s CPU ({len(jobs) / wall:,.0f} jobs/s), "
              f"{len(ms)} policy cycles, "
              f"policy time {sum(ms) / 1000:.1f} s, decision p50 {percentile(ms, 50):.2f} ms "
              f"p99 {percentile(ms, 99):.2f} ms, {preempted} preemptions")  # fmt: skip
        if args.alone:
            started = time.perf_counter()
            alone_runs(jobs, nodes, options)
            print(f"{policy}: members alone {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
