"""The job wrapper's decisions that need no sandbox to check (agent/guest.py): what reaches a job's
environment, which GPUs' device files it gets, and where its checkpoints really live."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import guest
from agent.sandbox import Policy


def policy(tmp_path: Path, devices: list[str] | None = None) -> Policy:
    return Policy(True, str(tmp_path / "guest"), devices=devices or [])


def test_a_jobs_environment_keeps_no_token_and_rays_gpu_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-secret")
    monkeypatch.setenv("COOP_AGENT_TOKEN", "coop_agent-secret")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("PATH", "/opt/venv/bin:/usr/bin")
    job = {"env": {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "WANDB_MODE": "offline", "COOP_JOB_ID": "7"}}
    env = guest.guest_environment(job, tmp_path / "scratch")
    assert not [k for k in env if "TOKEN" in k or k.startswith("RAY_")]
    assert "secret" not in repr(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"  # Ray gave it GPU 1: the job cannot widen that
    assert env["WANDB_MODE"] == "offline" and env["COOP_JOB_ID"] == "7"
    assert env["HOME"] == env["COOP_SCRATCH_DIR"] == str(tmp_path / "scratch")
    assert env["PATH"] == "/opt/venv/bin:/usr/bin"


def test_a_job_gets_the_device_files_of_its_own_gpus_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = ["/dev/dri", "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert guest.gpu_devices(policy(tmp_path, devices)) == [
        "/dev/dri", "/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia2", "/dev/nvidiactl"
    ]  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "/dev/nvidia0" not in guest.gpu_devices(policy(tmp_path, devices))  # a CPU job: no GPU at all


def test_checkpoints_are_kept_per_member(tmp_path: Path) -> None:
    p = policy(tmp_path)
    mine = guest.checkpoint_source(p, "3", "/tmp/coop-examples/lora-tiny")
    theirs = guest.checkpoint_source(p, "4", "/tmp/coop-examples/lora-tiny")
    assert mine != theirs  # the same path named by two members: two folders
    assert mine == guest.checkpoint_source(p, "3", "/tmp/coop-examples/./lora-tiny/")  # and again the same one
    assert mine.is_relative_to(Path(p.guest_root) / "checkpoints")
    escape = guest.checkpoint_source(p, "3", "/tmp/../../etc")
    assert escape.is_relative_to(Path(p.guest_root) / "checkpoints")


def test_a_checkpoint_dir_outside_tmp_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = {"ref": "coop-1-1", "command": "true", "env": {"COOP_CHECKPOINT_DIR": "/data/ckpt"}}
    assert guest.run(job, policy(tmp_path)) == 2
    said = capsys.readouterr().err
    assert "checkpoint_dir /data/ckpt is outside /tmp" in said and "job.yaml" in said
    assert not (tmp_path / "guest" / "scratch").exists()  # refused before anything was made
