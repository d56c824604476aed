"""A seeded synthetic cooperative: unequal donors, bursty members, heavy-tailed jobs, owners taking
their machines back in the evening. Each member asks for work in proportion to what it gives, times
``load`` (above 1: overloaded), so a fair pool can give every member its contribution's share."""

from __future__ import annotations

import math
import random

from coop.sim.inputs import SimJob, SimNode
from coop.sim.limits import declare_limits

# (model, GB per GPU, calibrated TFLOP/s per GPU, GPUs per node, weight): consumer cards and a few servers
NODE_KINDS = (
    ("RTX3090", 24.0, 71.0, 1, 3),
    ("RTX4090", 24.0, 165.0, 1, 3),
    ("RTX4090", 24.0, 165.0, 2, 2),
    ("A6000", 48.0, 155.0, 4, 1),
    ("A100", 80.0, 280.0, 8, 1),
)
GPU_COUNTS = ((1, 0.70), (2, 0.18), (4, 0.09), (8, 0.03))
# a wide job's width in multiples of the widest node (1.5 x 8 = 12 ... 16 x 8 = 128 GPUs), and how often:
# gangs over 2 to 16 nodes, the widest wider than most pools
WIDE_COUNTS = ((1.5, 0.30), (2, 0.35), (4, 0.20), (8, 0.10), (16, 0.05))
DAY = 86400.0


def generate(
    jobs: int = 1000,
    members: int = 6,
    gpus: int = 64,
    load: float = 1.5,
    seed: int = 0,
    offline: float = 0.3,
    declared: float = 0.8,
    wide: float = 0.0,
) -> tuple[list[SimJob], list[SimNode]]:
    """``jobs`` jobs for ``members`` members on about ``gpus`` GPUs, offered at ``load`` times capacity.

    Member k (1-based) donates about k parts in sum(1..members) of the GPUs; a fraction ``offline`` of
    the single-GPU machines goes back to its owner for 1-3 hours most evenings. Durations are
    log-normal (median 20 min on a 100 TFLOP/s GPU, a tail of many hours); arrivals come in bursts.
    A share ``declared`` of the jobs declares a ``max_runtime`` (``coop.sim.limits``). A share ``wide``
    of the jobs is wider than the widest node (``WIDE_COUNTS``): the replay runs them as gangs over
    several nodes, and refuses those wider than the cluster. With ``wide`` 0 no extra number is drawn,
    so the trace is the one earlier versions wrote.
    """
    rng = random.Random(seed)
    names = [f"m{k:02d}" for k in range(1, members + 1)]
    weights = list(range(1, members + 1))
    nodes = _nodes(rng, names, weights, gpus, offline)
    capacity = sum(n.gpus * n.tflops / 100 for n in nodes)  # in 100-TFLOP/s GPUs
    biggest = max(n.gpus for n in nodes)
    counts = [(g, p) for g, p in GPU_COUNTS if g <= biggest]
    sizes: list[tuple[int, float]] = []
    for _ in range(jobs):
        if wide > 0 and rng.random() < wide:
            g = math.ceil(biggest * rng.choices([k for k, _ in WIDE_COUNTS], [p for _, p in WIDE_COUNTS])[0])
        else:
            g = rng.choices([g for g, _ in counts], [p for _, p in counts])[0]
        duration = min(rng.lognormvariate(math.log(1200), 1.3), 3 * DAY)
        sizes.append((g, max(30.0, round(duration))))
    work = sum(g * d for g, d in sizes)
    horizon = work / (capacity * load)  # arrivals spread over the time the pool needs at this load
    given = [sum(n.gpus * n.tflops for n in nodes if n.member == name) for name in names]
    total = sum(given)
    out: list[SimJob] = []
    per_member = [round(len(sizes) * g / total) for g in given]  # demand in proportion to what it gives
    per_member[-1] = len(sizes) - sum(per_member[:-1])
    at = 0
    for name, count in zip(names, per_member, strict=True):
        for submit in _bursts(rng, count, horizon):
            g, duration = sizes[at]
            at += 1
            out.append(SimJob(0, "", name, round(submit, 1), duration, g, None, (), rng.random() < 0.9))
    out.sort(key=lambda j: (j.submit, j.member))
    numbered = [SimJob(i, f"job-{i}", j.member, j.submit, j.duration, j.gpus, None, (), j.preemptible)
                for i, j in enumerate(out, start=1)]  # fmt: skip
    return declare_limits(numbered, nodes, declared, seed), nodes


def _nodes(rng: random.Random, names: list[str], weights: list[int], gpus: int, offline: float) -> list[SimNode]:
    nodes: list[SimNode] = []
    total = sum(weights)
    for name, weight in zip(names, weights, strict=True):
        target, have = max(1, round(gpus * weight / total)), 0
        while have < target:
            fitting = [k for k in NODE_KINDS if k[3] <= max(1, target - have)]
            model, memory, tflops, count, _ = rng.choices(fitting, [k[4] for k in fitting])[0]
            nid = len(nodes) + 1
            away: tuple[tuple[float, float], ...] = ()
            if count == 1 and rng.random() < offline:
                away = tuple(
                    (d * DAY + 18 * 3600 + start, d * DAY + 18 * 3600 + start + rng.uniform(3600, 3 * 3600))
                    for d in range(60)
                    if rng.random() < 0.7
                    for start in (rng.uniform(0, 3 * 3600),)
                )
            nodes.append(SimNode(nid, f"{name}-node{nid}", name, count, model, memory, tflops, "consumer", away))
            have += count
    return nodes


def _bursts(rng: random.Random, count: int, horizon: float) -> list[float]:
    """``count`` arrival times in [0, horizon]: bursts of a few to a few dozen jobs at random moments."""
    times: list[float] = []
    while len(times) < count:
        centre = rng.uniform(0, horizon)
        size = min(count - len(times), rng.randint(3, 40))
        times += [min(horizon, max(0.0, centre + rng.expovariate(1 / 300))) for _ in range(size)]
    return sorted(times)
