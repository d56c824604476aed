"""Issue 16's targets, Coop beside FIFO in one run per trace: mean JCT ratio, p99 wait, mean wait of
4- and 8-GPU jobs, the lowest sharing incentive and the share ratios of members whose demand exceeds
their contribution. Not a test: figures only.

Traces: the synthetic generator (``--jobs 20000 --members 8 --gpus 256 --load 1.5``, seeds 1-3) and the
Alibaba conversion of docs/simulate.md (``--node-every 16 --since 9400000 --time-scale 400``, no declared
limits), both with contribution shares and a checkpoint every 1800 s.

``--bound`` adds a clairvoyant reference: one queue ordered by each job's *true* run time, shortest
first, no fairness (every node owned by one member, each job declaring exactly what it runs, so no
limit stops it and no job is stopped for service order), with Coop's holds for wide jobs, which with
exact lengths are EASY backfilling: a wide job that waited an hour holds the node that frees soonest
and only jobs that end before then may use it. It says how far ordering alone can take a trace: a
reference, not a proof (shortest first is optimal on one machine for jobs that arrive together, and
close to it here), which only stopping running jobs could beat.

    python bench/sim_targets.py [--traces seed1,seed2,seed3,alibaba] [--alone] [--bound]
                                [--set OPTION=VALUE] [--alibaba ../shared/traces/alibaba-gpu-v2023]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from coop.sim.alibaba import convert
from coop.sim.engine import Options
from coop.sim.inputs import SimJob, SimMember, SimNode, contribution_shares, spread
from coop.sim.report import simulate
from coop.sim.synthetic import generate

HERE = Path(__file__).resolve().parent
TRACES = ("seed1", "seed2", "seed3", "alibaba")


def trace(name: str, alibaba: Path) -> tuple[list[SimJob], list[SimNode]]:
    if name.startswith("seed"):
        return generate(jobs=20_000, members=8, gpus=256, load=1.5, seed=int(name[4:]))
    conversion = convert(alibaba, members=8, node_every=16, since=9_400_000, time_scale=400)
    return conversion.jobs, conversion.nodes


def bound_inputs(jobs: list[SimJob], nodes: list[SimNode]) -> tuple[list[SimJob], list[SimNode]]:
    """The clairvoyant reference: one member owns everything and each job declares its exact run time
    on the cluster's slowest card, so its member's queue is shortest first and no limit ever stops
    it; declared limits also keep service preemption off."""
    slowest = min(n.tflops for n in nodes)
    jobs = [spread(j, nodes) for j in jobs]
    one = [replace(j, member="all", max_runtime=j.duration * 100 / slowest + 1) for j in jobs]
    return one, [replace(n, member="all") for n in nodes]


def figures(report: dict[str, Any]) -> dict[str, Any]:
    width = report["by_width"]
    members = report["members"].values()
    over = [m["share_ratio"] for m in members if m.get("demand_exceeds_contribution") and m["share_ratio"]]
    incentives = [m["sharing_incentive"] for m in members if m.get("sharing_incentive")]
    return {
        "jct_h": report["jct_s"]["mean"] / 3600,
        "p99_wait_h": report["wait_s"]["p99"] / 3600,
        "wait4_h": (width.get("4", {}).get("wait_s_mean") or 0) / 3600,
        "wait8_h": (width.get("8", {}).get("wait_s_mean") or 0) / 3600,
        "share_ratios": (min(over), max(over)) if over else None,
        "incentive": min(incentives) if incentives else None,
        "stops": sum(p["count"] for p in report["preemptions"].values()),
        "lost_h": sum(p["gpu_hours_lost"] for p in report["preemptions"].values()),
    }


def run(name: str, jobs: list[SimJob], nodes: list[SimNode], args: argparse.Namespace) -> None:
    shares: dict[str, SimMember] = contribution_shares(nodes)
    rows = {}
    for policy in ("fifo", "coop"):
        started = time.perf_counter()
        extra = args.set if policy == "coop" else {}
        options = Options(policy=policy, seed=1, checkpoint_s=1800, series=False, **extra)
        report, _ = simulate(jobs, nodes, options, timing=False, alone=args.alone, members=shares)
        rows[policy] = figures(report) | {"s": time.perf_counter() - started}
    if args.bound:
        started = time.perf_counter()
        one, owned = bound_inputs(jobs, nodes)
        report, _ = simulate(one, owned, Options(policy="coop", seed=1, series=False), timing=False, alone=False)
        rows["bound"] = figures(report) | {"s": time.perf_counter() - started}
    fifo = rows["fifo"]
    table = Table(title=f"{name}: {len(jobs)} jobs, {sum(n.gpus for n in nodes)} GPUs", title_justify="left")
    for column in ("policy", "mean JCT", "x FIFO", "p99 wait", "4-GPU wait", "8-GPU wait", "share ratios*",
                   "lowest incentive", "stops (GPU-h lost)", "replay"):  # fmt: skip
        table.add_column(column, justify="left" if column == "policy" else "right")
    for policy, f in rows.items():
        ratios, incentive = f["share_ratios"], f["incentive"]
        table.add_row(
            policy, f"{f['jct_h']:.2f} h", f"{f['jct_h'] / fifo['jct_h']:.2f}", f"{f['p99_wait_h']:.1f} h",
            f"{f['wait4_h']:.1f} h", f"{f['wait8_h']:.1f} h",
            "-" if ratios is None else f"{ratios[0]:.2f}-{ratios[1]:.2f}",
            "-" if incentive is None else f"{incentive:.2f}", f"{f['stops']:,} ({f['lost_h']:,.0f})", f"{f['s']:.0f} s",
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    console.print("* of the members whose demand exceeds their contribution; incentive needs --alone")
    coop = rows["coop"]
    checks = [
        ("mean JCT <= 0.6x FIFO", coop["jct_h"] <= 0.6 * fifo["jct_h"]),
        ("p99 wait <= FIFO", coop["p99_wait_h"] <= fifo["p99_wait_h"]),
        ("4-GPU wait <= FIFO", coop["wait4_h"] <= fifo["wait4_h"]),
        ("8-GPU wait <= FIFO", coop["wait8_h"] <= fifo["wait8_h"]),
        ("share ratios in 0.9-1.1", coop["share_ratios"] is None or coop["share_ratios"][0] >= 0.9
         and coop["share_ratios"][1] <= 1.1),
    ]  # fmt: skip
    if args.alone:
        checks.append(("lowest incentive >= 1.0", (coop["incentive"] or 0) >= 1.0))
    console.print("Coop's targets:")
    for what, ok in checks:
        console.print(f"  {what}: {'met' if ok else 'NOT met'}")
    console.print()


def option(text: str) -> tuple[str, Any]:
    """``wide_hold_after_s=7200`` -> ("wide_hold_after_s", 7200.0), typed as the Option's default."""
    name, _, value = text.partition("=")
    default = getattr(Options, name, None)
    if not isinstance(default, (bool, int, float)) or not value:
        raise SystemExit(f"--set {text}: write NAME=VALUE with NAME a number or flag of coop.sim.engine.Options")
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    return name, type(default)(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default="seed1,seed2,seed3,alibaba")
    parser.add_argument("--alone", action="store_true", help="replay members alone: the sharing incentive")
    parser.add_argument("--bound", action="store_true", help="add the clairvoyant shortest-first reference")
    parser.add_argument("--alibaba", type=Path, default=HERE.parent.parent / "shared/traces/alibaba-gpu-v2023")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an engine Option for Coop's replay, e.g. wide_hold_after_s=7200 (repeatable)",
    )
    args = parser.parse_args()
    args.set = dict(option(text) for text in args.set)
    names = args.traces.split(",")
    if unknown := [n for n in names if n not in TRACES]:
        raise SystemExit(f"--traces: unknown {', '.join(unknown)}; choose from {', '.join(TRACES)}")
    if "alibaba" in names and not args.alibaba.is_dir():
        raise SystemExit(f"--alibaba: {args.alibaba} is not a folder; give the Alibaba trace's (alibaba-gpu-v2023)")
    for name in names:
        jobs, nodes = trace(name, args.alibaba)
        run(name, jobs, nodes, args)


if __name__ == "__main__":
    main()
