"""``nvidia-smi --query-gpu=... --format=csv`` and ``--query-compute-apps=...`` output.

The query output is self-describing when it has its header, so the parser reads columns by name
(case-insensitive, units in the header such as ``memory.total [MiB]`` honoured) and does not care
about their order or about columns it does not know. Headerless output (``csv,noheader``) is
read only when its column count matches a field list Coop itself uses.
"""

from __future__ import annotations

import csv
import io
import re

from agent.models import ForeignProcess, GpuInfo, GpuTelemetry, ParsedOutput
from agent.parsers.common import (
    UnrecognisedOutput,
    clean_uuid,
    compute_capability_from_name,
    memory_gib,
    mig_mode,
    nominal_memory_gb,
    number,
    text,
    uuid_warnings,
)

#: What detection asks for. ``compute_cap`` needs driver 510+; older drivers get INVENTORY_OLD.
INVENTORY_FIELDS = [
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "driver_version",
    "compute_cap",
    "mig.mode.current",
]
INVENTORY_OLD = [f for f in INVENTORY_FIELDS if f != "compute_cap"]
#: What heartbeats ask for (uuid, name and memory.total too, to map processes' GPU UUIDs to indices).
TELEMETRY_FIELDS = [
    "index",
    "uuid",
    "name",
    "memory.total",
    "utilization.gpu",
    "memory.used",
    "temperature.gpu",
    "power.draw",
]
APPS_FIELDS = ["pid", "process_name", "gpu_uuid", "used_memory"]
#: The field list of the captured H100 query (tests/data/hardware/h100-sxm/README.md).
CAPTURE_FIELDS = [
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "utilization.memory",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "driver_version",
    "compute_cap",
    "mig.mode.current",
    "clocks.max.sm",
    "persistence_mode",
]
_HEADERLESS = {len(f): f for f in (INVENTORY_FIELDS, INVENTORY_OLD, CAPTURE_FIELDS)}
#: Part of the warning for a MIG GPU in --query-gpu output; detection drops it once it found the instances.
MIG_HIDDEN = "--query-gpu does not list MIG instances"

_FIELD = re.compile(r"^([a-z_][a-z0-9_.]*)(?:\s*\[([^\]]*)\])?$", re.IGNORECASE)
_KNOWN_KEYS = {"index", "name", "uuid", "memory.total", "utilization.gpu", "pid", "gpu_uuid", "pci.bus_id"}


def _rows(text_in: str) -> list[list[str]]:
    lines = [line for line in text_in.splitlines() if line.strip()]
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True)]


def _header(row: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """(field names, units by field) when ``row`` is a query header, else None."""
    if len(row) < 2:
        return None
    names, units = [], {}
    for cell in row:
        match = _FIELD.match(cell.strip())
        if not match:
            return None
        name = match.group(1).lower()
        names.append(name)
        if match.group(2):
            units[name] = match.group(2).strip().lower()
    return (names, units) if _KNOWN_KEYS & set(names) else None


def _find_table(text_in: str) -> tuple[list[str], dict[str, str], list[list[str]], list[str]]:
    """Locate the header (or infer a headerless field list); returns fields, units, rows, warnings."""
    rows = _rows(text_in)
    for position, row in enumerate(rows):
        found = _header(row)
        if found:
            warnings = [f"ignored {position} line(s) before the CSV header"] if position else []
            return found[0], found[1], rows[position + 1 :], warnings
    if rows and len(rows[0]) in _HEADERLESS and re.fullmatch(r"\d+", rows[0][0]):
        fields = _HEADERLESS[len(rows[0])]
        return fields, {}, rows, [f"CSV has no header; read it as --query-gpu={','.join(fields)}"]
    raise UnrecognisedOutput("no nvidia-smi CSV header found")


def looks_like_csv(text_in: str) -> bool:
    try:
        _find_table(text_in)
    except UnrecognisedOutput:
        return False
    return True


def _records(fields: list[str], rows: list[list[str]], warnings: list[str]) -> list[dict[str, str]]:
    records = []
    for number_, row in enumerate(rows, start=1):
        if len(row) != len(fields):
            warnings.append(
                f"skipped CSV row {number_}: {len(row)} fields, header has {len(fields)} (truncated output?)"
            )
            continue
        records.append(dict(zip(fields, row, strict=True)))
    return records


def parse_query_gpu_csv(text_in: str) -> ParsedOutput:
    """``--query-gpu`` CSV, with or without header and units → GPUs and/or telemetry."""
    fields, units, rows, warnings = _find_table(text_in)
    if "pid" in fields:
        raise UnrecognisedOutput("this is --query-compute-apps output, not --query-gpu")
    gpus: list[GpuInfo] = []
    telemetry: list[GpuTelemetry] = []
    for position, rec in enumerate(_records(fields, rows, warnings)):
        raw_index = number(rec.get("index"))
        index = int(raw_index) if raw_index is not None and raw_index >= 0 else position
        if "name" in rec:
            name = text(rec["name"]) or "unknown NVIDIA GPU"
            memory = memory_gib(rec.get("memory.total"), units.get("memory.total", "mib"))
            if memory is None:
                memory = nominal_memory_gb(name) or 0.0
                warnings.append(f"GPU {index}: memory.total missing, using {memory} GiB from the name")
            cc = number(rec.get("compute_cap"))
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=clean_uuid(rec.get("uuid")),
                    name=name,
                    memory_gb=memory,
                    compute_capability=cc if cc is not None else compute_capability_from_name(name),
                    driver_version=text(rec.get("driver_version")),
                    cuda_version=text(rec.get("cuda_version")),
                    mig_mode=mig_mode(rec.get("mig.mode.current")),
                )
            )
        if {"utilization.gpu", "memory.used", "temperature.gpu", "power.draw"} & rec.keys():
            telemetry.append(
                GpuTelemetry(
                    index=index,
                    utilization_pct=number(rec.get("utilization.gpu")),
                    memory_used_gb=memory_gib(rec.get("memory.used"), units.get("memory.used", "mib")),
                    temperature_c=number(rec.get("temperature.gpu")),
                    power_w=number(rec.get("power.draw")),
                )
            )
    if not gpus and not telemetry:
        raise UnrecognisedOutput("nvidia-smi CSV has a header but no readable GPU rows")
    for gpu in gpus:
        if gpu.mig_mode == "enabled":
            warnings.append(f"GPU {gpu.index} has MIG enabled; {MIG_HIDDEN}")
    return ParsedOutput(
        format="nvidia-smi-csv",
        source="nvidia-smi",
        gpus=gpus,
        telemetry=telemetry,
        warnings=warnings + uuid_warnings(gpus),
    )


def parse_compute_apps_csv(text_in: str) -> ParsedOutput:
    """``--query-compute-apps=pid,process_name,gpu_uuid,used_memory --format=csv`` → processes.

    nvidia-smi titles the ``used_memory`` column ``used_gpu_memory [MiB]``; both are accepted.
    GPU indices are left empty here: the caller maps ``gpu_uuid`` with the GPU list it has.
    """
    fields, units, rows, warnings = _find_table(text_in)
    if "pid" not in fields:
        raise UnrecognisedOutput("no pid column: not --query-compute-apps output")
    processes = []
    for rec in _records(fields, rows, warnings):
        pid = number(rec.get("pid"))
        if pid is None:
            warnings.append(f"skipped a process row without a pid: {rec}")
            continue
        mem_key = "used_memory" if "used_memory" in rec else "used_gpu_memory"
        processes.append(
            ForeignProcess(
                pid=int(pid),
                name=text(rec.get("process_name")) or "",
                gpu_uuid=text(rec.get("gpu_uuid")),
                used_memory_gb=memory_gib(rec.get(mem_key), units.get(mem_key, "mib")),
                kind="C",
            )
        )
    return ParsedOutput(format="nvidia-smi-apps-csv", source="nvidia-smi", processes=processes, warnings=warnings)
