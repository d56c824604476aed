"""Calibration: a positive figure within the time budget, on the CPU here and on stand-in GPUs."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from agent.calibrate import CalibrationResult, calibrate

SLACK_S = 0.5  # process scheduling on a busy CI machine; the budget itself is what is asserted
H100_FIGURE = Path(__file__).resolve().parent.parent / "data" / "hardware" / "h100-sxm" / "calibration.json"


def check_within(result: CalibrationResult, budget: float, started: float) -> None:
    assert result.seconds <= budget + SLACK_S
    assert time.perf_counter() - started <= budget + SLACK_S


def test_cpu_figure_is_positive_and_within_budget() -> None:
    started = time.perf_counter()
    result = calibrate(max_seconds=1.5)
    check_within(result, 1.5, started)
    assert (result.device, result.dtype) == ("cpu", "fp32")
    assert len(result.tflops) == 1 and result.tflops[0] > 0
    assert result.iterations[0] >= 1 and result.matrix_size >= 1
    assert CalibrationResult.model_validate_json(result.model_dump_json()) == result


def test_default_method_matches_what_is_installed() -> None:
    result = calibrate(max_seconds=0.5)
    if importlib.util.find_spec("torch"):
        assert result.method == "torch"
    elif importlib.util.find_spec("numpy"):
        assert result.method == "numpy" and result.warnings == []
    else:
        assert result.method == "python" and "install numpy" in result.warnings[0]


@pytest.mark.parametrize("budget", [0.2, 1.0])
def test_pure_python_fallback_respects_tiny_budgets(budget: float) -> None:
    started = time.perf_counter()
    result = calibrate(max_seconds=budget, method="python")
    check_within(result, budget, started)
    assert result.tflops[0] > 0 and result.method == "python"


def test_real_h100_figure_has_the_shape_we_compare_with() -> None:
    """The captured H100 figure (676 TFLOP/s bf16) is what a GPU result's tflops entry means."""
    figure = json.loads(H100_FIGURE.read_text())["bf16_matmul_tflops"]
    result = CalibrationResult(
        device="cuda:0", dtype="bf16", tflops=[figure], matrix_size=8192, iterations=[1], seconds=12.0, method="torch"
    )
    assert 600 < result.tflops[0] < 1000


class FakeTensor:
    def __init__(self, size: int) -> None:
        self.size = size


def fake_torch(capabilities: list[tuple[int, int]], oom_on: int | None = None) -> ModuleType:
    """A stand-in for torch with CUDA: each matmul 'takes' size**3 / 8192**3 * 2 ms."""
    torch = ModuleType("torch")
    oom = type("OutOfMemoryError", (RuntimeError,), {})

    def randn(n: int, m: int, device: str = "cpu", dtype: Any = None) -> FakeTensor:
        if oom_on is not None and device == f"cuda:{oom_on}" and n == 8192:
            raise oom("CUDA out of memory")
        return FakeTensor(n)

    def matmul(a: FakeTensor, b: FakeTensor, out: Any = None) -> FakeTensor:
        time.sleep(0.002 * (a.size / 8192) ** 3)
        return a

    torch.__version__ = "2.11.0+fake"  # type: ignore[attr-defined]
    torch.bfloat16, torch.float16 = "bf16", "fp16"  # type: ignore[attr-defined]
    torch.randn = randn  # type: ignore[attr-defined]
    torch.matmul = matmul  # type: ignore[attr-defined]
    torch.empty_like = lambda t: FakeTensor(t.size)  # type: ignore[attr-defined]
    torch.empty = lambda *shape: FakeTensor(shape[0])  # type: ignore[attr-defined]
    torch.cuda = SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: True,
        device_count=lambda: len(capabilities),
        get_device_name=lambda i: f"Fake GPU {i}",
        get_device_capability=lambda i: capabilities[i],
        synchronize=lambda i=None: None,
        empty_cache=lambda: None,
        OutOfMemoryError=oom,
    )
    return torch


def test_gpu_path_measures_every_gpu_within_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", fake_torch([(9, 0), (7, 5)], oom_on=1))
    started = time.perf_counter()
    result = calibrate(max_seconds=1.5, method="torch")
    check_within(result, 1.5, started)
    assert (result.device, result.method, result.torch_version) == ("cuda:0,1", "torch", "2.11.0+fake")
    assert result.dtype == "bf16" and result.gpu_names == ["Fake GPU 0", "Fake GPU 1"]
    assert len(result.tflops) == 2 and all(f > 0 for f in result.tflops)
    assert any("out of memory" in w for w in result.warnings)  # GPU 1 measured at 4096
    assert any("different precisions" in w for w in result.warnings)  # bf16 and fp16


def test_torch_without_cuda_measures_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = fake_torch([])
    torch.cuda.is_available = lambda: False  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    result = calibrate(max_seconds=1.0, method="torch")
    assert (result.device, result.dtype, result.method) == ("cpu", "fp32", "torch")
    assert result.tflops[0] > 0 and result.seconds <= 1.0 + SLACK_S
