"""PNG charts of replays (matplotlib, the optional ``sim`` extra): queue length and utilisation over
time, and each member's share of the use next to its share of the capacity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coop.sim.engine import Outcome

MAX_POINTS = 2000  # a series is thinned to about this many points


class PlotsUnavailable(RuntimeError):
    pass


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("--plots needs matplotlib, which is not installed") from None
    return plt


Point = tuple[float, float, float, float, float]  # (t, jobs waiting, busy GPUs, lendable GPUs, GPUs asked)


def thin_by_time(series: list[tuple[float, int, int, int, int]], buckets: int = MAX_POINTS) -> list[Point]:
    """The series in ``buckets`` equal spans of time, each the time-weighted mean of the values over its
    span (a value holds from its point until the next), then the last point as it is. Thinning by point
    count would crowd the busy stretches, where events are dense, and skip the quiet ones."""
    points = [(float(t), float(a), float(b), float(c), float(d)) for t, a, b, c, d in series]
    if len(points) <= buckets + 1 or points[-1][0] <= points[0][0]:
        return points
    t0, t_end = points[0][0], points[-1][0]
    edges = [t0 + (t_end - t0) * k / buckets for k in range(buckets)] + [t_end]
    sums = [[0.0] * 4 for _ in range(buckets)]
    first = 0  # the bucket where the current span starts (spans come in time order)
    for (t, *values), (t_next, *_) in zip(points, points[1:], strict=False):
        while first < buckets - 1 and edges[first + 1] <= t:
            first += 1
        k = first
        while k < buckets and edges[k] < t_next:
            overlap = min(t_next, edges[k + 1]) - max(t, edges[k])
            if overlap > 0:
                for i, v in enumerate(values):
                    sums[k][i] += v * overlap
            k += 1
    out: list[Point] = []
    for k in range(buckets):
        span = edges[k + 1] - edges[k]
        a, b, c, d = (v / span if span > 0 else 0.0 for v in sums[k])
        out.append((edges[k], a, b, c, d))
    return [*out, points[-1]]


Curve = list[tuple[float, float]]  # (hours, value)


def curves(out: Outcome, buckets: int = MAX_POINTS) -> dict[str, Curve]:
    """What the time plots draw for one replay, thinned by time (``thin_by_time``): jobs waiting, the GPUs
    they ask for, and GPUs busy over GPUs lendable (each span's busy GPU-seconds over its lendable ones)."""
    points = thin_by_time(out.series, buckets)
    hours = [p[0] / 3600 for p in points]
    return {
        "jobs_waiting": list(zip(hours, [p[1] for p in points], strict=True)),
        "gpus_asked": list(zip(hours, [p[4] for p in points], strict=True)),
        "utilisation": list(zip(hours, [p[2] / p[3] if p[3] else 0.0 for p in points], strict=True)),
    }


def share_bars(reports: dict[str, dict[str, Any]]) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """shares.png's bars: the members, and per bar (contribution, demand, then the use under each policy)
    each member's share of the pool's total over the share window (the same for every policy). A member
    that asked for nothing has a demand and use of 0."""
    first = next(iter(reports.values()))
    members = list(first["members"])
    bars: list[tuple[str, list[float]]] = [
        ("contribution", [first["members"][m]["contributed_credit_gpu_hours"] for m in members]),
        ("demand", [first["members"][m]["demand_credit_gpu_hours"] or 0.0 for m in members]),
    ]
    for policy, report in reports.items():
        bars.append((f"use ({policy})", [report["members"][m]["used_credit_gpu_hours"] or 0.0 for m in members]))
    return members, [(label, [v / (sum(values) or 1.0) for v in values]) for label, values in bars]


def write(folder: Path, runs: dict[str, tuple[dict[str, Any], Outcome]]) -> list[Path]:
    """Write queue.png, utilisation.png and shares.png for the replays in ``runs`` (policy -> report, outcome)."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    drawn = {policy: curves(out) for policy, (_, out) in runs.items()}
    written = []
    fig, (jobs_ax, gpus_ax) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for policy, curve in drawn.items():
        jobs_ax.plot(*zip(*curve["jobs_waiting"], strict=True), label=policy, linewidth=1)
        gpus_ax.plot(*zip(*curve["gpus_asked"], strict=True), label=policy, linewidth=1)
    jobs_ax.set_ylabel("jobs waiting")
    gpus_ax.set_ylabel("GPUs they ask for")
    gpus_ax.set_xlabel("hours")
    jobs_ax.legend()
    written.append(_save(plt, fig, folder / "queue.png"))
    fig, ax = plt.subplots(figsize=(8, 4))
    for policy, curve in drawn.items():
        ax.plot(*zip(*curve["utilisation"], strict=True), label=policy, linewidth=1)
    ax.set_xlabel("hours")
    ax.set_ylabel("GPUs busy / lendable")
    ax.legend()
    written.append(_save(plt, fig, folder / "utilisation.png"))
    written.append(_shares(plt, folder, {policy: report for policy, (report, _) in runs.items()}))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _shares(plt: Any, folder: Path, reports: dict[str, dict[str, Any]]) -> Path:
    """Per member, over the share window (the same for every policy): its share of the contribution,
    of the demand, and of the use under each policy (``share_bars``)."""
    members, bars = share_bars(reports)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(bars)
    xs = list(range(len(members)))
    for i, (label, values) in enumerate(bars):
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], values, width, label=label)
    ax.set_xticks(xs, members, rotation=45 if len(members) > 10 else 0)
    window = next(iter(reports.values()))["share_window_s"]
    ax.set_title(f"shares from {window['from'] / 3600:.1f} h to {window['until'] / 3600:.1f} h", fontsize=10)
    ax.set_ylabel("share of the pool")
    ax.legend()
    return _save(plt, fig, folder / "shares.png")
