"""Calibration: how many dense matmul TFLOP/s this node delivers, the unit of Coop's credits.

GPUs: bf16 ``torch.matmul`` of two 8192x8192 matrices per GPU (fp16 on GPUs older than compute
capability 8.0, which have no bf16 tensor cores), warmed up, then timed in batches that end with
``torch.cuda.synchronize`` so queued work is counted. For scale, a real H100 80GB SXM measured
676 TFLOP/s this way over 12 s (``tests/data/hardware/h100-sxm/calibration.json``); an RTX 4090
lands near 150-170, a 3090 near 70. CPU-only nodes (no torch, or no CUDA GPU) report fp32 matmul
on the CPU through torch, else numpy, else a pure-Python loop as a last resort, which measures
the interpreter rather than the hardware: it is a floor, flagged in ``warnings``.

The run never takes longer than ``max_seconds``: every phase checks a deadline before it
starts and the timed loops are bounded both by wall time and by an iteration count.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

Method = Literal["torch", "numpy", "python"]

GPU_MATRIX = 8192
GPU_SECONDS_PER_DEVICE = 5.0
CPU_SECONDS = 2.0
MAX_ITERATIONS = 100_000
_MARGIN = 0.1  # seconds kept back for bookkeeping after the last timed batch


class CalibrationResult(BaseModel):
    """One calibration run. ``tflops`` has one figure per GPU (in index order), or one CPU figure."""

    device: str = Field(description='"cpu", "cuda:0", or "cuda:0,1" for several GPUs')
    dtype: Literal["bf16", "fp16", "fp32"]
    tflops: list[float]
    matrix_size: int
    iterations: list[int]
    seconds: float = Field(description="wall time of the whole calibration")
    method: Method
    torch_version: str | None = None
    gpu_names: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.perf_counter() - _MARGIN)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _timed(run: Callable[[int], None], flops: float, budget: float) -> tuple[float, int]:
    """TFLOP/s of ``run(k)`` (k matmuls, synchronised) over at most ``budget`` seconds, and iterations.

    One untimed call estimates the cost of a matmul; batches are sized to about 0.1 s and no
    batch starts unless it is expected to finish within the budget (the first always runs).
    """
    begin = time.perf_counter()
    run(1)
    each = max(time.perf_counter() - begin, 1e-9)
    budget -= each
    batch = max(1, min(int(0.1 / each), int(budget / each), MAX_ITERATIONS))
    iterations, start = 0, time.perf_counter()
    while iterations < MAX_ITERATIONS:
        if iterations and time.perf_counter() - start + batch * each > budget:
            break
        run(batch)
        iterations += batch
        each = max((time.perf_counter() - start) / iterations, 1e-9)
    return flops * iterations / (time.perf_counter() - start) / 1e12, iterations


def _grow(matmul_seconds: Callable[[int], float], start: int, largest: int, target: float, deadline: _Deadline) -> int:
    """Double the matrix size while one matmul stays under ``target`` s and time allows."""
    size = start
    while size < largest and deadline.left() > 8 * target:
        if matmul_seconds(size) * 8 > target:  # the doubled size would cost 8x
            break
        size *= 2
    return size


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_devices(torch: Any) -> int:
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # broken driver: treat as no GPU
        return 0


def _gpu(torch: Any, count: int, deadline: _Deadline, warnings: list[str]) -> CalibrationResult:
    tflops, iterations, dtypes, names, sizes = [], [], [], [], []
    for index in range(count):
        if deadline.left() < 0.05:
            warnings.append(f"no time left to measure cuda:{index} and after; raise --seconds")
            break
        name = torch.cuda.get_device_name(index)
        dtype_name: Literal["bf16", "fp16"] = "bf16" if torch.cuda.get_device_capability(index) >= (8, 0) else "fp16"
        dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float16
        size = GPU_MATRIX
        try:
            a, b = (torch.randn(size, size, device=f"cuda:{index}", dtype=dtype) for _ in range(2))
        except torch.cuda.OutOfMemoryError:
            size //= 2
            warnings.append(f"cuda:{index} ({name}): out of memory at {size * 2}, measured at {size}")
            a, b = (torch.randn(size, size, device=f"cuda:{index}", dtype=dtype) for _ in range(2))
        out = torch.empty_like(a)

        def run(k: int, a: Any = a, b: Any = b, out: Any = out, index: int = index) -> None:
            for _ in range(k):
                torch.matmul(a, b, out=out)
            torch.cuda.synchronize(index)

        run(3)  # warm-up: cuBLAS picks its kernel, clocks ramp
        budget = min(GPU_SECONDS_PER_DEVICE, deadline.left() / (count - index))
        figure, done = _timed(run, 2.0 * size**3, budget)
        tflops.append(round(figure, 3))
        iterations.append(done)
        dtypes.append(dtype_name)
        names.append(name)
        sizes.append(size)
        del a, b, out
        torch.cuda.empty_cache()
    if len(set(dtypes)) > 1:
        warnings.append(f"GPUs measured in different precisions: {dtypes}")
    return CalibrationResult(
        device="cuda:" + ",".join(str(i) for i in range(len(tflops))),
        dtype=dtypes[0] if dtypes else "bf16",
        tflops=tflops,
        matrix_size=min(sizes, default=GPU_MATRIX),
        iterations=iterations,
        seconds=0.0,
        method="torch",
        torch_version=str(torch.__version__),
        gpu_names=names,
        warnings=warnings,
    )


def _cpu_torch(torch: Any, deadline: _Deadline) -> tuple[float, int, int]:
    def seconds(n: int) -> float:
        a, b = torch.randn(n, n), torch.randn(n, n)
        begin = time.perf_counter()
        torch.matmul(a, b)
        return time.perf_counter() - begin

    size = _grow(seconds, 256, 4096, 0.05, deadline)
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)

    def run(k: int) -> None:
        for _ in range(k):
            torch.matmul(a, b, out=out)

    figure, done = _timed(run, 2.0 * size**3, min(CPU_SECONDS, deadline.left()))
    return figure, done, size


def _cpu_numpy(deadline: _Deadline) -> tuple[float, int, int]:
    np = importlib.import_module("numpy")
    rng = np.random.default_rng(0)

    def matrix(n: int) -> Any:
        return rng.standard_normal((n, n), dtype=np.float32)

    def seconds(n: int) -> float:
        a, b = matrix(n), matrix(n)
        begin = time.perf_counter()
        np.matmul(a, b)
        return time.perf_counter() - begin

    size = _grow(seconds, 256, 4096, 0.05, deadline)
    a, b = matrix(size), matrix(size)
    out = np.empty((size, size), dtype=np.float32)

    def run(k: int) -> None:
        for _ in range(k):
            np.matmul(a, b, out=out)

    figure, done = _timed(run, 2.0 * size**3, min(CPU_SECONDS, deadline.left()))
    return figure, done, size


def _cpu_python(deadline: _Deadline) -> tuple[float, int, int]:
    size = 48
    a = [[float((i * 7 + j * 3) % 11) for j in range(size)] for i in range(size)]
    columns = [list(col) for col in zip(*a, strict=True)]

    def run(k: int) -> None:
        for _ in range(k):
            [[sum(x * y for x, y in zip(row, col, strict=True)) for col in columns] for row in a]

    figure, done = _timed(run, 2.0 * size**3, min(CPU_SECONDS, deadline.left()))
    return figure, done, size


def calibrate(max_seconds: float = 20.0, method: Method | None = None) -> CalibrationResult:
    """Measure this node: per-GPU bf16 TFLOP/s with torch and CUDA, else one CPU fp32 figure.

    ``method`` forces a backend (tests use it); by default the best available one is used.
    """
    deadline = _Deadline(max_seconds)
    warnings: list[str] = []
    if method is None:
        method = "torch" if _available("torch") else "numpy" if _available("numpy") else "python"
    torch: Any = importlib.import_module("torch") if method == "torch" else None
    torch_version = str(torch.__version__) if torch is not None else None
    count = _cuda_devices(torch) if torch is not None else 0
    if count and deadline.left() > 0.5:
        result = _gpu(torch, count, deadline, warnings)
    else:
        if count:
            warnings.append("no time left for the GPUs after loading torch; measured the CPU instead")
        if method == "torch":
            figure, done, size = _cpu_torch(torch, deadline)
        elif method == "numpy":
            figure, done, size = _cpu_numpy(deadline)
        else:
            warnings.append(
                "neither torch nor numpy is installed: this pure-Python figure measures the "
                "interpreter and is far below what the CPU can do; install numpy"
            )
            figure, done, size = _cpu_python(deadline)
        result = CalibrationResult(
            device="cpu",
            dtype="fp32",
            tflops=[round(figure, 6)],
            matrix_size=size,
            iterations=[done],
            seconds=0.0,
            method=method,
            torch_version=torch_version,
            warnings=warnings,
        )
    return result.model_copy(update={"seconds": round(deadline.elapsed(), 3)})
