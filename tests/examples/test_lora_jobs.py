"""The LoRA example's job files: valid specs that connect the fine-tune to the eval (no PyTorch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coop.cli import workdir
from coop.spec import JobSpec, parse_job_yaml

LORA = Path(__file__).resolve().parents[2] / "examples" / "lora"


def load(name: str) -> JobSpec:
    return parse_job_yaml((LORA / name).read_text(encoding="utf-8"))


def test_finetune_job_is_a_preemptible_cpu_finetune_with_retries() -> None:
    spec = load("finetune.yaml")
    assert spec.kind == "finetune"
    assert spec.resources.gpus == 0  # runs on the CPU-only demo node
    assert spec.preemptible is True
    assert spec.retries == 2
    assert spec.max_runtime_s is not None
    assert spec.run == "python train.py"


def test_eval_reads_the_folder_the_finetune_writes() -> None:
    finetune, evaluation = load("finetune.yaml"), load("eval.yaml")
    assert evaluation.kind == "eval"
    assert evaluation.run == "python evaluate.py"
    # final/ is handed over through the store: the fine-tune's outputs are the eval's input
    [given] = evaluation.inputs
    assert (given.job, given.folder) == (finetune.name, "finetune")
    assert finetune.checkpoint_dir is None and evaluation.checkpoint_dir is None  # no path shared between nodes


@pytest.mark.parametrize("name", ["finetune.yaml", "eval.yaml"])
def test_workdir_ships_the_shared_code_and_data(name: str) -> None:
    spec = load(name)
    assert spec.workdir == "."
    shipped = {entry.name for entry in workdir.scan(LORA)}
    assert {"train.py", "evaluate.py", "tinylm.py", "data/base.txt", "data/target.txt"} <= shipped
    # The data is small: the packed workdir is far under Coop's 64 MB limit.
    assert sum(entry.size for entry in workdir.scan(LORA)) < 500_000
