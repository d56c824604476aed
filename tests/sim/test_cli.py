"""``coop simulate`` end to end (in-process CliRunner): tables, JSON, plots, errors, generate, convert."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from coop.cli.main import app
from coop.sim.engine import Options
from coop.sim.inputs import contribution_shares, read_jobs, read_nodes
from coop.sim.report import alone_runs, summarise

DATA = Path(__file__).parent.parent / "data" / "sim"
TRACE, CLUSTER = DATA / "overloaded" / "jobs.csv", DATA / "overloaded" / "nodes.csv"


def coop(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_both_policies_side_by_side_as_json_with_every_figure() -> None:
    result = coop("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--policy", "both", "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert set(reports) == {"coop", "fifo"}
    for report in reports.values():
        assert report["completed"] == 300 and report["unfinished"] == 0
        for key in ("jct_s", "wait_s", "utilisation", "makespan_s", "preemptions", "decision_ms"):
            assert key in report
        assert 0 < report["utilisation"] <= 1
        members = report["members"]
        assert set(members) == {"m01", "m02", "m03", "m04"}
        # usage shares over contribution shares, weighted by the contribution shares, sum to one
        contributed = sum(m["contributed_credit_gpu_hours"] for m in members.values())
        weighted = sum(m["share_ratio"] * m["contributed_credit_gpu_hours"] / contributed for m in members.values())
        assert weighted == pytest.approx(1.0)
        for m in members.values():
            assert m["jct_alone_s"] > 0 and m["sharing_incentive"] == pytest.approx(
                m["jct_alone_s"] / m["jct_pool_same_jobs_s"]
            )
    # a member alone runs its own jobs on its own nodes under the same policy: the rest of the pool's
    # jobs do not change it
    jobs, nodes = read_jobs(TRACE), read_nodes(CLUSTER)
    mine = [j for j in jobs if j.member == "m01"]
    for policy in ("coop", "fifo"):
        alone = alone_runs(mine, nodes, Options(policy=policy))["m01"]
        assert summarise(alone, timing=False)["jct_s"]["mean"] == pytest.approx(
            reports[policy]["members"]["m01"]["jct_alone_s"]
        )


def test_table_output_and_timing_off_is_byte_identical() -> None:
    args = ("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--no-timing", "--json")
    first, again = coop(*args), coop(*args)
    assert first.exit_code == 0 and first.stdout == again.stdout and "decision_ms" not in first.stdout
    table = coop("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--no-alone")
    assert table.exit_code == 0, table.output
    assert "average JCT" in table.stdout and "share ratio" in table.stdout
    for words in ("GPU utilisation while a job waits", "preemptions per job", "By job width", "asked"):
        assert words in table.stdout


def test_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the sim extra (matplotlib) is part of the dev extra")
    result = coop("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--policy", "both", "--plots", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("queue.png", "utilisation.png", "shares.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_plots_without_matplotlib_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = coop("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--plots", tmp_path)
    assert result.exit_code == 1
    assert "--plots needs matplotlib" in result.output and "pip install 'coop[sim]'" in result.output


def test_bad_rows_and_options_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.csv"
    bad.write_text("submit_time,duration,gpus,member\n0,60,1,a\n10,-1,1,a\n")
    result = coop("simulate", "--trace", bad, "--cluster", CLUSTER)
    assert result.exit_code == 1
    assert "line 3" in result.output and "field: duration" in result.output and "fix:" in result.output
    result = coop("simulate", "--trace", TRACE)
    assert result.exit_code == 1 and "--cluster is needed" in result.output
    result = coop("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--policy", "lottery")
    assert result.exit_code == 1 and "unknown policy 'lottery'" in result.output


def test_generate_then_simulate(tmp_path: Path) -> None:
    result = coop("simulate", "generate", "--jobs", 40, "--members", 3, "--gpus", 8, "--seed", 2, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert len(read_jobs(tmp_path / "jobs.csv")) == 40
    assert {n.member for n in read_nodes(tmp_path / "nodes.csv")} == {"m01", "m02", "m03"}
    result = coop("simulate", "--trace", tmp_path / "jobs.csv", "--cluster", tmp_path / "nodes.csv", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["completed"] == 40


def test_shares_by_contribution_weigh_members_by_what_they_donate() -> None:
    nodes = read_nodes(CLUSTER)
    shares = contribution_shares(nodes)
    donated = {m: sum(n.gpus * n.tflops for n in nodes if n.member == m) for m in shares}
    assert sum(s.share for s in shares.values()) == pytest.approx(len(shares))  # the average donor weighs 1
    big, small = max(donated, key=donated.__getitem__), min(donated, key=donated.__getitem__)
    assert shares[big].share / shares[small].share == pytest.approx(donated[big] / donated[small])
    args = ("simulate", "--trace", TRACE, "--cluster", CLUSTER, "--no-timing", "--no-alone", "--json")
    equal, weighted = coop(*args), coop(*args, "--shares", "contribution")
    assert equal.exit_code == 0 and weighted.exit_code == 0, weighted.output
    assert json.loads(equal.stdout) != json.loads(weighted.stdout)  # the weights reach the policy
    result = coop(*args, "--shares", "wealth")
    assert result.exit_code == 1 and "field: --shares" in result.output
