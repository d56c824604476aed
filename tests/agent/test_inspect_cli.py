"""``coop-agent inspect`` and ``coop-agent calibrate`` through Typer's CliRunner."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.calibrate import CalibrationResult
from agent.main import app
from agent.models import HostReport

DATA = Path(__file__).resolve().parent.parent / "data" / "hardware"
runner = CliRunner(env={"COLUMNS": "160"})


def test_inspect_this_machine() -> None:
    result = runner.invoke(app, ["inspect"])
    assert result.exit_code == 0, result.output
    assert "Node" in result.stdout and "cpus" in result.stdout


def test_inspect_json_is_a_host_report() -> None:
    result = runner.invoke(app, ["inspect", "--json"])
    assert result.exit_code == 0, result.output
    report = HostReport.model_validate_json(result.stdout)
    assert report.cpus >= 1 and report.memory_gb > 0


@pytest.mark.parametrize(
    ("fixture", "shown"),
    [
        ("public/dual-rtx2080-q-x.xml", "NVIDIA GeForce RTX 2080"),
        ("public/a100-sxm4-80gb-mig-q-x.xml", "0 MIG 3"),
        ("public/6x-mi100-rocm-smi.json", "AMD Instinct MI100"),
        ("public/m5max-sphardware.json", "Apple M5 Max"),
    ],
)
def test_inspect_from_a_file_shows_its_gpus(fixture: str, shown: str) -> None:
    result = runner.invoke(app, ["inspect", "--from", str(DATA / fixture)])
    assert result.exit_code == 0, result.output
    assert shown in result.stdout


def test_inspect_from_a_file_as_json() -> None:
    result = runner.invoke(app, ["inspect", "--json", "--from", str(DATA / "public/6x-mi100-rocm-smi.json")])
    assert result.exit_code == 0, result.output
    report = HostReport.model_validate_json(result.stdout)
    assert report.source == "rocm-smi" and len(report.gpus) == 6


@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_from_garbage_exits_1_with_the_reason_and_a_cpu_only_report(as_json: bool) -> None:
    garbled = DATA / "synthetic" / "synthetic-garbled.txt"
    result = runner.invoke(app, ["inspect", "--from", str(garbled), *(["--json"] if as_json else [])])
    assert result.exit_code == 1
    assert "Cannot read" in result.stderr and "Formats Coop reads" in result.stderr
    if as_json:
        report = HostReport.model_validate_json(result.stdout)
        assert (report.source, report.gpus) == ("none", [])
        assert "unrecognised hardware output" in report.warnings[0]
    else:
        assert "No GPU found" in result.stdout


def test_inspect_from_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", "--from", str(tmp_path / "absent.txt")])
    assert result.exit_code == 2


def test_calibrate_json_within_budget() -> None:
    result = runner.invoke(app, ["calibrate", "--json", "--seconds", "1"])
    assert result.exit_code == 0, result.output
    calibration = CalibrationResult.model_validate(json.loads(result.stdout))
    assert calibration.tflops[0] > 0 and calibration.seconds <= 1.5


def test_calibrate_table() -> None:
    result = runner.invoke(app, ["calibrate", "--seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert "TFLOP/s" in result.stdout and "cpu" in result.stdout


def test_inspect_says_what_the_guest_sandbox_enforces_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    shown = runner.invoke(app, ["inspect"]).stdout
    assert "Guest sandbox (coop-agent join)" in shown
    if shutil.which("bwrap"):
        assert re.search(r"filesystem\s+│\s+yes", shown) and re.search(r"processes\s+│\s+yes", shown), shown
        assert re.search(r"network\s+│\s+no", shown), shown  # said plainly: guests share the machine's network
    else:
        assert "bubblewrap (bwrap) is not installed" in shown
    monkeypatch.setenv("COOP_AGENT_SANDBOX", "false")
    unconfined = runner.invoke(app, ["inspect"]).stdout
    assert "--no-sandbox" in unconfined and "read what the agent's user can" in unconfined
