"""The LoRA example run for real, with few steps: killed after its first checkpoint, resumed, then scored.

The jobs run as subprocesses the way Coop runs them: in the example's folder, with
COOP_CHECKPOINT_DIR and COOP_ATTEMPT set. The whole module takes about 30-40 s on two CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the LoRA example needs PyTorch (pip install torch)")

LORA = Path(__file__).resolve().parents[2] / "examples" / "lora"
SHORT = {"PRETRAIN_STEPS": "60", "LORA_STEPS": "60", "CHECKPOINT_EVERY": "20", "LOG_EVERY": "10"}
TOTAL = 120
# The example's options; any of them set in the environment running the tests must not leak in.
OPTIONS = ("PRETRAIN_STEPS", "LORA_STEPS", "BATCH_SIZE", "LR", "LORA_LR", "LORA_RANK", "LORA_ALPHA",
           "CHECKPOINT_EVERY", "LOG_EVERY", "SEED", "EVAL_GENERATIONS")  # fmt: skip
TIMEOUT_S = 120  # a run takes about 10 s; this only stops a hung test


def job_env(ckpt: Path, attempt: int) -> dict[str, str]:
    """What Coop gives a job, plus the short settings."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("COOP_") and k not in OPTIONS}
    env |= SHORT | {"COOP_JOB_ID": "7", "COOP_ATTEMPT": str(attempt), "COOP_CHECKPOINT_DIR": str(ckpt)}
    # bit-for-bit resumes need the same arithmetic in every run: one thread, so the BLAS library does
    # not pick its thread count by the machine's load (MKL_DYNAMIC), and MKL's reproducible mode, so
    # results do not depend on how each process's buffers happen to be aligned
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "AUTO"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in examples/
    return env


def run(script: str, ckpt: Path, attempt: int = 1) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script], cwd=LORA, env=job_env(ckpt, attempt),
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip


def checkpoint_steps(ckpt: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("step-")) for p in ckpt.glob("step-*.pt"))


def start_and_wait_for_checkpoint(ckpt: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start train.py and return once its first checkpoint file exists (polling, with a deadline)."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=LORA, env=job_env(ckpt, 1), stdout=out, stderr=out)
    deadline = time.monotonic() + TIMEOUT_S
    while not checkpoint_steps(ckpt):
        if proc.poll() is not None:
            pytest.fail(f"train.py exited ({proc.returncode}) before its first checkpoint:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint in {ckpt} after {TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.02)
    return proc


def printed_steps(output: str) -> list[int]:
    """The step numbers of the progress lines ("step   40/120 pretrain loss ...")."""
    return [int(line.split()[1].split("/")[0]) for line in output.splitlines() if line.startswith("step ")]


@dataclass
class Resumed:
    ckpt: Path
    killed_at: int  # the newest checkpoint the killed attempt left
    first: str  # output of attempt 1 (killed)
    second: subprocess.CompletedProcess[str]  # attempt 2 (resumed, ran to the end)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """Attempt 1 is SIGKILLed (a lost node) right after its first checkpoint; attempt 2 finishes the job."""
    tmp = tmp_path_factory.mktemp("lora")
    ckpt, log = tmp / "ckpt", tmp / "attempt-1.log"
    proc = start_and_wait_for_checkpoint(ckpt, log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    killed_at = checkpoint_steps(ckpt)[-1]
    assert not (ckpt / "final").exists()
    return Resumed(ckpt, killed_at, log.read_text(), run("train.py", ckpt, attempt=2))


def test_killed_finetune_resumes_from_its_last_checkpoint(resumed: Resumed) -> None:
    assert "no checkpoint: starting from step 0" in resumed.first
    assert 0 < resumed.killed_at < TOTAL
    second = resumed.second
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming from step {resumed.killed_at} (pretrain), saved by attempt 1" in second.stdout
    steps = printed_steps(second.stdout)
    assert steps and steps[0] > resumed.killed_at  # went on from the checkpoint, did not start over
    assert steps[-1] == TOTAL
    assert {"base.pt", "adapter.pt", "meta.json"} <= {p.name for p in (resumed.ckpt / "final").iterdir()}
    meta = json.loads((resumed.ckpt / "final" / "meta.json").read_text())
    assert meta["attempt"] == "2" and meta["steps"] == TOTAL


def test_eval_scores_the_adapter_better_than_the_base(resumed: Resumed) -> None:
    result = run("evaluate.py", resumed.ckpt)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    score = json.loads((resumed.ckpt / "final" / "score.json").read_text())
    assert score["passed"] is True
    assert score["finetuned"]["loss"] < score["base"]["loss"]
    assert score["heldout_records"] > 0 and len(score["generations"]) == 3


def test_resumed_run_ends_exactly_where_an_uninterrupted_one_does(resumed: Resumed, tmp_path: Path) -> None:
    """Checkpoints carry the optimizer and RNG states, so a resumed run is bit-for-bit the same on the CPU."""
    whole = run("train.py", tmp_path)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    for name in ("base.pt", "adapter.pt"):
        a = torch.load(resumed.ckpt / "final" / name, weights_only=True)
        b = torch.load(tmp_path / "final" / name, weights_only=True)
        key = "model" if name == "base.pt" else "state"
        tensors_a, tensors_b = a[key], b[key]
        assert tensors_a.keys() == tensors_b.keys()
        assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a), f"{name} differs"


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(tmp_path: Path) -> None:
    """Coop preempts with SIGTERM and a grace period: the job saves at once instead of losing steps."""
    log = tmp_path / "attempt-1.log"
    proc = start_and_wait_for_checkpoint(tmp_path / "ckpt", log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT_S) == 128 + signal.SIGTERM
    output = log.read_text()
    saved = checkpoint_steps(tmp_path / "ckpt")[-1]
    assert f"SIGTERM: saved step {saved};" in output
    assert not (tmp_path / "ckpt" / "final").exists()


def test_eval_without_an_adapter_says_to_run_the_finetune_first(tmp_path: Path) -> None:
    result = run("evaluate.py", tmp_path)
    assert result.returncode == 2
    assert "run the fine-tune first" in result.stdout.lower()
    assert not (tmp_path / "final" / "score.json").exists()


def test_eval_fails_a_broken_adapter(resumed: Resumed, tmp_path: Path) -> None:
    """An adapter that makes the model worse must fail the eval (exit 1), so a bad fine-tune shows as FAILED."""
    final = tmp_path / "final"
    final.mkdir()
    (final / "base.pt").write_bytes((resumed.ckpt / "final" / "base.pt").read_bytes())
    adapter = torch.load(resumed.ckpt / "final" / "adapter.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    adapter["state"] = {k: torch.randn(v.shape, generator=generator) for k, v in adapter["state"].items()}
    torch.save(adapter, final / "adapter.pt")
    result = run("evaluate.py", tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: the fine-tuned model is not better than the base model" in result.stdout
    assert json.loads((final / "score.json").read_text())["passed"] is False
