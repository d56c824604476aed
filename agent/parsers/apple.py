"""macOS: ``system_profiler -json SPDisplaysDataType SPHardwareDataType`` and ``sysctl``.

An Apple Silicon GPU shares the machine's unified memory, so its ``memory_gb`` is the
machine's physical memory (from SPHardwareDataType or ``hw.memsize``); the GPU cannot really use
all of it, which jobs sizing themselves on a Mac should keep in mind. The displays section alone
has no memory size: the GPU is then reported with 0 and a warning (live detection fills it in
from ``sysctl``). Intel integrated GPUs are skipped; Intel Macs' AMD GPUs are listed as "amd".
"""

from __future__ import annotations

import re
from typing import Any, cast

from agent.models import GpuInfo, ParsedOutput, Vendor
from agent.parsers.common import UnrecognisedOutput, load_json, memory_gib, text, vendor_from_name


def looks_like_system_profiler(data: Any) -> bool:
    return isinstance(data, dict) and any(
        str(k).lower().startswith("sp") and str(k).lower().endswith("datatype") for k in data
    )


def _section(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    for key, value in data.items():
        if str(key).lower() == name.lower() and isinstance(value, list):
            return [{str(k).lower(): v for k, v in item.items()} for item in value if isinstance(item, dict)]
    return []


def _vendor(item: dict[str, Any], name: str) -> str:
    raw = str(item.get("spdisplays_vendor", "")).lower()
    for vendor in ("apple", "amd", "ati", "intel", "nvidia"):
        if vendor in raw:
            return "amd" if vendor == "ati" else vendor
    return vendor_from_name(name)


def parse_system_profiler(text_in: str) -> ParsedOutput:
    """system_profiler JSON → Apple (or Intel-Mac AMD) GPUs, numbered in listed order."""
    data = load_json(text_in)
    if not looks_like_system_profiler(data):
        raise UnrecognisedOutput("JSON without SP...DataType sections: not system_profiler output")
    warnings: list[str] = []
    hardware = next(iter(_section(data, "SPHardwareDataType")), {})
    chip = text(str(hardware.get("chip_type", "")))
    unified = memory_gib(str(hardware.get("physical_memory", "")), default_unit="gb")
    gpus: list[GpuInfo] = []
    for item in _section(data, "SPDisplaysDataType"):
        if item.get("sppci_device_type", "spdisplays_gpu") != "spdisplays_gpu":
            continue
        name = text(str(item.get("sppci_model") or item.get("_name") or "")) or "unknown GPU"
        vendor = _vendor(item, name)
        if vendor == "apple":
            memory = unified
        elif vendor == "amd":
            memory = memory_gib(
                str(item.get("spdisplays_vram") or item.get("_spdisplays_vram") or ""), default_unit="mb"
            )
        else:
            warnings.append(f"skipped {name}: only Apple and AMD GPUs are scheduled on macOS")
            continue
        if memory is None:
            warnings.append(f"{name}: memory size not in this output (add SPHardwareDataType)")
        gpus.append(GpuInfo(index=len(gpus), name=name, memory_gb=memory or 0.0, vendor=cast(Vendor, vendor)))
    if not gpus and chip and chip.lower().startswith("apple"):
        gpus.append(GpuInfo(index=0, name=chip, memory_gb=unified or 0.0, vendor="apple"))
        if unified is None:
            warnings.append(f"{chip}: physical_memory missing")
    if not gpus:
        warnings.append("system_profiler lists no Apple Silicon or AMD GPU")
    return ParsedOutput(format="system-profiler-json", source="apple", gpus=gpus, warnings=warnings)


def looks_like_sysctl(text_in: str) -> bool:
    return bool(re.search(r"^(hw\.memsize|machdep\.cpu\.brand_string)\s*[:=]", text_in, re.MULTILINE))


def parse_sysctl(text_in: str) -> ParsedOutput:
    """``sysctl hw.memsize machdep.cpu.brand_string`` → the Apple Silicon GPU, if any."""
    values = dict(re.findall(r"^([\w.]+)\s*[:=]\s*(.*?)\s*$", text_in, re.MULTILINE))
    brand = values.get("machdep.cpu.brand_string", "")
    memory = memory_gib(values.get("hw.memsize"), default_unit="b")
    if not brand.lower().startswith("apple"):
        return ParsedOutput(
            format="sysctl", source="apple", warnings=[f"CPU {brand or 'unknown'} is not Apple Silicon: no GPU"]
        )
    warnings = [] if memory else ["hw.memsize missing: unified memory unknown"]
    return ParsedOutput(
        format="sysctl",
        source="apple",
        warnings=warnings,
        gpus=[GpuInfo(index=0, name=brand, memory_gb=memory or 0.0, vendor="apple")],
    )
