"""NVML readings, as a plain "snapshot" dict, turned into models.

Detection reads NVML (nvidia-ml-py) into a JSON-able dict (``agent.hardware.nvml_snapshot``) and
this pure function does the rest, so the conversion is tested on the real capture
``h100-sxm/nvml-and-torch.json``, which has exactly this shape::

    {"driver": "580.159.04", "cuda_driver_version": 13000,
     "nvml": [{"index": 0, "name": ..., "uuid": ..., "memory_total": bytes, "memory_used": bytes,
               "util_gpu": 0, "cc": [9, 0], "procs": [{"pid": 1, "used_memory": bytes}], ...}]}

Coop's reader adds optional ``temperature_c``, ``power_mw``, ``mig_mode`` (1/0) and
``mig_devices`` (``[{"index", "uuid", "name", "memory_total"}]``) per GPU.
"""

from __future__ import annotations

from typing import Any

from agent.models import ForeignProcess, GpuInfo, GpuTelemetry, ParsedOutput
from agent.parsers.common import GIB, clean_uuid, compute_capability_from_name, uuid_warnings


def looks_like_nvml_snapshot(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nvml"), list)


def cuda_version_string(version: Any) -> str | None:
    """NVML's integer CUDA driver version (13000, 12020) as "13.0", "12.2"."""
    if not isinstance(version, int) or version <= 0:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def _gib(value: Any) -> float | None:
    return round(value / GIB, 3) if isinstance(value, int | float) and value >= 0 else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _cc(value: Any, name: str) -> float | None:
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return float(f"{value[0]}.{value[1]}")
    return compute_capability_from_name(name)


def parse_nvml_snapshot(data: dict[str, Any]) -> ParsedOutput:
    """Snapshot dict → GPUs (MIG instances in place of a MIG parent), telemetry and processes."""
    driver = data.get("driver") if isinstance(data.get("driver"), str) else None
    cuda = cuda_version_string(data.get("cuda_driver_version"))
    gpus: list[GpuInfo] = []
    telemetry: list[GpuTelemetry] = []
    processes: list[ForeignProcess] = []
    warnings: list[str] = []
    for position, raw in enumerate(data["nvml"]):
        if not isinstance(raw, dict):
            warnings.append(f"NVML entry {position} is not an object; skipped")
            continue
        index = raw.get("index") if isinstance(raw.get("index"), int) else position
        name = str(raw.get("name") or "unknown NVIDIA GPU")
        mig = raw.get("mig_mode")
        gpu = GpuInfo(
            index=index,
            uuid=clean_uuid(raw.get("uuid")),
            name=name,
            memory_gb=_gib(raw.get("memory_total")) or 0.0,
            compute_capability=_cc(raw.get("cc"), name),
            driver_version=driver,
            cuda_version=cuda,
            mig_mode=None if mig is None else ("enabled" if mig else "disabled"),
        )
        instances = [
            gpu.model_copy(
                update={
                    "uuid": clean_uuid(dev.get("uuid")),
                    "name": str(dev.get("name") or f"{name} MIG"),
                    "memory_gb": _gib(dev.get("memory_total")) or 0.0,
                    "mig_parent_index": index,
                    "mig_device_index": dev.get("index") if isinstance(dev.get("index"), int) else number,
                }
            )
            for number, dev in enumerate(raw.get("mig_devices") or [])
            if isinstance(dev, dict)
        ]
        if mig and not instances:
            warnings.append(f"GPU {index} has MIG enabled but no MIG instances: reported whole")
        gpus.extend(instances or [gpu])
        power_mw = _float(raw.get("power_mw"))
        telemetry.append(
            GpuTelemetry(
                index=index,
                utilization_pct=_float(raw.get("util_gpu")),
                memory_used_gb=_gib(raw.get("memory_used")),
                temperature_c=_float(raw.get("temperature_c")),
                power_w=power_mw / 1000 if power_mw is not None else None,
            )
        )
        for proc in raw.get("procs") or []:
            if isinstance(proc, dict) and isinstance(proc.get("pid"), int):
                processes.append(
                    ForeignProcess(
                        pid=proc["pid"],
                        name=str(proc.get("name") or ""),
                        gpu_index=index,
                        gpu_uuid=gpu.uuid,
                        used_memory_gb=_gib(proc.get("used_memory")),
                        kind="C",
                    )
                )
    return ParsedOutput(
        format="nvml-snapshot-json",
        source="nvml",
        gpus=gpus,
        telemetry=telemetry,
        processes=processes,
        warnings=warnings + uuid_warnings(gpus),
    )
