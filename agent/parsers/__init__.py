"""Pure parsers for GPU tool outputs (text in, models out), and ``parse_any`` to pick one.

Every parser returns a ``ParsedOutput`` and raises ``UnrecognisedOutput`` for text it cannot
read; odd-but-readable input (masked UUIDs, truncated rows, missing values) gives warnings.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.models import ParsedOutput
from agent.parsers.apple import (
    looks_like_sysctl,
    looks_like_system_profiler,
    parse_sysctl,
    parse_system_profiler,
)
from agent.parsers.common import UnrecognisedOutput, compute_capability_from_name, load_json
from agent.parsers.nvidia_csv import looks_like_csv, parse_compute_apps_csv, parse_query_gpu_csv
from agent.parsers.nvidia_text import looks_like_list, looks_like_table, parse_nvidia_list, parse_nvidia_table
from agent.parsers.nvidia_xml import looks_like_xml, parse_nvidia_xml
from agent.parsers.nvml import looks_like_nvml_snapshot, parse_nvml_snapshot
from agent.parsers.rocm import looks_like_rocm, parse_rocm_json

#: Formats parse_any recognises: name → where such text comes from.
FORMATS: dict[str, str] = {
    "nvidia-smi-csv": "nvidia-smi --query-gpu=... --format=csv (with or without header/units)",
    "nvidia-smi-apps-csv": "nvidia-smi --query-compute-apps=... --format=csv",
    "nvidia-smi-xml": "nvidia-smi -q -x",
    "nvidia-smi-table": "nvidia-smi (the default table)",
    "nvidia-smi-list": "nvidia-smi -L",
    "nvml-snapshot-json": "NVML readings as coop-agent's snapshot JSON",
    "rocm-smi-json": "rocm-smi --showproductname --showmeminfo vram ... --json",
    "system-profiler-json": "system_profiler -json SPDisplaysDataType SPHardwareDataType",
    "sysctl": "sysctl hw.memsize machdep.cpu.brand_string (macOS)",
}

__all__ = [
    "FORMATS",
    "UnrecognisedOutput",
    "compute_capability_from_name",
    "parse_any",
    "parse_compute_apps_csv",
    "parse_nvidia_list",
    "parse_nvidia_table",
    "parse_nvidia_xml",
    "parse_nvml_snapshot",
    "parse_query_gpu_csv",
    "parse_rocm_json",
    "parse_sysctl",
    "parse_system_profiler",
]


def _unrecognised(reason: str) -> UnrecognisedOutput:
    known = "; ".join(f"{name} ({origin})" for name, origin in FORMATS.items())
    return UnrecognisedOutput(f"unrecognised hardware output: {reason}. Formats Coop reads: {known}")


def _parse_json(text: str) -> ParsedOutput | None:
    try:
        data = load_json(text)
    except UnrecognisedOutput:
        return None
    if looks_like_nvml_snapshot(data):
        return parse_nvml_snapshot(data)
    if looks_like_rocm(data):
        return parse_rocm_json(text)
    if looks_like_system_profiler(data):
        return parse_system_profiler(text)
    if text.lstrip().startswith(("{", "[")):
        raise _unrecognised("JSON, but neither rocm-smi, system_profiler nor an NVML snapshot")
    return None


def _parse_csv(text: str) -> ParsedOutput:
    try:
        return parse_compute_apps_csv(text)
    except UnrecognisedOutput:
        return parse_query_gpu_csv(text)


def parse_any(text: str) -> ParsedOutput:
    """Recognise which tool printed ``text`` (from the content alone) and parse it.

    Raises ``UnrecognisedOutput`` naming the known formats when nothing fits, and when text
    that looks like a known format is too broken to read (malformed XML, a header only).
    """
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise _unrecognised("the text is empty")
    if "\x00" in text:
        raise _unrecognised("the text is binary")
    sniffers: list[tuple[Callable[[str], bool], Callable[[str], ParsedOutput]]] = [
        (looks_like_xml, parse_nvidia_xml),
        (looks_like_table, parse_nvidia_table),
        (looks_like_csv, _parse_csv),
        (looks_like_list, parse_nvidia_list),
        (looks_like_sysctl, parse_sysctl),
    ]
    try:
        if "{" in text and (parsed := _parse_json(text)) is not None:
            return parsed
        for looks_like, parse in sniffers:
            if looks_like(text):
                return parse(text)
    except UnrecognisedOutput as exc:
        if str(exc).startswith("unrecognised hardware output"):
            raise
        raise _unrecognised(str(exc)) from exc
    first = next(line for line in text.splitlines() if line.strip()).strip()
    raise _unrecognised(f"nothing matched (first line: {first[:80]!r})")
