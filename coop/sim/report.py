"""Statistics of a replay: job completion and waiting times, utilisation, preemptions, and per member
what it gave, what it used, and whether it fared better in the pool than alone (sharing incentive)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from coop.scheduler.credits import credits
from coop.sim.engine import JobOutcome, Options, Outcome, replay
from coop.sim.inputs import SimJob, SimMember, SimNode, ideal_last_start, spread


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every figure is a real job's)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def available_s(node: SimNode, end: float, start: float = 0.0) -> float:
    """Seconds in [start, end] the node was lent to the pool (outside its owner's intervals)."""
    away = sum(max(0.0, min(b, end) - max(a, start)) for a, b in node.offline)
    return max(0.0, end - start - away)


def share_window(out: Outcome) -> tuple[float, float]:
    """Where shares are judged: from the first submit to the trace's ideal last start (``ideal_last_start``:
    the last start on one machine holding the whole pool, in submit order). It depends on the trace and the
    cluster only, so every policy is judged over the same window and a member's contribution is the
    same in each column. After it the pool mostly drains, and whoever runs the longest jobs uses the
    most, which says nothing about how the pool shares."""
    accepted = [j for j in out.jobs if j.id not in out.refused]
    start = min((j.submit for j in accepted), default=0.0)
    return start, max(start, ideal_last_start(accepted, out.nodes))


def _contributed(out: Outcome, start: float, end: float) -> dict[str, float]:
    given = dict.fromkeys(out.members, 0.0)
    for n in out.nodes:
        given[n.member] += credits(available_s(n, end, start) / 3600, n.gpus * n.tflops)
    return given


def _used(out: Outcome, start: float, end: float) -> dict[str, float]:
    """Credit-weighted GPU-hours each member's runs held within [start, end], lost work included."""
    used = dict.fromkeys(out.members, 0.0)
    for member, begin, stop, tflops, _ in out.spans:
        held = min(stop, end) - max(begin, start)
        if held > 0:
            used[member] += credits(held / 3600, tflops)
    return used


def _demand(out: Outcome, start: float, end: float) -> tuple[dict[str, float], dict[str, float]]:
    """Credit-weighted GPU-hours each member asks for (GPUs x duration on a 100 TFLOP/s GPU, the same
    credits on any card): within [start, end], each job counted for what it could run there had it
    started at its submit on the pool's average card; and in all. Refused jobs ask for nothing."""
    gpus = sum(n.gpus for n in out.nodes)
    speed = sum(n.gpus * n.tflops for n in out.nodes) / gpus / 100.0 if gpus else 0.0
    window, total = dict.fromkeys(out.members, 0.0), dict.fromkeys(out.members, 0.0)
    for j in out.jobs:
        if j.id in out.refused:
            continue
        asked = credits(j.duration / 3600, j.total_gpus * 100.0)
        total[j.member] += asked
        run_s = j.duration / speed if speed else math.inf
        could = min(end, j.submit + run_s) - max(start, j.submit)
        if could > 0:
            window[j.member] += asked * min(1.0, could / run_s)
    return window, total


def _by_width(out: Outcome, done: dict[int, JobOutcome]) -> dict[str, dict[str, Any]]:
    """Per job width (GPUs in all): jobs, the node counts they span (above 1: gangs), completed, and the
    mean wait and JCT of the completed ones."""
    by_id = {j.id: j for j in out.jobs}
    rows: dict[int, dict[str, Any]] = {}
    waits: dict[int, list[float]] = {}
    jcts: dict[int, list[float]] = {}
    for j in out.jobs:
        row = rows.setdefault(j.gpus, {"jobs": 0, "nodes": [], "completed": 0})
        row["jobs"] += 1
        if (j.nodes or 1) not in row["nodes"]:
            row["nodes"] = sorted([*row["nodes"], j.nodes or 1])
    for jid, o in done.items():
        job = by_id[jid]
        rows[job.gpus]["completed"] += 1
        waits.setdefault(job.gpus, []).append(o.first_start - job.submit)  # type: ignore[operator]
        jcts.setdefault(job.gpus, []).append(o.finish - job.submit)  # type: ignore[operator]
    return {
        str(width): row | {"wait_s_mean": _mean(waits.get(width, [])), "jct_s_mean": _mean(jcts.get(width, []))}
        for width, row in sorted(rows.items())
    }


def _gangs(out: Outcome, done: dict[int, JobOutcome]) -> dict[str, Any]:
    """Jobs wider than one node, not refused: how many, how many started (all ranks at once) and
    completed, the mean wait and JCT of the completed ones, and their stops by kind (one per gang)."""
    gangs = [j for j in out.jobs if (j.nodes or 1) > 1 and j.id not in out.refused]
    finished = [(j, done[j.id]) for j in gangs if j.id in done]
    return {
        "jobs": len(gangs),
        "gpus": sum(j.total_gpus for j in gangs),
        "started": sum(1 for j in gangs if out.outcome[j.id].first_start is not None),
        "completed": len(finished),
        "wait_s_mean": _mean([o.first_start - j.submit for j, o in finished]),  # type: ignore[operator]
        "jct_s_mean": _mean([o.finish - j.submit for j, o in finished]),  # type: ignore[operator]
        "preemptions": dict(sorted(out.gang_preemptions.items())),
        "jobs_preempted": sum(1 for j in gangs if out.outcome[j.id].preemptions),
    }


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summarise(out: Outcome, alone: dict[str, Outcome] | None = None, timing: bool = True) -> dict[str, Any]:
    done = {jid: o for jid, o in out.outcome.items() if o.finish is not None and not o.failed}
    failed = sum(o.failed for o in out.outcome.values())
    by_id = {j.id: j for j in out.jobs}
    jct = {jid: o.finish - by_id[jid].submit for jid, o in done.items()}  # type: ignore[operator]
    wait = [o.first_start - by_id[jid].submit for jid, o in done.items()]  # type: ignore[operator]
    end = out.end
    lendable_gpu_s = sum(n.gpus * available_s(n, end) for n in out.nodes)
    start, until = share_window(out)
    contributed = _contributed(out, start, until)
    used_in_window = _used(out, start, until)
    demand, demand_all = _demand(out, start, until)
    total_contrib, total_used = sum(contributed.values()), sum(used_in_window.values())
    jct_values = list(jct.values())
    accepted = [o for jid, o in out.outcome.items() if jid not in out.refused]
    stops = [o.preemptions for o in accepted]
    report: dict[str, Any] = {
        "jobs": len(out.jobs),
        "completed": len(done),
        "refused": len(out.refused),
        "refused_by_reason": _count(out.refused_reason.values()),  # the requirement no node meets
        "refusals": _count(out.refused.values()),  # the message, as the coordinator words it at submit
        "failed": failed,  # an attempt ran past the job's max_runtime
        "unfinished": len(out.jobs) - len(done) - failed - len(out.refused),
        "gpus": sum(n.gpus for n in out.nodes),
        "makespan_s": end,
        "jct_s": {"mean": _mean(jct_values), "p50": percentile(jct_values, 50), "p99": percentile(jct_values, 99)},
        "wait_s": {"p50": percentile(wait, 50), "p90": percentile(wait, 90), "p99": percentile(wait, 99)},
        "utilisation": out.busy_gpu_s / lendable_gpu_s if lendable_gpu_s else None,
        # over the time at least one job waited (however it is spread), not from 0
        "utilisation_while_waiting": (
            out.busy_gpu_s_waiting / out.lendable_gpu_s_waiting if out.lendable_gpu_s_waiting else None
        ),
        "waiting_s": out.waiting_s,
        "waiting_from_s": out.waiting_from,
        "waiting_until_s": out.waiting_until,
        "last_start_s": out.last_start,
        "share_window_s": {"from": start, "until": until},
        "preemptions": {
            kind: {"count": out.preemptions[kind], "gpu_hours_lost": out.lost_gpu_s.get(kind, 0.0) / 3600}
            for kind in sorted(out.preemptions)
        },
        "preemptions_per_job": {
            "mean": _mean([float(n) for n in stops]),
            "max": max(stops, default=0),
            "jobs_preempted": sum(1 for n in stops if n),
        },
        "by_width": _by_width(out, done),
        "gangs": _gangs(out, done),
        "members": {},
    }
    if timing:
        ms = [s * 1000 for s in out.decision_s]
        report["decision_ms"] = {"cycles": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99)}
    submitted = {name: 0 for name in out.members}
    for j in out.jobs:
        submitted[j.member] += 1
    refused = _count(by_id[jid].member for jid in out.refused)
    refused_by_reason: dict[str, dict[str, int]] = {}
    for jid in sorted(out.refused):
        reasons = refused_by_reason.setdefault(by_id[jid].member, {})
        why = out.refused_reason.get(jid, "")
        reasons[why] = reasons.get(why, 0) + 1
    for name in out.members:
        mine = [jid for jid in jct if by_id[jid].member == name]
        asks = submitted[name] > 0  # a member that submitted nothing: its use and ratio are "-", not 0
        used = used_in_window[name] if asks else None
        contrib = contributed[name]
        ratio = (
            (used / total_used) / (contrib / total_contrib)
            if used is not None and contrib and total_used and total_contrib
            else None
        )
        entry: dict[str, Any] = {
            "jobs": submitted[name],
            "refused": refused.get(name, 0),
            "refused_by_reason": dict(sorted(refused_by_reason.get(name, {}).items())),
            "contributed_credit_gpu_hours": contrib,
            "demand_credit_gpu_hours": demand[name] if asks else None,
            "demand_credit_gpu_hours_all": demand_all[name] if asks else None,
            "demand_exceeds_contribution": demand[name] > contrib if asks else None,
            "used_credit_gpu_hours": used,
            "used_credit_gpu_hours_all": out.used_credits.get(name, 0.0) if asks else None,
            "share_ratio": ratio,
            "balance": out.balance.get(name, 0.0),
            "jct_pool_s": _mean([jct[j] for j in mine]),
        }
        if alone is not None:
            entry.update(_incentive(jct, alone.get(name), name, by_id))
            if not asks:  # nothing to count, in the pool or alone
                entry.update(jobs_alone=None, pool_only_done=None)
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
    """Each member's own jobs replayed on its own nodes only (members without nodes are left out). Each
    job keeps the shape it has in the pool (``spread`` over the whole cluster): a job that runs on one
    node in the pool never becomes a gang over the member's smaller nodes, which would compare two
    different jobs; alone it runs as it is, or is refused there."""
    out = {}
    quiet = replace(options, series=False)
    jobs = [spread(j, nodes) for j in jobs]
    for name in sorted({n.member for n in nodes}):
        mine = [j for j in jobs if j.member == name]
        if mine:
            own_nodes = [n for n in nodes if n.member == name]
            renumbered = [replace(j, id=i) for i, j in enumerate(mine, start=1)]
            result = replay(renumbered, own_nodes, quiet, members)
            back = {i: j.id for i, j in enumerate(mine, start=1)}
            result.outcome = {back[i]: o for i, o in result.outcome.items()}
            result.refused = {back[i]: why for i, why in result.refused.items()}
            result.refused_reason = {back[i]: why for i, why in result.refused_reason.items()}
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
