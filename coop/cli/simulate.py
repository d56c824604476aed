"""``coop simulate``: replay a job trace on a cluster through Coop's scheduler, offline; plus
``coop simulate generate`` (a synthetic cooperative) and ``coop simulate convert-alibaba``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from coop.cli import output
from coop.cli.output import UserError
from coop.sim import alibaba, limits, synthetic
from coop.sim.engine import Options, Outcome
from coop.sim.inputs import (
    InputError,
    SimMember,
    contribution_shares,
    read_jobs,
    read_members,
    read_nodes,
    write_jobs,
    write_nodes,
)
from coop.sim.report import simulate as run_simulation

DECLARED_HELP = "Share of jobs that declare a max_runtime (docs/simulate.md: how)."

app = typer.Typer(
    help="Replay a job trace through Coop's scheduler in simulated time; compare policies; check fairness.",
)
POLICIES = ("coop", "fifo", "both")


def _input_error(e: InputError) -> UserError:
    where = e.path + (f", line {e.line}" if e.line is not None else "")
    return UserError(f"{where}: {e.message}", field=e.field or "", fix=e.fix)


@app.callback(invoke_without_command=True)
def simulate(
    ctx: typer.Context,
    trace: Annotated[Path | None, typer.Option("--trace", help="Jobs CSV (see docs/simulate.md).")] = None,
    cluster: Annotated[Path | None, typer.Option("--cluster", help="Nodes CSV (see docs/simulate.md).")] = None,
    policy: Annotated[str, typer.Option(help="coop (fair share), fifo, or both side by side.")] = "coop",
    members: Annotated[
        Path | None, typer.Option(help="Members CSV: member, share, gpu_cap (default: share 1, no cap).")
    ] = None,
    shares: Annotated[
        str,
        typer.Option(
            help="equal: every member's fair-share weight is 1; contribution: its donated TFLOP/s "
            "(rows of --members still win)."
        ),
    ] = "equal",
    seed: Annotated[int, typer.Option(help="Seeds the run-time jitter; same input and seed, same output.")] = 0,
    jitter: Annotated[float, typer.Option(help="Sigma of a log-normal factor on each run time (0: none).")] = 0.0,
    checkpoint_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds of run time between checkpoints: a preempted job keeps its work up to "
            "the last one (0: none, it starts again).",
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write PNG charts to this folder (needs matplotlib).")] = None,
    alone: Annotated[bool, typer.Option(help="Also replay each member alone on its own nodes.")] = True,
    timing: Annotated[bool, typer.Option(help="Report the scheduler's decision time (wall clock).")] = True,
) -> None:
    """Replay --trace on --cluster and report completion times, waits, utilisation, preemptions and,
    per member, contribution, use, share ratio and the sharing incentive."""
    if ctx.invoked_subcommand is not None:
        return
    if trace is None or cluster is None:
        missing = "--trace" if trace is None else "--cluster"
        fix = "coop simulate --trace jobs.csv --cluster nodes.csv (make them with coop simulate generate)"
        raise UserError(f"{missing} is needed", field=missing, fix=fix)
    if policy not in POLICIES:
        raise UserError(f"unknown policy '{policy}'", field="--policy", fix=f"use one of {', '.join(POLICIES)}")
    if shares not in ("equal", "contribution"):
        raise UserError(f"unknown shares '{shares}'", field="--shares", fix="use equal or contribution")
    if jitter < 0:
        raise UserError("--jitter is negative", field="--jitter", fix="use 0 or a positive sigma such as 0.2")
    if plots is not None:
        from coop.sim.plots import _pyplot  # fail before the replay, not after

        try:
            _pyplot()
        except RuntimeError as e:
            raise UserError(str(e), field="--plots", fix="pip install 'coop[sim]' (or pip install matplotlib)") from e
    try:
        jobs, nodes = read_jobs(trace), read_nodes(cluster)
        settings: dict[str, SimMember] = read_members(members) if members else {}
        if shares == "contribution":
            settings = contribution_shares(nodes) | settings
    except InputError as e:
        raise _input_error(e) from None
    runs: dict[str, tuple[dict[str, Any], Outcome]] = {}
    for name in ("coop", "fifo") if policy == "both" else (policy,):
        options = Options(
            policy=name, seed=seed, jitter=jitter, checkpoint_s=checkpoint_every, series=plots is not None
        )
        runs[name] = run_simulation(jobs, nodes, options, timing=timing, alone=alone, members=settings)
    if plots is not None:
        from coop.sim.plots import write

        for path in write(plots, runs):
            output.info(f"wrote {path}")
    reports = {name: report for name, (report, _) in runs.items()}
    if as_json:
        output.print_json(reports if policy == "both" else reports[policy])
        return
    output.show(*_tables(reports))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "s":
        return output.duration(value) if value >= 1 else f"{value:.2f}s"
    if unit == "%":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _hours(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{start / 3600:,.1f} h to {end / 3600:,.1f} h"


def _tables(reports: dict[str, dict[str, Any]]) -> list[Any]:
    names = list(reports)
    rows: list[list[str]] = []

    def row(label: str, get: Any, unit: str = "") -> None:
        rows.append([label, *(_fmt(get(reports[n]), unit) for n in names)])

    row("jobs (completed / failed / refused / unfinished)",
        lambda r: f"{r['completed']} / {r['failed']} / {r['refused']} / {r['unfinished']}")  # fmt: skip
    if any(r["refused"] for r in reports.values()):
        row("refused, by what no node has",
            lambda r: ", ".join(f"{why} {n}" for why, n in r["refused_by_reason"].items()))  # fmt: skip
    row("GPUs", lambda r: r["gpus"])
    row("average JCT", lambda r: r["jct_s"]["mean"], "s")
    row("p50 JCT", lambda r: r["jct_s"]["p50"], "s")
    row("p99 JCT", lambda r: r["jct_s"]["p99"], "s")
    for p in ("p50", "p90", "p99"):
        row(f"{p} wait", lambda r, p=p: r["wait_s"][p], "s")
    row("GPU utilisation", lambda r: r["utilisation"], "%")
    row("GPU utilisation while a job waits", lambda r: r["utilisation_while_waiting"], "%")
    row("  measured over the time a job waits", lambda r: r["waiting_s"], "s")
    row("  between its first and last moment", lambda r: _hours(r["waiting_from_s"], r["waiting_until_s"]))
    row("last start", lambda r: r["last_start_s"], "s")
    row("makespan", lambda r: r["makespan_s"], "s")
    kinds = sorted({k for r in reports.values() for k in r["preemptions"]})
    for kind in kinds:
        row(f"preemptions: {kind} (GPU-hours lost)",
            lambda r, k=kind: "{} ({:.1f})".format(r["preemptions"][k]["count"], r["preemptions"][k]["gpu_hours_lost"])
            if k in r["preemptions"] else "0")  # fmt: skip
    if any(r["gangs"]["jobs"] for r in reports.values()):
        row("gang jobs (over several nodes): started / completed of all",
            lambda r: "{started} / {completed} of {jobs}".format(**r["gangs"]))  # fmt: skip
        row("  mean wait / mean JCT",
            lambda r: f"{_fmt(r['gangs']['wait_s_mean'], 's')} / {_fmt(r['gangs']['jct_s_mean'], 's')}")  # fmt: skip
        row("  preemptions (each stops the whole gang)",
            lambda r: ", ".join(f"{k} {n}" for k, n in r["gangs"]["preemptions"].items()) or "0")  # fmt: skip
    row("preemptions per job: mean / max / jobs preempted",
        lambda r: "{} / {} / {}".format(_fmt(r["preemptions_per_job"]["mean"]), r["preemptions_per_job"]["max"],
                                        r["preemptions_per_job"]["jobs_preempted"]))  # fmt: skip
    if "decision_ms" in reports[names[0]]:
        row("decision time per event p50 / p99",
            lambda r: f"{r['decision_ms']['p50']:.2f} / {r['decision_ms']['p99']:.2f} ms")  # fmt: skip
    tables = [output.table(["", *names], rows, title="Replay")]
    widths = sorted({w for r in reports.values() for w in r["by_width"]}, key=int)

    def width(w: str) -> str:  # "16 (2 nodes)": jobs of that width run as gangs
        spans = sorted({n for r in reports.values() for n in r["by_width"][w]["nodes"]} - {1})
        return f"{w} ({'/'.join(map(str, spans))} nodes)" if spans else w

    width_rows = [
        [
            width(w),
            str(reports[names[0]]["by_width"][w]["jobs"]),
            *(_fmt(reports[n]["by_width"][w]["wait_s_mean"], "s") for n in names),
            *(_fmt(reports[n]["by_width"][w]["jct_s_mean"], "s") for n in names),
        ]
        for w in widths
    ]
    tables.append(
        output.table(
            ["GPUs", "jobs", *(f"mean wait ({n})" for n in names), *(f"mean JCT ({n})" for n in names)],
            width_rows,
            title="By job width (completed jobs)",
        )
    )
    tables += _refused_tables(reports[names[0]])  # refusals depend on the input only: one table for all
    for name, report in reports.items():
        window = report["share_window_s"]
        member_rows = [
            [
                m,
                f"{e['jobs']} ({e['refused']})" if e["refused"] else str(e["jobs"]),
                _fmt(e["contributed_credit_gpu_hours"]),
                _fmt(e["demand_credit_gpu_hours"]),
                _fmt(e["used_credit_gpu_hours"]),
                _fmt(e["share_ratio"]),
                {True: "yes", False: "no", None: "-"}[e["demand_exceeds_contribution"]],
                _fmt(e["balance"]),
                _fmt(e["jct_pool_s"], "s"),
                _fmt(e.get("jct_pool_same_jobs_s"), "s"),
                _fmt(e.get("jct_alone_s"), "s"),
                _fmt(e.get("sharing_incentive")),
                _fmt(e["pool_only_done"]) if "pool_only_done" in e else "",
            ]
            for m, e in report["members"].items()
        ]
        tables.append(
            output.table(
                [
                    "member",
                    "jobs (refused)",
                    "contributed",
                    "asked",
                    "used",
                    "share ratio",
                    "asks more than it gives",
                    "balance",
                    "JCT",
                    "JCT (jobs it can run alone)",
                    "JCT alone",
                    "incentive",
                    "done only in the pool",
                ],  # fmt: skip
                member_rows,
                title=f"Members ({name}), {_hours(window['from'], window['until'])}: credit-weighted GPU-hours; "
                "share ratio = share of use / share of contribution; incentive = JCT alone / JCT in the pool",
            )
        )
    return tables


MAX_REFUSALS = 10  # messages listed under the refused jobs' table (--json has them all)


def _refused_tables(report: dict[str, Any]) -> list[Any]:
    """Per member, its refused jobs by the requirement no node meets; then the most frequent messages."""
    if not report["refused"]:
        return []
    reasons = sorted({why for e in report["members"].values() for why in e["refused_by_reason"]})
    rows = [
        [m, str(e["refused"]), *(str(e["refused_by_reason"].get(why, "-")) for why in reasons)]
        for m, e in report["members"].items()
        if e["refused"]
    ]
    by_member = output.table(["member", "refused", *reasons], rows,
                             title="Refused jobs, by what no node has")  # fmt: skip
    messages = list(report["refusals"].items())
    shown = [[why, str(n)] for why, n in messages[:MAX_REFUSALS]]
    if len(messages) > MAX_REFUSALS:
        shown.append([f"({len(messages) - MAX_REFUSALS} other messages: --json lists them)", ""])
    return [by_member, output.table(["why (as the coordinator refuses it at submit)", "jobs"], shown)]


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Folder for jobs.csv and nodes.csv.")],
    jobs: Annotated[int, typer.Option(min=1, help="Number of jobs.")] = 1000,
    members: Annotated[int, typer.Option(min=1, help="Number of members.")] = 6,
    gpus: Annotated[int, typer.Option(min=1, help="About this many GPUs in the pool.")] = 64,
    load: Annotated[float, typer.Option(min=0.01, help="Work offered over capacity (above 1: overloaded).")] = 1.5,
    offline: Annotated[float, typer.Option(min=0, max=1, help="Share of 1-GPU machines owners take back.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    declared: Annotated[float, typer.Option(min=0, max=1, help=DECLARED_HELP)] = 0.8,
    wide: Annotated[
        float,
        typer.Option(
            min=0, max=1, help="Share of jobs wider than the widest node (1.5x to 16x): gangs over several nodes."
        ),
    ] = 0.0,
) -> None:
    """Write a synthetic cooperative: unequal donors, bursts, heavy-tailed jobs, donors going offline."""
    job_list, node_list = synthetic.generate(jobs, members, gpus, load, seed, offline, declared, wide)
    out.mkdir(parents=True, exist_ok=True)
    write_jobs(job_list, out / "jobs.csv")
    write_nodes(node_list, out / "nodes.csv")
    output.say(f"wrote {out / 'jobs.csv'} ({len(job_list)} jobs) and {out / 'nodes.csv'} "
               f"({len(node_list)} nodes, {sum(n.gpus for n in node_list)} GPUs)")  # fmt: skip


@app.command("convert-alibaba")
def convert_alibaba(
    trace_dir: Annotated[Path, typer.Argument(help="Folder of the v2023 trace (openb_*.csv).")],
    out: Annotated[Path, typer.Option(help="Folder for jobs.csv and nodes.csv.")],
    members: Annotated[int, typer.Option(min=1, help="Number of members (see docs/simulate.md).")] = 8,
    node_every: Annotated[int, typer.Option(min=1, help="Keep every N-th node: a smaller pool.")] = 1,
    time_scale: Annotated[float, typer.Option(min=0.001, help="Divide submit times by this.")] = 1.0,
    tasks: Annotated[str, typer.Option(help="Task list: default or gpuspec33 (GPU-model constraints).")] = "default",
    since: Annotated[float, typer.Option(min=0, help="Leave out tasks created before this trace second.")] = 0.0,
    declared: Annotated[float, typer.Option(min=0, max=1, help=DECLARED_HELP + " The trace holds none.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed (which jobs declare, and their margins).")] = 0,
    assign: Annotated[
        str,
        typer.Option(
            help="work: each task to the member furthest below its share of the GPU-time asked so far; "
            "count: by a hash of the task name, shares of the task count (docs/simulate.md)."
        ),
    ] = "work",
) -> None:
    """Convert the Alibaba GPU trace to jobs.csv and nodes.csv with the documented member rule."""
    files = {"default": alibaba.TASK_FILE, "gpuspec33": "openb_pod_list_gpuspec33.csv"}
    if tasks not in files:
        raise UserError(f"unknown task list '{tasks}'", field="--tasks", fix=f"use one of {', '.join(files)}")
    if assign not in alibaba.ASSIGN_RULES:
        raise UserError(f"unknown rule '{assign}'", field="--assign", fix=f"use {' or '.join(alibaba.ASSIGN_RULES)}")
    try:
        conv = alibaba.convert(trace_dir, members, node_every, time_scale, files[tasks], since, assign)
    except InputError as e:
        raise _input_error(e) from None
    out.mkdir(parents=True, exist_ok=True)
    write_jobs(limits.declare_limits(conv.jobs, conv.nodes, declared, seed), out / "jobs.csv")
    write_nodes(conv.nodes, out / "nodes.csv")
    left = ", ".join(f"{n} {why}" for why, n in conv.skipped.items()) or "none"
    output.say(f"wrote {out / 'jobs.csv'} ({len(conv.jobs)} jobs; left out: {left}) and {out / 'nodes.csv'} "
               f"({len(conv.nodes)} nodes, {sum(n.gpus for n in conv.nodes)} GPUs)")  # fmt: skip
