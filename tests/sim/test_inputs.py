"""Bad input files: each error names the file, the line and the field, and says the fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coop.sim.inputs import InputError, SimMember, read_jobs, read_members, read_nodes, write_jobs, write_nodes
from coop.sim.synthetic import generate

JOBS = "submit_time,duration,gpus,member,name,gpu_memory,gpu_model,preemptible"
NODES = "name,member,gpus,gpu_model,gpu_memory,tflops,tier,offline"
GOOD_JOB = "0,60,1,lab-a,j,24,RTX4090|A100,true"
GOOD_NODE = "n1,lab-a,2,RTX4090,24,165,consumer,"


def _error(tmp_path: Path, reader: object, text: str) -> InputError:
    path = tmp_path / "file.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        reader(path)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("x,60,1,lab-a,j,,,", "submit_time", "'x' is not a number of seconds"),
        ("-5,60,1,lab-a,j,,,", "submit_time", "-5 is out of range"),
        ("0,0,1,lab-a,j,,,", "duration", "0 is not positive"),
        ("0,nan,1,lab-a,j,,,", "duration", "nan is out of range"),
        ("0,60,1.5,lab-a,j,,,", "gpus", "'1.5' is not a whole number of GPUs"),
        ("0,60,0,lab-a,j,,,", "gpus", "0 is out of range"),
        ("0,60,1,,j,,,", "member", "is empty"),
        ("0,60,1,lab-a,j,lots,,", "gpu_memory", "'lots' is not a size in GB"),
        ("0,60,1,lab-a,j,,A100||H100,", "gpu_model", "has an empty model name"),
        ("0,60,1,lab-a,j,,,maybe", "preemptible", "'maybe' is not true or false"),
        ("0,60,1,lab-a,j,,,true,extra", None, "more values than the header has columns"),
    ],
)
def test_bad_job_row(tmp_path: Path, row: str, field: str | None, words: str) -> None:
    error = _error(tmp_path, read_jobs, f"{JOBS}\n{GOOD_JOB}\n{row}\n")
    assert (error.line, error.field) == (3, field)
    assert words in str(error) and error.fix
    assert "line 3" in str(error) and (field is None or f"field '{field}'" in str(error))


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ("n1,lab-b,1,A100,80,300,consumer,", "name", "node 'n1' is already on line 2"),
        ("n2,lab-b,1,A100,80,0,consumer,", "tflops", "0 is not positive"),
        ("n2,lab-b,65,A100,80,300,consumer,", "gpus", "65 is more than one node can hold"),
        ("n2,lab-b,1,A100,-1,300,consumer,", "gpu_memory", "-1 is out of range"),
        ("n2,lab-b,1,,80,300,consumer,", "gpu_model", "is empty"),
        ("n2,lab-b,1,A100,80,300,cloud,", "tier", "'cloud' is not a tier"),
        ("n2,lab-b,1,A100,80,300,consumer,100-50", "offline", "'100-50' is not a start-end interval"),
        ("n2,lab-b,1,A100,80,300,consumer,soon", "offline", "'soon' is not a start-end interval"),
        ("n2,lab-b,1,A100,80,300,consumer,0-100;50-200", "offline", "overlaps or precedes"),
    ],
)
def test_bad_node_row(tmp_path: Path, row: str, field: str, words: str) -> None:
    error = _error(tmp_path, read_nodes, f"{NODES}\n{GOOD_NODE}\n{row}\n")
    assert (error.line, error.field) == (3, field)
    assert words in str(error) and error.fix


def test_bad_headers_and_files(tmp_path: Path) -> None:
    error = _error(tmp_path, read_jobs, "submit_time,duration,gpus\n0,60,1\n")
    assert (error.line, error.field) == (1, "member") and "required column is missing" in str(error)
    error = _error(tmp_path, read_jobs, f"{JOBS},colour\n{GOOD_JOB},red\n")
    assert (error.line, error.field) == (1, "colour") and "unknown column" in str(error)
    error = _error(tmp_path, read_nodes, f"{NODES}\n")
    assert "holds no nodes" in str(error)
    error = _error(tmp_path, read_jobs, "")
    assert "has no header row" in str(error)
    with pytest.raises(InputError, match="cannot be read"):
        read_jobs(tmp_path / "missing.csv")


def test_defaults_and_normalised_models(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("submit_time,duration,gpus,member,gpu_model\n\n5,60,2,lab-a,NVIDIA A100-SXM4-80GB\n")
    (job,) = read_jobs(path)
    assert (job.id, job.name, job.gpu_models, job.preemptible, job.gpu_memory) == (1, "job-1", ("A100",), True, None)
    assert job.max_runtime is None


def test_a_job_of_any_width_is_read(tmp_path: Path) -> None:
    # no node holds more than 64 GPUs, but a job may ask for more: the replay refuses it (test_report.py)
    path = tmp_path / "jobs.csv"
    path.write_text(f"{JOBS}\n{GOOD_JOB}\n0,60,128,lab-a,wide,,,\n")
    assert [j.gpus for j in read_jobs(path)] == [1, 128]


def test_writers_round_trip(tmp_path: Path) -> None:
    jobs, nodes = generate(jobs=50, members=3, gpus=12, seed=4, offline=1.0, wide=0.2)
    jobs[0] = replace(jobs[0], gpus=12, nodes=3)
    write_jobs(jobs, tmp_path / "jobs.csv")
    write_nodes(nodes, tmp_path / "nodes.csv")
    assert read_jobs(tmp_path / "jobs.csv") == jobs
    assert read_nodes(tmp_path / "nodes.csv") == nodes


@pytest.mark.parametrize(
    ("value", "words"),
    [("0", "0 is out of range"), ("two", "'two' is not a whole number of nodes"),
     ("5", "5 nodes for 4 GPUs leaves a node without a GPU")],
)  # fmt: skip
def test_bad_nodes(tmp_path: Path, value: str, words: str) -> None:
    error = _error(tmp_path, read_jobs, f"submit_time,duration,gpus,member,nodes\n0,60,4,a,2\n0,60,4,a,{value}\n")
    assert (error.line, error.field) == (3, "nodes")
    assert words in str(error) and error.fix


def test_nodes_is_optional_and_spreads_the_gpus(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("submit_time,duration,gpus,member,nodes\n0,60,12,a,3\n0,60,10,a,4\n0,60,10,a,\n")
    jobs = read_jobs(path)
    assert [(j.nodes, j.per_node, j.total_gpus) for j in jobs] == [(3, 4, 12), (4, 3, 12), (None, 10, 10)]


def test_generate_adds_wide_jobs_only_when_asked() -> None:
    plain = generate(jobs=200, members=4, gpus=40, seed=2)
    assert generate(jobs=200, members=4, gpus=40, seed=2, wide=0.0) == plain  # the same trace as before
    jobs, nodes = generate(jobs=200, members=4, gpus=40, seed=2, wide=0.1)
    widest = max(n.gpus for n in nodes)
    assert max(j.gpus for j in plain[0]) <= widest
    wide = [j.gpus for j in jobs if j.gpus > widest]
    assert 5 <= len(wide) <= 40 and set(wide) <= {12, 16, 32, 64, 128}  # 1.5 to 16 times the widest (8)


def test_members_file(tmp_path: Path) -> None:
    path = tmp_path / "members.csv"
    path.write_text("member,share,gpu_cap\nlab-a,2,4\nlab-b,,\n")
    assert read_members(path) == {"lab-a": SimMember(2.0, 4), "lab-b": SimMember(1.0, None)}
    error = _error(tmp_path, read_members, "member,share,gpu_cap\nlab-a,2,4\nlab-a,1,\n")
    assert (error.line, error.field) == (3, "member") and "already on line 2" in str(error)
    error = _error(tmp_path, read_members, "member,share,gpu_cap\nlab-a,-1,4\n")
    assert (error.line, error.field) == (2, "share")
    error = _error(tmp_path, read_members, "member,share,gpu_cap\nlab-a,1,two\n")
    assert (error.line, error.field) == (2, "gpu_cap") and "'two' is not a whole number of GPUs" in str(error)


@pytest.mark.parametrize(
    ("value", "words"),
    [("soon", "'soon' is not a number of seconds"), ("0", "0 is not positive"), ("-60", "-60 is out of range")],
)
def test_bad_max_runtime(tmp_path: Path, value: str, words: str) -> None:
    error = _error(tmp_path, read_jobs, f"{JOBS},max_runtime\n{GOOD_JOB},3600\n{GOOD_JOB},{value}\n")
    assert (error.line, error.field) == (3, "max_runtime")
    assert words in str(error) and error.fix


def test_max_runtime_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(f"{JOBS},max_runtime\n{GOOD_JOB},5400\n{GOOD_JOB},\n")
    assert [j.max_runtime for j in read_jobs(path)] == [5400.0, None]
