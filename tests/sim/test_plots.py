"""What --plots draws: curves thinned by time (not by point count), the queue in GPUs as well as jobs,
and demand beside contribution and use on shares.png. No matplotlib needed: the data only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coop.sim.engine import Options, Outcome
from coop.sim.inputs import read_jobs, read_nodes
from coop.sim.plots import curves, share_bars
from coop.sim.report import simulate
from tests.sim.helpers import JOBS_HEADER, NODES_HEADER, write


def test_curves_are_thinned_by_time_so_a_quiet_stretch_counts_as_much_as_a_busy_one() -> None:
    # 10,000 events in the first hour, all 8 GPUs busy and 3 jobs asking 12 GPUs waiting; then 9 quiet
    # hours with 2 of 8 busy and nothing waiting, in 2 events
    busy = [(i * 0.36, 3, 8, 8, 12) for i in range(10_000)]
    out = Outcome([], [], [], {}, {})
    out.series = [*busy, (3600.0, 0, 2, 8, 0), (36000.0, 0, 2, 8, 0)]
    drawn = curves(out, buckets=100)
    hours = [h for h, _ in drawn["utilisation"]]
    assert len(hours) == 101 and hours[:-1] == pytest.approx([0.1 * k for k in range(100)])  # equal spans
    # a tenth of the spans is the busy hour, as a tenth of the time is: thinning by count would give it
    # nearly every point
    assert sum(1 for _, u in drawn["utilisation"][:-1] if u == pytest.approx(1.0)) == 10
    assert sum(1 for _, u in drawn["utilisation"][:-1] if u == pytest.approx(0.25)) == 90
    # the time-weighted mean is kept: (1 h x 8 + 9 h x 2) / (10 h x 8)
    assert sum(u for _, u in drawn["utilisation"][:-1]) / 100 == pytest.approx((8 + 18) / 80)
    assert [v for _, v in drawn["jobs_waiting"][:10]] == pytest.approx([3.0] * 10)
    assert [v for _, v in drawn["gpus_asked"][:10]] == pytest.approx([12.0] * 10)  # the queue in GPUs
    assert all(v == 0 for _, v in drawn["gpus_asked"][10:])


def _reports(tmp_path: Path) -> dict[str, dict[str, Any]]:
    nodes = ["A,a,1,RTX4090,24,100,", "B,b,1,RTX4090,24,100,", "C,c,1,RTX4090,24,100,"]
    rows = [f"0,3600,1,a,a{i},true" for i in range(1, 7)] + [f"0,3600,1,b,b{i},true" for i in range(1, 3)]
    jobs = read_jobs(write(tmp_path, "jobs.csv", JOBS_HEADER, rows))
    cluster = read_nodes(write(tmp_path, "nodes.csv", NODES_HEADER, nodes))
    return {p: simulate(jobs, cluster, Options(policy=p), timing=False, alone=False)[0] for p in ("coop", "fifo")}


def test_shares_png_shows_demand_beside_contribution_and_use(tmp_path: Path) -> None:
    reports = _reports(tmp_path)
    members, bars = share_bars(reports)
    assert members == ["a", "b", "c"]
    assert [label for label, _ in bars] == ["contribution", "demand", "use (coop)", "use (fifo)"]
    values = dict(bars)
    for shares in values.values():
        assert sum(shares) == pytest.approx(1.0)
    assert values["contribution"] == pytest.approx([1 / 3] * 3)
    # a asks 6 GPU-hours in the window, b 2, c nothing (its "-" is drawn as 0)
    assert values["demand"] == pytest.approx([0.75, 0.25, 0.0])
    for policy in ("coop", "fifo"):
        used = [reports[policy]["members"][m]["used_credit_gpu_hours"] or 0.0 for m in members]
        assert values[f"use ({policy})"] == pytest.approx([u / sum(used) for u in used])
    assert values["use (coop)"] != values["use (fifo)"]  # fair share gives b its hours; FIFO does not
