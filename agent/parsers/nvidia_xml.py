"""``nvidia-smi -q -x`` (XML): the one nvidia-smi output that lists MIG instances.

Read by element names, case-insensitively and ignoring indentation, because published captures
are re-indented and re-serialised (tabs, 4 or 8 spaces, an added encoding declaration) and the
schema moves things between versions (v12 ``power_readings/power_draw``, v13
``gpu_power_readings/average_power_draw``). The XML has no GPU index: GPUs are numbered in the
order listed, which is nvidia-smi's own index order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent.models import ForeignProcess, GpuInfo, GpuTelemetry, ParsedOutput
from agent.parsers.common import (
    UnrecognisedOutput,
    clean_uuid,
    compute_capability_from_name,
    memory_gib,
    mig_mode,
    number,
    text,
    uuid_warnings,
)


def _child(element: ET.Element | None, *path: str) -> ET.Element | None:
    """Follow ``path`` one tag at a time, matching tags case-insensitively."""
    for tag in path:
        if element is None:
            return None
        element = next((c for c in element if c.tag.lower() == tag), None)
    return element


def _value(element: ET.Element | None, *path: str) -> str | None:
    found = _child(element, *path)
    return found.text.strip() if found is not None and found.text else None


def _children(element: ET.Element | None, tag: str) -> list[ET.Element]:
    return [] if element is None else [c for c in element if c.tag.lower() == tag]


def looks_like_xml(text_in: str) -> bool:
    head = text_in.lstrip()[:2000].lower()
    return head.startswith("<") and "nvidia_smi_log" in head


def _mig_instances(gpu_el: ET.Element, parent: GpuInfo, warnings: list[str]) -> list[GpuInfo]:
    instances = []
    for position, mig in enumerate(_children(_child(gpu_el, "mig_devices"), "mig_device")):
        device = number(_value(mig, "index"))
        device_index = int(device) if device is not None else position
        gi, ci = _value(mig, "gpu_instance_id"), _value(mig, "compute_instance_id")
        memory = memory_gib(_value(mig, "fb_memory_usage", "total"))
        if memory is None:
            warnings.append(f"GPU {parent.index} MIG device {device_index}: no memory size")
        instances.append(
            parent.model_copy(
                update={
                    "uuid": clean_uuid(_value(mig, "uuid")),
                    "name": f"{parent.name} MIG (GI {gi}, CI {ci})",
                    "memory_gb": memory or 0.0,
                    "mig_parent_index": parent.index,
                    "mig_device_index": device_index,
                }
            )
        )
    return instances


def _telemetry(gpu_el: ET.Element, index: int) -> GpuTelemetry:
    power = None
    for path in (
        ("gpu_power_readings", "power_draw"),
        ("gpu_power_readings", "average_power_draw"),
        ("gpu_power_readings", "instant_power_draw"),
        ("power_readings", "power_draw"),
    ):
        power = number(_value(gpu_el, *path))
        if power is not None:
            break
    return GpuTelemetry(
        index=index,
        utilization_pct=number(_value(gpu_el, "utilization", "gpu_util")),
        memory_used_gb=memory_gib(_value(gpu_el, "fb_memory_usage", "used")),
        temperature_c=number(_value(gpu_el, "temperature", "gpu_temp")),
        power_w=power,
    )


def _processes(gpu_el: ET.Element, gpu: GpuInfo) -> list[ForeignProcess]:
    found = []
    for proc in _children(_child(gpu_el, "processes"), "process_info"):
        pid = number(_value(proc, "pid"))
        if pid is not None:
            found.append(
                ForeignProcess(
                    pid=int(pid),
                    name=_value(proc, "process_name") or "",
                    gpu_index=gpu.index,
                    gpu_uuid=gpu.uuid,
                    used_memory_gb=memory_gib(_value(proc, "used_memory")),
                    kind=_value(proc, "type"),
                )
            )
    return found


def parse_nvidia_xml(text_in: str) -> ParsedOutput:
    """``nvidia-smi -q -x`` → GPUs (MIG instances in place of a MIG parent), telemetry, processes."""
    start = text_in.find("<")
    try:
        root = ET.fromstring(text_in[start:].strip()) if start >= 0 else None
    except ET.ParseError as exc:
        raise UnrecognisedOutput(f"nvidia-smi XML is malformed or truncated: {exc}") from exc
    if root is None or root.tag.lower() != "nvidia_smi_log":
        raise UnrecognisedOutput("XML without an <nvidia_smi_log> root")
    driver, cuda = text(_value(root, "driver_version")), text(_value(root, "cuda_version"))
    warnings: list[str] = []
    gpus: list[GpuInfo] = []
    telemetry: list[GpuTelemetry] = []
    processes: list[ForeignProcess] = []
    gpu_elements = _children(root, "gpu")
    attached = number(_value(root, "attached_gpus"))
    if attached is not None and int(attached) != len(gpu_elements):
        warnings.append(
            f"attached_gpus says {int(attached)} but the XML lists {len(gpu_elements)} GPU(s) (trimmed output?)"
        )
    for index, gpu_el in enumerate(gpu_elements):
        name = text(_value(gpu_el, "product_name")) or "unknown NVIDIA GPU"
        memory = memory_gib(_value(gpu_el, "fb_memory_usage", "total"))
        if memory is None:
            warnings.append(f"GPU {index}: no fb_memory_usage/total")
        major = number(_value(gpu_el, "cuda_compute_capability", "major"))  # not in v12/v13, maybe later
        minor = number(_value(gpu_el, "cuda_compute_capability", "minor"))
        cc = float(f"{int(major)}.{int(minor)}") if major is not None and minor is not None else None
        gpu = GpuInfo(
            index=index,
            uuid=clean_uuid(_value(gpu_el, "uuid")),
            name=name,
            memory_gb=memory or 0.0,
            compute_capability=cc if cc is not None else compute_capability_from_name(name),
            driver_version=driver,
            cuda_version=cuda,
            mig_mode=mig_mode(_value(gpu_el, "mig_mode", "current_mig")),
        )
        instances = _mig_instances(gpu_el, gpu, warnings) if gpu.mig_mode == "enabled" else []
        if gpu.mig_mode == "enabled" and not instances:
            warnings.append(f"GPU {index} has MIG enabled but no MIG instances: reported whole")
        gpus.extend(instances or [gpu])
        telemetry.append(_telemetry(gpu_el, index))
        processes.extend(_processes(gpu_el, gpu))
    if not gpus:
        warnings.append("the XML lists no GPUs")
    return ParsedOutput(
        format="nvidia-smi-xml",
        source="nvidia-smi",
        gpus=gpus,
        telemetry=telemetry,
        processes=processes,
        warnings=warnings + uuid_warnings(gpus),
    )
