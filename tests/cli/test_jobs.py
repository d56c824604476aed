"""submit / status / logs / cancel against a real coordinator (a fake backend moves jobs along)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import Cli, FakeBackend, Spy, write_job
from tests.conftest import Coordinator

Background = Callable[[Callable[[], None]], None]


def submit(cli: Cli, job: Path, *args: str) -> dict:
    result = cli("submit", job, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_submit_uploads_the_workdir_and_the_job_is_listed(
    coordinator: Coordinator, cli: Cli, alice: str, tmp_path: Path
) -> None:
    job_file = write_job(tmp_path / "project", name="lora-test")
    (tmp_path / "project" / "train.py").write_text("print('hi')\n")
    job = submit(cli, job_file)
    assert (job["name"], job["state"], job["member"]) == ("lora-test", "PENDING", "alice")

    listed = cli.json("status")
    assert [j["id"] for j in listed] == [job["id"]]
    detail = cli.json("status", job["id"])
    assert detail["spec"]["run"] == "python train.py"
    assert coordinator.admin.has_workdir(detail["workdir_sha256"])

    table = cli("status")
    assert table.exit_code == 0
    assert "lora-test" in table.stdout and "PENDING" in table.stdout and "REASON" in table.stdout
    shown = cli("status", job["id"])
    assert shown.exit_code == 0
    assert "Events" in shown.stdout and "submitted" in shown.stdout and "alice" in shown.stdout


def test_workdir_is_relative_to_the_job_file_and_null_means_none(
    cli: Cli, alice: str, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print(1)\n")
    relative = write_job(tmp_path / "jobs", name="rel", workdir="../code")
    none = write_job(tmp_path / "jobs2", name="none", workdir=None)
    monkeypatch.chdir(tmp_path.parent)  # not the job file's folder
    dry = cli.json("submit", relative, "--dry-run")
    assert dry["workdir"]["path"] == str((tmp_path / "code").resolve()) and dry["workdir"]["files"] == 1
    assert cli.json("status", submit(cli, none)["id"])["workdir_sha256"] is None


def test_dry_run_contacts_nothing(cli: Cli, tmp_path: Path) -> None:
    cli.unreachable()
    job_file = write_job(tmp_path, name="dry", extra="max_runtime: 2h\nenv: {WANDB_MODE: offline}\n")
    out = cli.json("submit", job_file, "--dry-run")
    request = out["request"]
    assert request["spec"]["name"] == "dry" and request["spec"]["max_runtime"] == 7200
    assert request["workdir_sha256"] == out["workdir"]["sha256"] and len(request["workdir_sha256"]) == 64

    text = cli("submit", job_file, "--dry-run")
    assert text.exit_code == 0, text.output
    assert '"name": "dry"' in text.stdout and "Nothing was sent" in text.stdout


def test_invalid_job_file_names_the_field_and_the_fix(cli: Cli, tmp_path: Path) -> None:
    cli.unreachable()
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: bad\nrun: echo\nresources:\n  gpus: two\n")
    for args in (["--dry-run"], []):
        result = cli("submit", job_file, *args)
        assert result.exit_code == 1
        assert "resources.gpus" in result.stderr and "fix: " in result.stderr
        assert "cannot reach" not in result.stderr  # refused before any network call


def test_server_side_refusal_shows_field_and_fix(
    coordinator: Coordinator, cli: Cli, alice: str, tmp_path: Path
) -> None:
    coordinator.admin.set_quota("alice", gpu_cap=1)
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: big\nrun: echo\nworkdir: null\nresources:\n  gpus: 4\n")
    result = cli("submit", job_file)
    assert result.exit_code == 1
    assert "spec.resources.gpus" in result.stderr and "quota" in result.stderr and "fix: " in result.stderr


def test_cancel(cli: Cli, alice: str, tmp_path: Path) -> None:
    job = submit(cli, write_job(tmp_path))
    cancelled = cli.json("cancel", job["id"])
    assert cancelled["state"] == "CANCELLED"
    assert [j["state"] for j in cli.json("status", "--state", "cancelled")] == ["CANCELLED"]
    assert cli.json("status", "--state", "PENDING") == []

    again = cli("cancel", job["id"])
    assert again.exit_code == 1 and "already ended" in again.stderr and "fix: " in again.stderr
    job2 = submit(cli, write_job(tmp_path / "two", name="two"))
    text = cli("cancel", job2["id"])
    assert text.exit_code == 0 and f"Cancelled job {job2['id']} (two)" in text.stdout


def test_unknown_job_and_state(cli: Cli, alice: str) -> None:
    result = cli("status", 999999)
    assert result.exit_code == 1 and "does not exist" in result.stderr and "job_id" in result.stderr
    result = cli("status", "--state", "DONE")
    assert result.exit_code == 1 and "PENDING" in result.stderr


def test_logs_of_a_fresh_job_are_empty(cli: Cli, alice: str, tmp_path: Path) -> None:
    job = submit(cli, write_job(tmp_path))
    result = cli("logs", job["id"])
    assert result.exit_code == 0 and result.stdout == ""
    cli.json("cancel", job["id"])
    followed = cli("logs", "-f", job["id"])  # a cancelled job has nothing more to say: -f ends
    assert followed.exit_code == 0 and followed.stdout == ""


def test_logs_follow_across_attempts(
    cli: Cli, alice: str, tmp_path: Path, backend: FakeBackend, in_background: Background, spy: Spy
) -> None:
    job_id = submit(cli, write_job(tmp_path, name="retry"))["id"]
    first = backend.start(job_id)
    backend.log(job_id, first, "epoch 1\n")

    def later() -> None:
        spy.wait_for_log("epoch 1")
        backend.log(job_id, first, "preempted\n")
        second = backend.start(job_id)
        backend.log(job_id, second, "resumed\nepoch 2\n")
        backend.finish(job_id)

    in_background(later)
    result = cli("logs", "--follow", job_id)
    assert result.exit_code == 0
    assert result.stdout == "epoch 1\npreempted\n--- attempt 2 ---\nresumed\nepoch 2\n"
    assert cli("logs", job_id, "--attempt", "1").stdout == "epoch 1\npreempted\n"
    assert cli("logs", job_id).stdout == "resumed\nepoch 2\n"  # the latest attempt


def test_submit_follow_streams_logs_and_exits_0_on_success(
    cli: Cli, alice: str, tmp_path: Path, backend: FakeBackend, in_background: Background, spy: Spy
) -> None:
    def run_it() -> None:
        job_id = backend.job_id("followed")
        attempt = backend.start(job_id)
        backend.log(job_id, attempt, "loading model\n")
        spy.wait_for_log("loading model")  # the CLI saw the job RUNNING
        backend.log(job_id, attempt, "loss 0.5\n")
        backend.finish(job_id)

    in_background(run_it)
    result = cli("submit", write_job(tmp_path, name="followed"), "--follow")
    assert result.exit_code == 0, result.output
    assert "loading model\nloss 0.5\n" in result.stdout
    assert "RUNNING" in result.stderr and "SUCCEEDED" in result.stderr


def test_submit_follow_exits_1_when_the_job_does_not_succeed(
    coordinator: Coordinator, cli: Cli, alice: str, tmp_path: Path, backend: FakeBackend, in_background: Background
) -> None:
    def cancel_it() -> None:
        coordinator.admin.cancel(backend.job_id("doomed"))

    in_background(cancel_it)
    result = cli("submit", write_job(tmp_path, name="doomed"), "--follow", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "CANCELLED"
    assert "CANCELLED" in result.stderr


def test_status_of_other_members(coordinator: Coordinator, cli: Cli, alice: str, tmp_path: Path) -> None:
    job = submit(cli, write_job(tmp_path, name="alices"))
    cli.use(coordinator.url, coordinator.admin_token)
    assert cli.json("status") == []  # an admin's own member has no jobs
    assert [j["id"] for j in cli.json("status", "--all-members")] == [job["id"]]
    assert [j["id"] for j in cli.json("status", "--member", "alice")] == [job["id"]]
    result = cli("status", "--all-members", "--member", "alice")
    assert result.exit_code == 1
