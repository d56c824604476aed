"""The ``max_runtime`` members declare, for traces that hold none (synthetic, Alibaba).

A careful user declares what its job needs on the slowest card it may land on, with a safety margin
(past the limit the job fails), rounded up to a round figure. The margin is at least 1.25 and
log-normal beyond (some users pad a lot), so declared limits order jobs only roughly by length: a
scheduler gets no exact run times from them.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from coop.sim.inputs import SimJob, SimNode, spread

HOUR = 3600.0
ROUND_LIMITS = tuple(m * 60.0 for m in (15, 30)) + tuple(
    h * HOUR for h in (1, 2, 4, 8, 12, 24, 48, 72, 96, 120, 168, 240, 336, 480, 720)
)  # the job spec's longest limit is 30 days
MIN_MARGIN = 1.25
MARGIN_SIGMA = 0.5


def declared_limit(run_s: float, rng: random.Random) -> float | None:
    """What a user writes for a job that takes ``run_s`` on the slowest card it may get; ``None``
    when even the longest allowed limit is too short (it declares none)."""
    wanted = run_s * MIN_MARGIN * math.exp(abs(rng.gauss(0.0, MARGIN_SIGMA)))
    return next((limit for limit in ROUND_LIMITS if limit >= wanted), None)


def declare_limits(jobs: list[SimJob], nodes: list[SimNode], share: float, seed: int) -> list[SimJob]:
    """A share of the jobs (drawn with ``seed``) get the limit their member would declare. A gang's
    slowest card is the slowest of any node that could hold one of its ranks (it runs at that pace); a
    job that could never run declares none."""
    if share <= 0:
        return jobs
    rng = random.Random(f"limits:{seed}")
    slowest: dict[tuple[int, int, tuple[str, ...], float | None], float] = {}
    out = []
    for job in jobs:
        gang = spread(job, nodes)
        key = (gang.per_node, gang.nodes or 1, job.gpu_models, job.gpu_memory)
        if key not in slowest:
            fits = [
                n.tflops for n in nodes
                if n.gpus >= gang.per_node and (not job.gpu_models or n.gpu_model in job.gpu_models)
                and n.gpu_memory >= (job.gpu_memory or 0.0) and n.tflops > 0
            ]  # fmt: skip
            slowest[key] = min(fits) if len(fits) >= key[1] else 0.0  # too few nodes: refused at submit
        declares = rng.random() < share
        limit = declared_limit(job.duration * 100.0 / slowest[key], rng) if declares and slowest[key] else None
        out.append(replace(job, max_runtime=limit) if limit is not None else job)
    return out
