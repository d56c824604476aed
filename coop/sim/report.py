"""Statistics of a replay: job completion and waiting times, utilisation, preemptions, and per member
what it gave, what it used, and whether it fared better in the pool than alone (sharing incentive)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coop.scheduler.credits import credits
from coop.sim.engine import Options, Outcome, replay
from coop.sim.inputs import SimJob, SimMember, SimNode


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a real job's)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def available_s(node: SimNode, end: float) -> float:
    """Seconds in [0, end] the node was lent to the pool (outside its owner's intervals)."""
    away = sum(max(0.0, min(b, end) - max(a, 0.0)) for a, b in node.offline)
    return max(0.0, end - away)


def _contributed(out: Outcome, end: float) -> dict[str, float]:
    given = dict.fromkeys(out.members, 0.0)
    for n in out.nodes:
        given[n.member] += credits(available_s(n, end) / 3600, n.gpus * n.tflops)
    return given


def summarise(out: Outcome, alone: dict[str, Outcome] | None = None, timing: bool = True) -> dict[str, Any]:
    done = {jid: o for jid, o in out.outcome.items() if o.finish is not None and not o.failed}
    failed = sum(o.failed for o in out.outcome.values())
    by_id = {j.id: j for j in out.jobs}
    jct = {jid: o.finish - by_id[jid].submit for jid, o in done.items()}  # type: ignore[operator]
    wait = [o.first_start - by_id[jid].submit for jid, o in done.items()]  # type: ignore[operator]
    end = out.end
    lendable_gpu_s = sum(n.gpus * available_s(n, end) for n in out.nodes)
    until = out.contended_until
    lendable_contended = sum(n.gpus * available_s(n, until) for n in out.nodes)
    # shares are judged while jobs wait (until the last one starts): after that the pool drains, and
    # whoever runs the longest jobs uses the most, which says nothing about how the pool shares
    contributed = _contributed(out, until)
    total_contrib, total_used = sum(contributed.values()), sum(out.used_credits_contended.values())
    jct_values = list(jct.values())
    report: dict[str, Any] = {
        "jobs": len(out.jobs),
        "completed": len(done),
        "refused": len(out.refused),
        "failed": failed,  # an attempt ran past the job's max_runtime
        "unfinished": len(out.jobs) - len(done) - failed - len(out.refused),
        "gpus": sum(n.gpus for n in out.nodes),
        "makespan_s": end,
        "jct_s": {"mean": _mean(jct_values), "p50": percentile(jct_values, 50), "p99": percentile(jct_values, 99)},
        "wait_s": {"p50": percentile(wait, 50), "p90": percentile(wait, 90), "p99": percentile(wait, 99)},
        "utilisation": out.busy_gpu_s / lendable_gpu_s if lendable_gpu_s else None,
        "utilisation_while_waiting": out.busy_gpu_s_contended / lendable_contended if lendable_contended else None,
        "contended_until_s": until,
        "preemptions": {
            kind: {"count": out.preemptions[kind], "gpu_hours_lost": out.lost_gpu_s.get(kind, 0.0) / 3600}
            for kind in sorted(out.preemptions)
        },
        "members": {},
    }
    if timing:
        ms = [s * 1000 for s in out.decision_s]
        report["decision_ms"] = {"cycles": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99)}
    for name in out.members:
        mine = [jid for jid in jct if by_id[jid].member == name]
        used = out.used_credits_contended.get(name, 0.0)
        contrib = contributed[name]
        ratio = (used / total_used) / (contrib / total_contrib) if contrib and total_used and total_contrib else None
        entry: dict[str, Any] = {
            "jobs": sum(1 for j in out.jobs if j.member == name),
            "contributed_credit_gpu_hours": contrib,
            "used_credit_gpu_hours": used,
            "used_credit_gpu_hours_all": out.used_credits.get(name, 0.0),
            "share_ratio": ratio,
            "balance": out.balance.get(name, 0.0),
            "jct_pool_s": _mean([jct[j] for j in mine]),
        }
        if alone is not None:
            entry.update(_incentive(jct, alone.get(name), name, by_id))
        report["members"][name] = entry
    return report


def _incentive(jct: dict[int, float], alone: Outcome | None, name: str, by_id: dict[int, SimJob]) -> dict[str, Any]:
    """Average JCT of the member's jobs that could run on its own nodes: in the pool and alone."""
    done_in_pool = [jid for jid in jct if by_id[jid].member == name]
    if alone is None:  # no nodes of its own: alone, nothing runs
        return {"jobs_alone": 0, "jct_alone_s": None, "jct_pool_same_jobs_s": None, "sharing_incentive": None,
                "pool_only_done": len(done_in_pool)}  # fmt: skip
    own_jct = {
        jid: o.finish - by_id[jid].submit for jid, o in alone.outcome.items() if o.finish is not None and not o.failed
    }
    both = [jid for jid in own_jct if jid in jct]
    pool, solo = _mean([jct[j] for j in both]), _mean([own_jct[j] for j in both])
    return {
        "jobs_alone": len(both),
        "jct_alone_s": solo,
        "jct_pool_same_jobs_s": pool,
        "sharing_incentive": solo / pool if solo is not None and pool else None,  # > 1: the pool is faster
        # jobs bigger than any node it owns: alone they never run, so the incentive leaves them out
        "pool_only_done": sum(1 for jid in done_in_pool if jid in alone.refused),
    }


def alone_runs(
    jobs: list[SimJob], nodes: list[SimNode], options: Options, members: dict[str, SimMember] | None = None
) -> dict[str, Outcome]:
    """Each member's own jobs replayed on its own nodes only (members without nodes are left out)."""
    out = {}
    quiet = replace(options, series=False)
    for name in sorted({n.member for n in nodes}):
        mine = [j for j in jobs if j.member == name]
        if mine:
            own_nodes = [n for n in nodes if n.member == name]
            renumbered = [replace(j, id=i) for i, j in enumerate(mine, start=1)]
            result = replay(renumbered, own_nodes, quiet, members)
            back = {i: j.id for i, j in enumerate(mine, start=1)}
            result.outcome = {back[i]: o for i, o in result.outcome.items()}
            result.refused = {back[i]: why for i, why in result.refused.items()}
            result.jobs = mine
            out[name] = result
    return out


def simulate(
    jobs: list[SimJob],
    nodes: list[SimNode],
    options: Options,
    timing: bool = True,
    alone: bool = True,
    members: dict[str, SimMember] | None = None,
) -> tuple[dict[str, Any], Outcome]:
    """Replay in the pool (and, with ``alone``, each member on its own nodes) and summarise."""
    out = replay(jobs, nodes, options, members)
    report = summarise(out, alone_runs(jobs, nodes, options, members) if alone else None, timing=timing)
    report["policy"] = options.policy
    report["seed"] = options.seed
    return report, out
