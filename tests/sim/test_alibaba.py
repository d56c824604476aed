"""The Alibaba trace converter, on a small excerpt of the real trace (tests/data/sim/alibaba)."""

from __future__ import annotations

import csv
import zlib
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coop.cli.main import app
from coop.sim.alibaba import MODELS, convert
from coop.sim.engine import Options, replay
from coop.sim.inputs import InputError, SimJob, busy_horizon, read_jobs, read_nodes

EXCERPT = Path(__file__).parent.parent / "data" / "sim" / "alibaba"


def _tasks() -> list[dict[str, str]]:
    with (EXCERPT / "openb_pod_list_default.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_member_rule_and_what_becomes_a_job() -> None:
    conv = convert(EXCERPT, members=4, assign="count")
    tasks = _tasks()
    ran = [t for t in tasks if int(t["num_gpu"]) > 0 and t["scheduled_time"] and t["deletion_time"]]
    assert len(conv.jobs) == len(ran)
    assert conv.skipped["CPU only"] == sum(1 for t in tasks if int(t["num_gpu"]) == 0)
    # nodes: smooth weighted round-robin, member k weighs k, so each window of 10 nodes splits 1:2:3:4
    first = [n.member for n in conv.nodes[:10]]
    assert Counter(first) == {"m01": 1, "m02": 2, "m03": 3, "m04": 4}
    # tasks: crc32(name)/2^32 against slices sized by donated TFLOP/s
    given = {m: sum(n.gpus * n.tflops for n in conv.nodes if n.member == m) for m in ("m01", "m02", "m03", "m04")}
    bounds, acc = [], 0.0
    for m in sorted(given):
        acc += given[m] / sum(given.values())
        bounds.append((acc, m))
    for job in conv.jobs:
        share = zlib.crc32(job.name.encode()) / 2**32
        assert job.member == next(m for b, m in bounds if share < b or m == "m04")
    by_name = {t["name"]: t for t in ran}
    average = sum(n.gpus * n.tflops for n in conv.nodes) / sum(n.gpus for n in conv.nodes)
    start = min(float(t["creation_time"]) for t in ran)
    for job in conv.jobs:
        task = by_name[job.name]
        assert job.gpus == int(task["num_gpu"])  # a share of a GPU is a whole GPU
        assert job.submit == pytest.approx(float(task["creation_time"]) - start)
        observed = float(task["deletion_time"]) - float(task["scheduled_time"])
        assert job.duration == pytest.approx(observed * average / 100, abs=1e-3)
        assert job.preemptible == (task["qos"] in ("BE", "Burstable"))


def _drift(jobs: list[SimJob], share: dict[str, float], horizon: float) -> float:
    """The furthest any member's GPU-time asked (each task counted up to ``horizon``) strays from its
    share of all asked so far, over the jobs in creation order."""
    asked, total, drift = dict.fromkeys(share, 0.0), 0.0, 0.0
    for job in jobs:
        work = job.gpus * min(job.duration, horizon)
        asked[job.member] += work
        total += work
        drift = max(drift, *(abs(asked[m] - share[m] * total) for m in share))
    return drift


def test_by_work_each_member_asks_its_share_of_the_gpu_time_all_along() -> None:
    # a third of the nodes: the tasks ask for more GPUs than the pool has, so it is contended
    conv = convert(EXCERPT, members=4, node_every=3)
    by_count = convert(EXCERPT, members=4, node_every=3, assign="count")
    assert [j.name for j in conv.jobs] == [j.name for j in by_count.jobs]
    given = {m: sum(n.gpus * n.tflops for n in conv.nodes if n.member == m) for m in ("m01", "m02", "m03", "m04")}
    share = {m: g / sum(given.values()) for m, g in given.items()}
    gpus = sum(n.gpus for n in conv.nodes)
    # the horizon: the pool, at its average card's speed, is busy this long with what is asked
    horizon = busy_horizon(conv.jobs, gpus)
    assert sum(j.gpus * min(j.duration, horizon) for j in conv.jobs) == pytest.approx(gpus * horizon, rel=1e-6)
    assert horizon < max(j.duration for j in conv.jobs)  # long services count only up to it
    assert busy_horizon(conv.jobs, 1000) == max(j.duration for j in conv.jobs)  # a pool that holds them all
    # all along, no member strays from its share by more than one task; by task count, further
    biggest = max(j.gpus * min(j.duration, horizon) for j in conv.jobs)
    assert _drift(conv.jobs, share, horizon) <= biggest < _drift(by_count.jobs, share, horizon)


def test_smaller_pool_and_faster_arrivals() -> None:
    full, small = convert(EXCERPT), convert(EXCERPT, node_every=3, time_scale=10)
    assert len(small.nodes) == -(-len(full.nodes) // 3)
    assert max(j.submit for j in small.jobs) == pytest.approx(max(j.submit for j in full.jobs) / 10, rel=1e-6)


def test_cli_converts_and_the_result_replays(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "convert-alibaba", str(EXCERPT), "--out", str(tmp_path),
                                      "--members", "3", "--time-scale", "50"])  # fmt: skip
    assert result.exit_code == 0, result.output
    jobs, nodes = read_jobs(tmp_path / "jobs.csv"), read_nodes(tmp_path / "nodes.csv")
    assert {n.gpu_model for n in nodes} <= set(MODELS)
    out = replay(jobs, nodes, Options(policy="coop"))
    assert sum(1 for o in out.outcome.values() if o.finish is not None) + len(out.refused) == len(jobs)
    bad = CliRunner().invoke(app, ["simulate", "convert-alibaba", str(EXCERPT), "--out", str(tmp_path / "bad"),
                                   "--assign", "lottery"])  # fmt: skip
    assert bad.exit_code == 1 and "field: --assign" in bad.output and "use work or count" in bad.output
    assert not (tmp_path / "bad").exists()


def test_unknown_model_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "openb_node_list_gpu_node.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,Z9\n")
    (tmp_path / "openb_pod_list_default.csv").write_text((EXCERPT / "openb_pod_list_default.csv").read_text())
    with pytest.raises(InputError, match="line 2, field 'model': unknown GPU model 'Z9'"):
        convert(tmp_path)
