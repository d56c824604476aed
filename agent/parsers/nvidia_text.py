"""The two human-readable nvidia-smi outputs: the default table and ``nvidia-smi -L``.

Neither is what detection runs (it uses NVML, the CSV query and the XML); they are read so
that ``coop-agent inspect --from`` accepts what a donor pastes. The table truncates long names
("NVIDIA GeForce RTX 4080 ...", kept as printed) and says ``TCC/WDDM`` instead of
``Persistence-M`` on Windows; the parser reads cells by position between ``|`` and does not
depend on either. MIG instances are not read from the table (use ``-q -x``).
"""

from __future__ import annotations

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

_GPU_ROW = re.compile(
    r"^\|\s*(?P<index>\d+)\s+(?P<name>.+?)\s{2,}(?P<mode>\S+)\s*\|"
    r"\s*(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s"
)
_PROCESS_ROW = re.compile(
    r"^\|\s*(?P<gpu>\d+)\s+(?:(?P<gi>\S+)\s+(?P<ci>\S+)\s+)?(?P<pid>\d+)\s+(?P<kind>C\+G|M\+C|C|G|M)\s+"
    r"(?P<name>.+?)\s+(?P<memory>\d+\s*MiB|N/A)\s*\|$"
)
_LIST_GPU = re.compile(r"^GPU\s+(?P<index>\d+):\s*(?P<name>.+?)\s*\(UUID:\s*(?P<uuid>[^)]+)\)\s*$")
_LIST_MIG = re.compile(r"^\s*MIG\s+(?P<profile>\S+)\s+Device\s+(?P<device>\d+):\s*\(UUID:\s*(?P<uuid>[^)]+)\)")


def looks_like_table(text_in: str) -> bool:
    return (
        "NVIDIA-SMI" in text_in
        and "Driver Version" in text_in
        and bool(any(_GPU_ROW.match(line) for line in text_in.splitlines()))
    )


def looks_like_list(text_in: str) -> bool:
    return any(_LIST_GPU.match(line.strip()) for line in text_in.splitlines())


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_nvidia_table(text_in: str) -> ParsedOutput:
    """Default ``nvidia-smi`` table → GPUs, telemetry and the process list."""
    lines = text_in.splitlines()
    header = re.search(r"Driver Version:\s*(\S+)", text_in)
    cuda = re.search(r"CUDA Version:\s*(\S+)", text_in)
    driver, cuda_version = text(header.group(1) if header else None), text(cuda.group(1) if cuda else None)
    gpus: list[GpuInfo] = []
    telemetry: list[GpuTelemetry] = []
    processes: list[ForeignProcess] = []
    warnings: list[str] = []
    in_processes = False
    for position, line in enumerate(lines):
        if "Processes:" in line:
            in_processes = True
        row = _GPU_ROW.match(line) if not in_processes else None
        if row:
            index, name = int(row["index"]), row["name"].strip()
            second = _cells(lines[position + 1]) if position + 1 < len(lines) else []
            third = _cells(lines[position + 2]) if position + 2 < len(lines) else []
            memory = re.search(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB", second[1]) if len(second) > 1 else None
            if name.endswith("..."):
                warnings.append(f"GPU {index}: name truncated by nvidia-smi: {name!r}")
            mode = mig_mode(third[2]) if len(third) > 2 and not third[0] else None
            gpus.append(
                GpuInfo(
                    index=index,
                    uuid=None,
                    name=name,
                    memory_gb=(memory_gib(memory.group(2)) or 0.0) if memory else 0.0,
                    compute_capability=compute_capability_from_name(name),
                    driver_version=driver,
                    cuda_version=cuda_version,
                    mig_mode=mode,
                )
            )
            if mode == "enabled":
                warnings.append(f"GPU {index} has MIG enabled; the table's MIG section is not read")
            if len(second) > 2:
                power = re.search(r"(\d+(?:\.\d+)?)\s*W\s*/", second[0])
                temp = re.search(r"(\d+)\s*C\b", second[0])
                telemetry.append(
                    GpuTelemetry(
                        index=index,
                        utilization_pct=number(second[2].split()[0]) if second[2] else None,
                        memory_used_gb=memory_gib(memory.group(1)) if memory else None,
                        temperature_c=float(temp.group(1)) if temp else None,
                        power_w=float(power.group(1)) if power else None,
                    )
                )
        process = _PROCESS_ROW.match(line.rstrip()) if in_processes else None
        if process:
            processes.append(
                ForeignProcess(
                    pid=int(process["pid"]),
                    name=process["name"],
                    gpu_index=int(process["gpu"]),
                    used_memory_gb=memory_gib(process["memory"]),
                    kind=process["kind"],
                )
            )
    if not gpus:
        raise UnrecognisedOutput("nvidia-smi table without GPU rows")
    return ParsedOutput(
        format="nvidia-smi-table",
        source="nvidia-smi",
        gpus=gpus,
        telemetry=telemetry,
        processes=processes,
        warnings=warnings,
    )


def parse_nvidia_list(text_in: str) -> ParsedOutput:
    """``nvidia-smi -L`` → GPUs, or their MIG instances (memory from the profile, "3g.40gb" → 40).

    The listing has no memory sizes: they come from the name ("H100 80GB HBM3") where it says,
    so they are nominal. Lines that are not GPU or MIG lines are skipped with a warning, so a
    listing pasted inside a bigger capture still reads.
    """
    gpus: list[GpuInfo] = []
    warnings: list[str] = []
    parents: list[tuple[GpuInfo, list[GpuInfo]]] = []
    skipped = 0
    for line in text_in.splitlines():
        gpu_line, mig_line = _LIST_GPU.match(line.strip()), _LIST_MIG.match(line)
        if gpu_line:
            name = gpu_line["name"]
            memory = nominal_memory_gb(name)
            if memory is None:
                warnings.append(f"GPU {gpu_line['index']}: memory unknown from `nvidia-smi -L` ({name})")
            parent = GpuInfo(
                index=int(gpu_line["index"]),
                uuid=clean_uuid(gpu_line["uuid"]),
                name=name,
                memory_gb=memory or 0.0,
                compute_capability=compute_capability_from_name(name),
            )
            parents.append((parent, []))
        elif mig_line and parents:
            parent = parents[-1][0]
            parents[-1][1].append(
                parent.model_copy(
                    update={
                        "uuid": clean_uuid(mig_line["uuid"]),
                        "name": f"{parent.name} MIG {mig_line['profile']}",
                        "memory_gb": nominal_memory_gb(mig_line["profile"]) or 0.0,
                        "mig_mode": "enabled",
                        "mig_parent_index": parent.index,
                        "mig_device_index": int(mig_line["device"]),
                    }
                )
            )
        elif line.strip():
            skipped += 1
    for parent, instances in parents:
        gpus.extend(instances or [parent])
    if not gpus:
        raise UnrecognisedOutput("no `GPU N: name (UUID: ...)` lines")
    if skipped:
        warnings.append(f"ignored {skipped} line(s) that are not `nvidia-smi -L` lines")
    return ParsedOutput(
        format="nvidia-smi-list", source="nvidia-smi", gpus=gpus, warnings=warnings + uuid_warnings(gpus)
    )
