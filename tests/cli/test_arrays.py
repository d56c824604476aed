"""Job arrays from the command line: submit (array: in job.yaml, or --array), status as one row and as a
task list, logs and status of one task (--task), cancel all. A real coordinator; a fake backend moves
tasks along."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import Cli, FakeBackend, write_job
from tests.conftest import Coordinator, wait_for

MATRIX = "array: {model: [qwen-0.5b, llama-1b], task: [mmlu, gsm8k, arc]}\nmax_parallel: 4\n"


def submit(cli: Cli, job: Path, *args: str) -> dict:
    result = cli("submit", job, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_an_array_is_one_row_and_its_id_lists_its_tasks(
    coordinator: Coordinator, cli: Cli, alice: str, tmp_path: Path
) -> None:
    (tmp_path / "sweep" / "eval.py").parent.mkdir(parents=True)
    (tmp_path / "sweep" / "eval.py").write_text("print('eval')\n")
    array = submit(cli, write_job(tmp_path / "sweep", name="eval-sweep", extra=MATRIX))
    assert (array["size"], array["max_parallel"], array["counts"]) == (6, 4, {"PENDING": 6})
    single = submit(cli, write_job(tmp_path / "one", name="single", workdir=None))

    listed = cli.json("status")
    assert [j["id"] for j in listed] == [single["id"], array["id"]]  # tasks are not listed one by one
    assert listed[1]["counts"] == {"PENDING": 6}
    table = cli("status")
    assert table.exit_code == 0, table.output
    assert "eval-sweep [6]" in table.stdout and "array: 6 PENDING" in table.stdout and "single" in table.stdout

    shown = cli("status", array["id"])
    assert shown.exit_code == 0, shown.output
    assert f"Array {array['id']}" in shown.stdout and "MODEL" in shown.stdout and "TASK" in shown.stdout
    assert "llama-1b" in shown.stdout and "gsm8k" in shown.stdout and "max parallel" in shown.stdout
    detail = cli.json("status", array["id"])
    assert [t["array_index"] for t in detail["tasks"]] == list(range(6)) and detail["spec"]["max_parallel"] == 4
    task = cli.json("status", array["id"], "--task", 4)
    assert task["array_values"] == {"model": "llama-1b", "task": "gsm8k"} and task["events"]
    one = cli("status", array["id"], "--task", 4)
    assert f"task 4 of array {array['id']}" in one.stdout and "model=llama-1b" in one.stdout
    assert coordinator.admin.has_workdir(task["workdir_sha256"])  # one upload for every task
    others = {cli.json("status", t["id"])["workdir_sha256"] for t in detail["tasks"][1:]}  # the first's id: the array
    assert others == {task["workdir_sha256"]}


def test_the_array_option_takes_slurms_forms(cli: Cli, alice: str, tmp_path: Path) -> None:
    job = write_job(tmp_path, name="shards", workdir=None)
    array = submit(cli, job, "--array", "0-9:3%2")
    assert (array["size"], array["max_parallel"]) == (4, 2)
    assert [t["array_index"] for t in cli.json("status", array["id"])["tasks"]] == [0, 3, 6, 9]
    assert submit(cli, job, "--array", "1,5,7", "--max-parallel", "1")["max_parallel"] == 1
    assert submit(cli, job, "--array", "100")["size"] == 100
    matrix = write_job(tmp_path / "m", name="m", workdir=None, extra=MATRIX)
    assert submit(cli, matrix, "--array", "3")["size"] == 3  # the option wins over job.yaml


def test_bad_arrays_are_refused_before_anything_is_sent(cli: Cli, tmp_path: Path) -> None:
    cli.unreachable()
    job = write_job(tmp_path, name="shards", workdir=None)
    for args, field in ((["--array", "0-x"], "--array"), (["--array", "0"], "array"), (["--array", "5%z"], "--array")):
        result = cli("submit", job, *args)
        assert result.exit_code == 1, result.output
        assert field in result.stderr and "fix: " in result.stderr and "cannot reach" not in result.stderr
    bad = write_job(tmp_path / "bad", name="bad", workdir=None, extra="array: {model: []}\n")
    result = cli("submit", bad)
    assert result.exit_code == 1 and "array.model" in result.stderr and "empty" in result.stderr
    dry = cli.json("submit", job, "--array", "0-3", "--dry-run")
    assert dry["request"]["spec"]["array"] == "0-3"


def test_logs_and_status_of_one_task(cli: Cli, alice: str, tmp_path: Path, backend: FakeBackend) -> None:
    array = submit(cli, write_job(tmp_path, name="logged", workdir=None), "--array", "3")
    tasks = cli.json("status", array["id"])["tasks"]
    attempt = backend.start(tasks[2]["id"])
    backend.log(tasks[2]["id"], attempt, "task two says hi\n")
    backend.finish(tasks[2]["id"])

    result = cli("logs", array["id"], "--task", 2)
    assert result.exit_code == 0 and result.stdout == "task two says hi\n"
    assert cli("logs", tasks[2]["id"]).stdout == "task two says hi\n"  # a task is a job: its own id works too
    head = cli("logs", array["id"])
    assert head.exit_code == 1 and "--task" in head.stderr and "job array" in head.stderr
    missing = cli("logs", array["id"], "--task", 7)
    assert missing.exit_code == 1 and "no task 7" in missing.stderr
    not_array = cli("logs", tasks[1]["id"], "--task", 0)
    assert not_array.exit_code == 1 and f"a task of array {array['id']}" in not_array.stderr
    assert cli.json("status", array["id"])["counts"] == {"PENDING": 2, "SUCCEEDED": 1}


def test_cancel_an_array_or_one_task(cli: Cli, alice: str, tmp_path: Path) -> None:
    array = submit(cli, write_job(tmp_path, name="doomed", workdir=None), "--array", "4")
    one = cli("cancel", array["id"], "--task", 3)
    assert one.exit_code == 0 and "Cancelled job" in one.stdout
    result = cli("cancel", array["id"])
    assert result.exit_code == 0, result.output
    assert f"Cancelled array {array['id']} (doomed): 4 CANCELLED" in result.stdout
    assert cli.json("status", array["id"])["state"] == "CANCELLED"
    again = cli("cancel", array["id"])
    assert again.exit_code == 1 and "already ended" in again.stderr


def test_submit_follow_waits_for_every_task(
    cli: Cli, alice: str, tmp_path: Path, backend: FakeBackend, in_background: Callable[[Callable[[], None]], None]
) -> None:
    def run_them() -> None:
        first = backend.job_id("followed")
        for job_id in (first, first + 1):
            wait_for(lambda j=job_id: backend.c.admin.job(j)["array_id"] == first, what="the tasks")  # type: ignore[misc]
            backend.start(job_id)
            backend.finish(job_id, "SUCCEEDED" if job_id == first else "FAILED", exit_code=job_id - first)

    in_background(run_them)
    result = cli("submit", write_job(tmp_path, name="followed", workdir=None), "--array", "2", "--follow")
    assert result.exit_code == 1, result.output  # one task failed
    assert "1 SUCCEEDED, 1 FAILED" in result.stderr
