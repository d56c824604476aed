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


def _thin(series: list[tuple[float, int, int, int]]) -> list[tuple[float, int, int, int]]:
    step = max(1, len(series) // MAX_POINTS)
    return series[::step] + series[-1:]


def write(folder: Path, runs: dict[str, tuple[dict[str, Any], Outcome]]) -> list[Path]:
    """Write queue.png, utilisation.png and shares.png for the replays in ``runs`` (policy -> report, outcome)."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, column, label in (("queue", 1, "jobs waiting"), ("utilisation", 2, "GPUs busy / lendable")):
        fig, ax = plt.subplots(figsize=(8, 4))
        for policy, (_, out) in runs.items():
            points = _thin(out.series)
            xs = [p[0] / 3600 for p in points]
            ys = [p[column] / p[3] if column == 2 and p[3] else p[column] for p in points]
            ax.plot(xs, ys, label=policy, linewidth=1)
        ax.set_xlabel("hours")
        ax.set_ylabel(label)
        ax.legend()
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, ax = plt.subplots(figsize=(8, 4))
    first = next(iter(runs.values()))[0]
    members = list(first["members"])
    width = 0.8 / (len(runs) + 1)
    contrib = [first["members"][m]["contributed_credit_gpu_hours"] for m in members]
    total = sum(contrib) or 1.0
    xs = list(range(len(members)))
    ax.bar([x - 0.4 + width / 2 for x in xs], [c / total for c in contrib], width, label="contribution share")
    for i, (policy, (report, _)) in enumerate(runs.items(), start=1):
        used = [report["members"][m]["used_credit_gpu_hours"] for m in members]
        all_used = sum(used) or 1.0
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [u / all_used for u in used], width,
               label=f"usage share ({policy})")  # fmt: skip
    ax.set_xticks(xs, members, rotation=45 if len(members) > 10 else 0)
    ax.set_ylabel("share of the pool")
    ax.legend()
    fig.tight_layout()
    path = folder / "shares.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
