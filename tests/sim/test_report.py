"""The report's figures, each worked out by hand on a small trace: refusals, utilisation while jobs
wait, the share window and demand, members without jobs, job widths, preemptions per job, thinning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coop.cli.main import app
from coop.sim.engine import Options
from coop.sim.inputs import SimJob, SimNode, busy_horizon, ideal_last_start, read_jobs, read_nodes
from coop.sim.plots import thin_by_time
from coop.sim.report import simulate
from tests.sim.helpers import JOBS_HEADER, NODES_HEADER, run, write

H = 3600.0
DATA = Path(__file__).parent.parent / "data" / "sim" / "overloaded"


def _report(tmp_path: Path, jobs: list[str], nodes: list[str], policy: str = "fifo", alone: bool = False
            ) -> dict[str, Any]:  # fmt: skip
    job_file = write(tmp_path, "jobs.csv", JOBS_HEADER, jobs)
    node_file = write(tmp_path, "nodes.csv", NODES_HEADER, nodes)
    options = Options(policy=policy)
    return simulate(read_jobs(job_file), read_nodes(node_file), options, timing=False, alone=alone)[0]


def test_a_job_wider_than_the_cluster_is_refused_and_counted_not_an_input_error(tmp_path: Path) -> None:
    # 8 nodes of 8 GPUs: a's four A100 servers and b's four RTX 4090 servers
    nodes = [f"a{i},a,8,A100,80,300," for i in range(4)] + [f"b{i},b,8,RTX4090,24,165," for i in range(4)]
    jobs = [
        "0,3600,128,a,huge,",  # 16 nodes of 8: the cluster has 8
        "0,3600,16,b,wide,",  # a gang of 2 nodes: runs
        "0,3600,40,b,a100s,A100",  # 5 A100 servers of 8: there are 4
        "0,3600,1,a,h100,H100",  # no such card: refused by model
        "0,3600,1,a,fits,",
    ]
    write(tmp_path, "jobs.csv", "submit_time,duration,gpus,member,name,gpu_model", jobs)
    write(tmp_path, "nodes.csv", NODES_HEADER, nodes)
    report = simulate(read_jobs(tmp_path / "jobs.csv"), read_nodes(tmp_path / "nodes.csv"), Options(),
                      timing=False)[0]  # fmt: skip
    assert (report["completed"], report["refused"], report["unfinished"]) == (2, 3, 0)
    assert report["refused_by_reason"] == {"nodes": 2, "gpu": 1}
    refusals = list(report["refusals"])
    assert "asks 128 GPUs; the largest gang this cluster can make is 64 GPUs (8 nodes of 8)" in refusals
    assert (
        "asks 40 GPUs; the largest gang this cluster can make on nodes that meet its GPU model and memory is "
        "32 GPUs (4 nodes of 8)"
    ) in refusals
    members = report["members"]
    assert (members["a"]["refused"], members["a"]["refused_by_reason"]) == (2, {"gpu": 1, "nodes": 1})
    assert (members["b"]["refused"], members["b"]["refused_by_reason"]) == (1, {"nodes": 1})
    assert report["gangs"]["completed"] == 1  # the 16-GPU job ran over 2 nodes
    # refused jobs ask for nothing: a's demand is its one GPU-hour
    assert members["a"]["demand_credit_gpu_hours_all"] == pytest.approx(1.0)
    result = CliRunner().invoke(app, ["simulate", "--trace", str(tmp_path / "jobs.csv"), "--cluster",
                                      str(tmp_path / "nodes.csv"), "--policy", "both"], terminal_width=200)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 / 0 / 3 / 0" in result.stdout and "nodes 2, gpu 1" in result.stdout
    assert "Refused jobs" in result.stdout and "asks 128 GPUs; the largest gang" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines() if line.startswith("a ") and len(line.split()) == 4)
    assert row == ["a", "2", "1", "1"]  # member, refused, gpu, nodes


def test_utilisation_while_waiting_is_measured_over_the_time_jobs_wait(tmp_path: Path) -> None:
    nodes = ["n1,a,2,A100,80,100,", "n2,b,1,A100,80,100,"]
    jobs = [
        # nothing for 10 h; then w holds n1 10..12 h, and x (2 GPUs: n2 is too small) waits 36060..12 h
        "36000,7200,2,a,w,true",
        "36060,3600,2,a,x,true",
        # at 20 h four 1-GPU jobs: three fill the pool 20..21 h, the fourth waits until 21 h
        *(f"72000,3600,1,b,y{i},true" for i in range(4)),
    ]
    report = _report(tmp_path, jobs, nodes)
    waiting = (12 * H - 36060) + H
    assert report["waiting_s"] == pytest.approx(waiting)  # the two stretches, not 10..21 h
    assert (report["waiting_from_s"], report["waiting_until_s"]) == (36060, 21 * H)
    # 2 of 3 GPUs busy in the first stretch, all 3 in the second
    busy = 2 * (12 * H - 36060) + 3 * H
    assert report["utilisation_while_waiting"] == pytest.approx(busy / (3 * waiting))
    # from 0 to the last start (21 h), as before, the quiet start would hide it: 3 GPUs x 21 h lendable
    assert busy / (3 * 21 * H) < 0.2 < 0.75 < report["utilisation_while_waiting"]
    assert report["last_start_s"] == 21 * H
    # over the whole replay (to 22 h): w 2x2 h, x 2x1 h, the y jobs 4x1 h
    assert report["utilisation"] == pytest.approx((4 + 2 + 4) * H / (3 * 22 * H))
    # the table says over what time it was measured, and the share window (the same 10..21 h here: on
    # one machine of 3 GPUs the last y job would also start at 21 h)
    assert report["share_window_s"] == {"from": 10 * H, "until": 21 * H}
    result = CliRunner().invoke(app, ["simulate", "--trace", str(tmp_path / "jobs.csv"), "--cluster",
                                      str(tmp_path / "nodes.csv"), "--no-alone", "--policy", "fifo"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    over = next(line for line in lines if "measured over the time a job waits" in line)
    assert over.split()[-1] == "2h59m"  # 1h59m (x) + 1 h (the fourth y)
    between = next(line for line in lines if "between its first and last moment" in line)
    assert between.rstrip().endswith("10.0 h to 21.0 h")
    assert any(line.startswith("Members (fifo), 10.0 h to 21.0 h") for line in lines)
    assert f"{100 * report['utilisation_while_waiting']:.1f}%" in next(
        line for line in lines if "GPU utilisation while a job waits" in line
    )


def test_series_has_the_gpus_waiting_jobs_ask_for(tmp_path: Path) -> None:
    nodes = ["n1,a,2,A100,80,100,", "n2,b,1,A100,80,100,"]
    out = run(tmp_path, ["0,7200,2,a,w,true", "60,3600,2,a,x,true", "60,3600,1,b,y,true"], nodes, policy="fifo")
    # at 60: x waits (2 GPUs), y runs on n2; at 7200 x starts
    assert (60.0, 1, 3, 3, 2) in out.series and out.series[-1][1:] == (0, 0, 3, 0)
    assert all(len(point) == 5 for point in out.series)


def _fairness(tmp_path: Path, policy: str) -> dict[str, Any]:
    nodes = ["A,a,1,RTX4090,24,100,", "B,b,1,RTX4090,24,100,", "C,c,1,RTX4090,24,100,"]
    rows = [f"0,3600,1,a,a{i},true" for i in range(1, 7)] + [f"0,3600,1,b,b{i},true" for i in range(1, 3)]
    return _report(tmp_path, rows, nodes, policy=policy)


def test_one_share_window_for_every_policy_and_demand_beside_the_share_ratio(tmp_path: Path) -> None:
    # a asks 6 GPU-hours, b 2, c nothing; each gives one 100 TFLOP/s GPU. On one 3-GPU machine in
    # submit order a1..a3 start at 0, a4..a6 at 1 h, b1 b2 at 2 h: the window is 0..2 h
    coop, fifo = _fairness(tmp_path, "coop"), _fairness(tmp_path, "fifo")
    for report in (coop, fifo):
        assert report["share_window_s"] == {"from": 0.0, "until": 2 * H}
        members = report["members"]
        assert {m: e["contributed_credit_gpu_hours"] for m, e in members.items()} == {"a": 2.0, "b": 2.0, "c": 2.0}
        # what each could have run in the window had its jobs started at once: a 6, b 2 (one hour each)
        assert members["a"]["demand_credit_gpu_hours"] == pytest.approx(6.0)
        assert members["b"]["demand_credit_gpu_hours"] == pytest.approx(2.0)
        assert members["a"]["demand_credit_gpu_hours_all"] == pytest.approx(6.0)
        assert members["a"]["demand_exceeds_contribution"] is True
        assert members["b"]["demand_exceeds_contribution"] is False
    # FIFO: a's six jobs hold all three GPUs until 2 h; b gets nothing in the window
    assert fifo["members"]["a"]["used_credit_gpu_hours"] == pytest.approx(6.0)
    assert fifo["members"]["a"]["share_ratio"] == pytest.approx(1.0 / (1 / 3))
    assert fifo["members"]["b"]["share_ratio"] == 0.0
    # Coop: fair share gives b its GPU-hours as soon as they are asked
    assert coop["members"]["b"]["used_credit_gpu_hours"] == pytest.approx(2.0)
    assert coop["members"]["b"]["share_ratio"] == pytest.approx((2 / 6) / (1 / 3))


def test_a_member_that_submitted_nothing_shows_none_not_zero(tmp_path: Path) -> None:
    c = _fairness(tmp_path, "coop")["members"]["c"]
    assert c["jobs"] == 0 and c["contributed_credit_gpu_hours"] == 2.0
    for key in ("share_ratio", "used_credit_gpu_hours", "used_credit_gpu_hours_all", "demand_credit_gpu_hours",
                "demand_exceeds_contribution", "jct_pool_s"):  # fmt: skip
        assert c[key] is None, key
    assert c["balance"] > 0  # its node earned credits all the same
    jobs, nodes = read_jobs(tmp_path / "jobs.csv"), read_nodes(tmp_path / "nodes.csv")
    c = simulate(jobs, nodes, Options(), timing=False)[0]["members"]["c"]
    for key in ("jobs_alone", "jct_alone_s", "jct_pool_same_jobs_s", "sharing_incentive", "pool_only_done"):
        assert c[key] is None, key
    result = CliRunner().invoke(app, ["simulate", "--trace", str(tmp_path / "jobs.csv"), "--cluster",
                                      str(tmp_path / "nodes.csv"), "--policy", "both"], terminal_width=250)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("c ")]
    assert len(rows) == 2  # one per policy
    for row in rows:
        # member, jobs, contributed; asked, used, share ratio, asks more: "-"; balance; JCT, JCT of the jobs
        # it can run alone, JCT alone, incentive, done only in the pool: "-"
        assert row[1] == "0" and float(row[2]) == 2.0 and float(row[7]) > 0
        assert row[3:7] == ["-"] * 4 and row[8:] == ["-"] * 5, row


def test_contribution_is_the_same_in_the_coop_and_fifo_columns() -> None:
    result = CliRunner().invoke(app, ["simulate", "--trace", str(DATA / "jobs.csv"), "--cluster",
                                      str(DATA / "nodes.csv"), "--policy", "both", "--json", "--no-alone",
                                      "--no-timing"])  # fmt: skip
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    coop, fifo = reports["coop"], reports["fifo"]
    # the policies' last starts differ by hours (a window to each one's last start would not agree), and
    # owners take machines back in the window: still one window, one contribution per member
    assert abs(coop["last_start_s"] - fifo["last_start_s"]) > 3600
    assert any(n.offline for n in read_nodes(DATA / "nodes.csv"))
    assert coop["share_window_s"] == fifo["share_window_s"] and coop["share_window_s"]["until"] > 0
    for name in coop["members"]:
        for key in ("contributed_credit_gpu_hours", "demand_credit_gpu_hours", "demand_credit_gpu_hours_all"):
            assert coop["members"][name][key] == fifo["members"][name][key]
    assert coop["waiting_s"] > 0 and 0 < coop["utilisation_while_waiting"] <= 1
    # and so in the table: each member's contributed and asked columns read the same under both policies
    result = CliRunner().invoke(app, ["simulate", "--trace", str(DATA / "jobs.csv"), "--cluster",
                                      str(DATA / "nodes.csv"), "--policy", "both", "--no-alone", "--no-timing"],
                                terminal_width=250)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows: dict[str, list[list[str]]] = {}
    for line in result.stdout.splitlines():
        if line.split() and line.split()[0] in coop["members"] and len(line.split()) > 8:
            rows.setdefault(line.split()[0], []).append(line.split()[2:4])  # contributed, asked
    assert set(rows) == set(coop["members"])
    for name, (in_coop, in_fifo) in rows.items():
        assert in_coop == in_fifo, name


def test_by_width(tmp_path: Path) -> None:
    jobs = ["0,3600,4,a,w4,true", "0,3600,2,a,w2,true", "0,3600,1,a,w1a,true", "0,3600,1,a,w1b,true",
            "0,3600,8,a,w8,true"]  # fmt: skip
    report = _report(tmp_path, jobs, ["n,a,4,A100,80,100,"])
    # FIFO: w4 runs 0..1 h, then w2, w1a and w1b together 1..2 h; w8 would be a gang of 2 nodes and is refused
    assert report["by_width"] == {
        "1": {"jobs": 2, "nodes": [1], "completed": 2, "wait_s_mean": H, "jct_s_mean": 2 * H},
        "2": {"jobs": 1, "nodes": [1], "completed": 1, "wait_s_mean": H, "jct_s_mean": 2 * H},
        "4": {"jobs": 1, "nodes": [1], "completed": 1, "wait_s_mean": 0.0, "jct_s_mean": H},
        "8": {"jobs": 1, "nodes": [2], "completed": 0, "wait_s_mean": None, "jct_s_mean": None},
    }


def test_preemptions_per_job(tmp_path: Path) -> None:
    # the owner takes its box back at 1000 and at 3000: the guest runs 0..1000, 2000..3000 and from
    # 4000 to the end; the later job is never stopped
    nodes = ["box,a,1,RTX4090,24,100,1000-2000;3000-4000"]
    jobs = ["0,3600,1,b,guest,true", "8000,60,1,b,later,true"]
    out = run(tmp_path, jobs, nodes, policy="fifo")
    assert [o.preemptions for o in out.outcome.values()] == [2, 0]
    assert out.outcome[1].finish == 4000 + 3600
    report = _report(tmp_path, jobs, nodes)
    assert report["preemptions_per_job"] == {"mean": 1.0, "max": 2, "jobs_preempted": 1}
    assert report["preemptions"]["owner"]["count"] == 2


def test_ideal_last_start_is_the_last_start_on_one_machine_holding_the_pool() -> None:
    def job(i: int, submit: float, duration: float, gpus: int) -> SimJob:
        return SimJob(i, f"j{i}", "a", submit, duration, gpus, None, (), True)

    nodes = [SimNode(1, "n1", "a", 2, "A100", 80, 100, "consumer", ()),
             SimNode(2, "n2", "b", 2, "A100", 80, 300, "consumer", ())]  # fmt: skip
    # average speed 200 TFLOP/s: a 7200 s job takes 3600 s; the machine holds 4 GPUs
    jobs = [job(1, 1000, 7200, 4), job(2, 1000, 7200, 2), job(3, 2000, 7200, 1), job(4, 9000, 7200, 1)]
    # j1 1000..4600; j2 and j3 start at 4600; j4 arrives at 9000 and starts at once
    assert ideal_last_start(jobs, nodes) == 9000
    assert ideal_last_start(jobs[:3], nodes) == 4600
    assert ideal_last_start([], nodes) == 0.0


def test_busy_horizon_counts_every_job_up_to_it() -> None:
    jobs = [SimJob(i, f"j{i}", "a", 0.0, 10.0, 1, None, (), True) for i in range(100)]
    # 1000 GPU-seconds on 10 GPUs: busy 100 s, though no job lasts more than 10 s
    assert busy_horizon(jobs, 10) == pytest.approx(100.0)
    assert busy_horizon(jobs, 100) == 10.0  # the pool holds them all at once
    long = [*jobs, SimJob(100, "service", "a", 0.0, 1e6, 1, None, (), True)]
    # the service counts up to H only: 100 x 10 + H = 10 H
    assert busy_horizon(long, 10) == pytest.approx(1000 / 9)


def test_thin_by_time_keeps_time_weighted_means_in_equal_spans() -> None:
    # busy (4 of 4 GPUs) for the first second, in 1000 events; then idle until 100 s
    dense = [(i / 1000, 0, 4, 4, 0) for i in range(1000)]
    series = [*dense, (1.0, 2, 0, 4, 3), (100.0, 0, 0, 4, 0)]
    thinned = thin_by_time(series, buckets=10)
    assert len(thinned) == 11 and thinned[-1] == (100.0, 0.0, 0.0, 4.0, 0.0)
    assert [p[0] for p in thinned[:-1]] == pytest.approx([10.0 * k for k in range(10)])
    # first span 0..10 s: busy 4 for 1 s, 0 for 9 s; two jobs asking 3 GPUs wait 1..10 s
    assert thinned[0][1:] == pytest.approx((2 * 0.9, 0.4, 4.0, 3 * 0.9))
    assert all(p[1:] == pytest.approx((2.0, 0.0, 4.0, 3.0)) for p in thinned[1:-1])
    # the integral over time is kept
    assert sum(p[2] * 10.0 for p in thinned[:-1]) == pytest.approx(4.0)
    assert thin_by_time(series[:5], buckets=10) == [tuple(map(float, p)) for p in series[:5]]  # short: as is
