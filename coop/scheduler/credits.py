"""Credit arithmetic, pure: the ledger (``services.ledger``) and the simulator (``coop.sim``) both use it.

One credit is one hour of 100 measured TFLOP/s. For a slice of run time the job's member spends
and the donor earns the same amount; a donor's own job on its own node is free (``own``, zero
credits); idle but lendable GPUs earn their donor ``idle_rate`` of the full rate. Fair share orders
members by their usage (``spend`` and ``own`` amounts), decayed with a half-life.
"""

from __future__ import annotations

CREDIT_TFLOPS = 100.0  # one credit = one hour of this many measured TFLOP/s
USAGE_KINDS = ("spend", "own")  # the entry kinds fair share counts as usage


def credits(hours: float, tflops: float) -> float:
    """Credits for ``hours`` of ``tflops`` (the rate of everything the slice held)."""
    return hours * tflops / CREDIT_TFLOPS


def run_tflops(gpus: int, tflops_per_gpu: float | None, cpus: int, node_cpus: int, cpu_tflops: float | None) -> float:
    """The rate a run is charged at: its GPUs, or for a CPU-only job its share of the node's CPU TFLOP/s."""
    if gpus:
        return gpus * (tflops_per_gpu or 0.0)
    share = cpus / node_cpus if node_cpus else 0.0
    return (cpu_tflops or 0.0) * share


def run_entries(job_member: int, node_member: int, amount: float) -> list[tuple[int, float, str]]:
    """(member, amount, kind) for one slice of run time worth ``amount`` credits."""
    if job_member == node_member:
        return [(job_member, 0.0, "own")]
    return [(job_member, -amount, "spend"), (node_member, amount, "earn")]


def idle_credits(idle_rate: float, hours: float, idle_gpus: int, tflops_per_gpu: float | None, lendable: bool) -> float:
    """What ``idle_gpus`` idle GPUs earn their donor over ``hours`` (nothing when the node is not lendable)."""
    if not lendable or idle_gpus <= 0:
        return 0.0
    return idle_rate * credits(hours, idle_gpus * (tflops_per_gpu or 0.0))


def decay(age_s: float, half_life_h: float) -> float:
    """Weight of usage ``age_s`` seconds old."""
    return 0.5 ** (age_s / (half_life_h * 3600))
