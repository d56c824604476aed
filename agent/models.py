"""Data the agent reports about its machine: inventory, telemetry and GPU processes.

Units: GPU memory (``GpuInfo.memory_gb``, the telemetry's ``*_memory_gb``) is binary gigabytes
(GiB, 2**30 bytes), because that is what the tools count in (nvidia-smi says MiB, NVML and rocm-smi
say bytes). An "80GB" H100 therefore reads 79.6 and a "16GB" RTX 4080 reads 15.99; the scheduler
reads a card's memory as sold (``coop.scheduler.feasibility.nominal_gb``). The host's RAM and disk
(``HostReport.memory_gb``, ``disk_gb``) are in GB (10**9 bytes), the unit of a job's
``memory: 24GB`` (coop/spec.py): a 24 GiB machine reports 25.76 and takes a ``memory: 24GB`` job.

MIG: a GPU in MIG mode is reported as its MIG instances, one ``GpuInfo`` each, carrying the
parent's ``index`` (so ``CUDA_VISIBLE_DEVICES``-style bookkeeping by physical GPU still works),
``mig_parent_index`` set to that same index, ``mig_device_index`` to tell instances apart, and the
instance's own memory. The parent itself is then not listed: its memory is only usable through
the instances. When MIG is enabled but no instance can be seen, the parent is listed with
``mig_mode="enabled"`` and a warning.

``GpuTelemetry`` and ``ForeignProcess`` use the field names of the wire models in
``coop.schemas``; ``ForeignProcess`` adds ``gpu_uuid`` and ``kind``, which the heartbeat drops.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from coop.schemas import MAX_GPU_MEMORY_GB, MAX_POWER_W, MAX_TEMPERATURE_C, MIN_TEMPERATURE_C

Vendor = Literal["nvidia", "amd", "apple"]
Source = Literal["nvml", "nvidia-smi", "rocm-smi", "apple", "none"]


class GpuInfo(BaseModel):
    """One schedulable GPU (or MIG instance)."""

    index: int = Field(ge=0, description="the GPU's index as the vendor tool numbers it")
    uuid: str | None = None
    name: str
    memory_gb: float = Field(ge=0, description="total memory, GiB; Apple: unified memory")
    compute_capability: float | None = Field(default=None, description="CUDA compute capability, 9.0")
    driver_version: str | None = None
    cuda_version: str | None = None
    mig_mode: Literal["enabled", "disabled"] | None = None
    mig_parent_index: int | None = Field(default=None, description="set on MIG instances only")
    mig_device_index: int | None = Field(default=None, description="MIG device number under the parent")
    vendor: Vendor = "nvidia"


# What the coordinator accepts (coop.schemas.GpuTelemetry); NaN fails both comparisons.
READING_BOUNDS = {
    "utilization_pct": (0.0, 100.0),
    "memory_used_gb": (0.0, MAX_GPU_MEMORY_GB),
    "temperature_c": (MIN_TEMPERATURE_C, MAX_TEMPERATURE_C),
    "power_w": (0.0, MAX_POWER_W),
    "used_memory_gb": (0.0, MAX_GPU_MEMORY_GB),
}


def _possible(value: float | None, info: ValidationInfo) -> float | None:
    low, high = READING_BOUNDS[info.field_name or ""]
    return value if value is not None and low <= value <= high else None


class GpuTelemetry(BaseModel):
    """Live readings for one GPU, sent with every heartbeat (mirrors coop.schemas.GpuTelemetry).

    Impossible readings (utilisation above 100 %, negative memory or power, a sensor's "not
    available" read as 4294967295 W), which drivers do print now and then, become None: the
    coordinator refuses a heartbeat with a value outside its bounds, and one odd sensor must not
    stop a node's heartbeats.
    """

    index: int = Field(ge=0)
    utilization_pct: float | None = None
    memory_used_gb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None

    _readings = field_validator("utilization_pct", "memory_used_gb", "temperature_c", "power_w")(_possible)


class ForeignProcess(BaseModel):
    """A process holding a GPU; the agent calls it foreign when Coop did not start it."""

    pid: int
    name: str = ""
    gpu_index: int | None = None
    gpu_uuid: str | None = None
    used_memory_gb: float | None = None
    kind: str | None = Field(default=None, description='nvidia-smi type: "C", "G" or "C+G"')

    _readings = field_validator("used_memory_gb")(_possible)


class HostReport(BaseModel):
    """What ``coop-agent inspect`` prints and what registration is built from."""

    hostname: str
    os: str
    cpus: int
    memory_gb: float = Field(description="total RAM, GB (10**9 bytes), as jobs ask for it")
    disk_gb: float = Field(description="free space where the agent keeps its state, GB (10**9 bytes)")
    python_version: str
    ray_version: str | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    source: Source = "none"
    warnings: list[str] = Field(default_factory=list)


class ParsedOutput(BaseModel):
    """What a parser got out of one tool output: GPUs, readings, processes, and what looked off."""

    format: str = Field(description="which format the text was recognised as, see parsers.FORMATS")
    source: Source
    gpus: list[GpuInfo] = Field(default_factory=list)
    telemetry: list[GpuTelemetry] = Field(default_factory=list)
    processes: list[ForeignProcess] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
