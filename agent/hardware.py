"""What is in this machine: GPUs (NVML → nvidia-smi → rocm-smi → Apple → none) and the host.

Each detection step is skipped quietly when its library or tool is absent, and gives a warning
and falls through to the next when the tool fails, hangs or prints something unreadable: the
agent must start on any donor machine, so nothing here raises. The text parsing lives in the
pure functions of ``agent.parsers`` (tested on real captures); this module only runs tools and
merges what they say. Commands go through a ``runner`` and NVML through a module argument, so
tests can stand in for both.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from agent.models import ForeignProcess, GpuInfo, GpuTelemetry, HostReport, ParsedOutput, Source
from agent.parsers import (
    FORMATS,
    UnrecognisedOutput,
    parse_any,
    parse_compute_apps_csv,
    parse_nvidia_list,
    parse_nvidia_xml,
    parse_nvml_snapshot,
    parse_query_gpu_csv,
    parse_rocm_json,
    parse_sysctl,
    parse_system_profiler,
)
from agent.parsers.nvidia_csv import (
    APPS_FIELDS,
    INVENTORY_FIELDS,
    INVENTORY_OLD,
    MIG_HIDDEN,
    TELEMETRY_FIELDS,
)

__all__ = [
    "FORMATS",
    "ForeignProcess",
    "GpuInfo",
    "GpuTelemetry",
    "HostReport",
    "ParsedOutput",
    "ToolError",
    "ToolMissing",
    "UnrecognisedOutput",
    "attach_gpu_indices",
    "detect",
    "detect_gpus",
    "host_info",
    "merge_nvidia",
    "nvml_snapshot",
    "parse_any",
    "read_telemetry",
    "report_from_parsed",
    "run_tool",
]

log = logging.getLogger(__name__)

ROCM_INVENTORY = [
    "rocm-smi",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showuniqueid",
    "--showbus",
    "--showdriverversion",
    "--json",
]
ROCM_TELEMETRY = ["rocm-smi", "--showuse", "--showtemp", "--showpower", "--showmeminfo", "vram", "--showpids", "--json"]
APPS_QUERY = ["nvidia-smi", f"--query-compute-apps={','.join(APPS_FIELDS)}", "--format=csv,nounits"]
APPLE_PROFILER = ["system_profiler", "-json", "SPDisplaysDataType", "SPHardwareDataType"]
APPLE_SYSCTL = ["sysctl", "hw.memsize", "machdep.cpu.brand_string"]


class ToolError(RuntimeError):
    """A tool ran but failed (non-zero exit, timeout); ``output`` keeps what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class ToolMissing(ToolError):
    """The tool or library is not installed: the detection step is skipped without a warning."""


Runner = Callable[[list[str]], str]


def run_tool(args: list[str], timeout: float = 15.0) -> str:
    """Run a command and return its stdout; ToolMissing / ToolError otherwise (never hangs)."""
    exe = shutil.which(args[0])
    if exe is None:
        raise ToolMissing(f"{args[0]} not found")
    try:
        proc = subprocess.run(
            [exe, *args[1:]], capture_output=True, text=True, errors="replace", timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{args[0]} did not answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise ToolError(f"{args[0]} could not run: {exc}") from exc
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise ToolError(f"{' '.join(args[:2])} exited {proc.returncode}: {said[0] if said else ''}", proc.stdout)
    return proc.stdout


# --- NVML ---------------------------------------------------------------------------------------


def _load_nvml(nvml: Any) -> Any:
    if nvml is not None:
        return nvml
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:
        raise ToolMissing("nvidia-ml-py is not installed") from exc
    return pynvml


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return ""  # another PID namespace (container) or already gone


def nvml_snapshot(nvml: Any = None) -> dict[str, Any]:
    """Read NVML into the plain dict ``agent.parsers.nvml.parse_nvml_snapshot`` understands.

    Optional readings (temperature, power, MIG, processes) that a GPU does not support are left
    out rather than failing the whole read.
    """
    nvml = _load_nvml(nvml)
    error = getattr(nvml, "NVMLError", Exception)

    def attempt(fn: str, *args: Any) -> Any:
        try:
            return getattr(nvml, fn)(*args)
        except (error, AttributeError):
            return None

    try:
        nvml.nvmlInit()
    except error as exc:
        if "LibraryNotFound" in type(exc).__name__ or "Shared Library Not Found" in str(exc):
            raise ToolMissing("NVML library not found (no NVIDIA driver)") from exc
        raise ToolError(f"NVML: {exc}") from exc
    try:
        snapshot: dict[str, Any] = {
            "driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": attempt("nvmlSystemGetCudaDriverVersion"),
            "nvml": [],
        }
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            entry: dict[str, Any] = {
                "index": index,
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
                "memory_total": memory.total,
                "memory_used": memory.used,
            }
            if (util := attempt("nvmlDeviceGetUtilizationRates", handle)) is not None:
                entry["util_gpu"], entry["util_mem"] = util.gpu, util.memory
            if (cc := attempt("nvmlDeviceGetCudaComputeCapability", handle)) is not None:
                entry["cc"] = list(cc)
            entry["temperature_c"] = attempt(
                "nvmlDeviceGetTemperature", handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            )
            entry["power_mw"] = attempt("nvmlDeviceGetPowerUsage", handle)
            mig = attempt("nvmlDeviceGetMigMode", handle)
            if mig is not None:
                entry["mig_mode"] = int(mig[0])
                if mig[0]:
                    entry["mig_devices"] = _nvml_mig_devices(nvml, handle, attempt)
            procs = attempt("nvmlDeviceGetComputeRunningProcesses", handle) or []
            entry["procs"] = [
                {"pid": p.pid, "used_memory": p.usedGpuMemory, "name": _process_name(p.pid)} for p in procs
            ]
            snapshot["nvml"].append(entry)
        return snapshot
    except error as exc:  # a GPU that fell off the bus, a driver/library mismatch ...
        raise ToolError(f"NVML: {exc}") from exc
    finally:
        attempt("nvmlShutdown")


def _nvml_mig_devices(nvml: Any, handle: Any, attempt: Callable[..., Any]) -> list[dict[str, Any]]:
    devices = []
    for slot in range(attempt("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
        mig = attempt("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
        if mig is None:
            continue  # empty slot
        memory = attempt("nvmlDeviceGetMemoryInfo", mig)
        devices.append(
            {
                "index": slot,
                "uuid": _text(attempt("nvmlDeviceGetUUID", mig) or ""),
                "name": _text(attempt("nvmlDeviceGetName", mig) or ""),
                "memory_total": memory.total if memory is not None else None,
            }
        )
    return devices


# --- nvidia-smi ---------------------------------------------------------------------------------


def merge_nvidia(
    csv_gpus: list[GpuInfo], xml_gpus: list[GpuInfo], listed: list[GpuInfo]
) -> tuple[list[GpuInfo], list[str]]:
    """Combine ``--query-gpu`` (the inventory), ``-q -x`` (CUDA version, MIG instances with their
    memory) and ``-L`` (MIG UUIDs and profile names) into one list; a MIG parent becomes its
    instances. Pure, so it is tested on the captures."""
    cuda = next((g.cuda_version for g in xml_gpus if g.cuda_version), None)
    merged: list[GpuInfo] = []
    warnings: list[str] = []
    for gpu in csv_gpus:
        gpu = gpu.model_copy(update={"cuda_version": gpu.cuda_version or cuda})
        if gpu.mig_mode != "enabled":
            merged.append(gpu)
            continue
        named = {m.mig_device_index: m for m in listed if m.mig_parent_index == gpu.index}
        instances = [m for m in xml_gpus if m.mig_parent_index == gpu.index] or list(named.values())
        if not instances:
            warnings.append(f"GPU {gpu.index} has MIG enabled but no MIG instance could be listed: reported whole")
            merged.append(gpu)
        for instance in instances:
            name = named.get(instance.mig_device_index)
            merged.append(
                instance.model_copy(
                    update={
                        "index": gpu.index,
                        "uuid": (name.uuid if name else None) or instance.uuid,
                        "name": name.name if name else instance.name,
                        "compute_capability": gpu.compute_capability,
                        "driver_version": gpu.driver_version,
                        "cuda_version": gpu.cuda_version,
                        "mig_mode": "enabled",
                        "mig_parent_index": gpu.index,
                    }
                )
            )
    return merged, warnings


def _query(runner: Runner, fields: list[str]) -> str:
    return runner(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,nounits"])


def _from_nvidia_smi(runner: Runner) -> ParsedOutput:
    warnings: list[str] = []
    try:
        try:
            csv_text = _query(runner, INVENTORY_FIELDS)
        except ToolError as exc:
            if isinstance(exc, ToolMissing) or "field" not in str(exc).lower():
                raise
            csv_text = _query(runner, INVENTORY_OLD)  # driver < 510: no compute_cap field
        inventory: ParsedOutput | None = parse_query_gpu_csv(csv_text)
    except ToolMissing:
        raise
    except (ToolError, UnrecognisedOutput) as exc:
        warnings.append(f"nvidia-smi --query-gpu: {exc}; trying -q -x")
        inventory = None
    try:
        xml: ParsedOutput | None = parse_nvidia_xml(runner(["nvidia-smi", "-q", "-x"]))
    except (ToolError, UnrecognisedOutput) as exc:
        if inventory is None:
            raise ToolError(f"nvidia-smi gave no readable inventory ({exc})") from exc
        warnings.append(f"nvidia-smi -q -x: {exc} (no CUDA version or MIG instances)")
        xml = None
    if inventory is None:
        assert xml is not None
        return xml.model_copy(update={"warnings": warnings + xml.warnings})
    listed: list[GpuInfo] = []
    if any(g.mig_mode == "enabled" for g in inventory.gpus):
        try:
            listed = parse_nvidia_list(runner(["nvidia-smi", "-L"])).gpus
        except (ToolError, UnrecognisedOutput) as exc:
            warnings.append(f"nvidia-smi -L: {exc} (MIG instances without UUIDs)")
    gpus, merge_warnings = merge_nvidia(inventory.gpus, xml.gpus if xml else [], listed)
    kept = [w for w in inventory.warnings + (xml.warnings if xml else []) if MIG_HIDDEN not in w]
    return inventory.model_copy(update={"gpus": gpus, "warnings": warnings + kept + merge_warnings})


# --- AMD and Apple ------------------------------------------------------------------------------


def _run_keeping_output(runner: Runner, args: list[str]) -> str:
    """rocm-smi exits non-zero when one of many readings is unsupported; keep its JSON then."""
    try:
        return runner(args)
    except ToolMissing:
        raise
    except ToolError as exc:
        if "{" in exc.output:
            return exc.output
        raise


def _from_rocm(runner: Runner) -> ParsedOutput:
    return parse_rocm_json(_run_keeping_output(runner, ROCM_INVENTORY))


def _from_apple(runner: Runner, system: str) -> ParsedOutput:
    if system != "Darwin":
        raise ToolMissing("not macOS")
    try:
        parsed = parse_system_profiler(runner(APPLE_PROFILER))
    except ToolMissing:
        raise
    except (ToolError, UnrecognisedOutput) as exc:
        fallback = parse_sysctl(runner(APPLE_SYSCTL))
        return fallback.model_copy(update={"warnings": [f"system_profiler: {exc}", *fallback.warnings]})
    if any(g.vendor == "apple" and g.memory_gb == 0 for g in parsed.gpus):
        try:
            memory = parse_sysctl(runner(APPLE_SYSCTL)).gpus
        except (ToolError, UnrecognisedOutput):
            memory = []
        if memory:
            gpus = [
                g.model_copy(update={"memory_gb": memory[0].memory_gb}) if g.vendor == "apple" else g
                for g in parsed.gpus
            ]
            parsed = parsed.model_copy(
                update={"gpus": gpus, "warnings": [w for w in parsed.warnings if "memory size" not in w]}
            )
    return parsed


# --- orchestration ------------------------------------------------------------------------------


def detect_gpus(
    runner: Runner = run_tool, nvml: Any = None, system: str | None = None
) -> tuple[list[GpuInfo], Source, list[str]]:
    """Try each method in turn; the first that finds GPUs wins. Returns (gpus, source, warnings)."""
    system = system or platform.system()
    steps: list[tuple[Source, Callable[[], ParsedOutput]]] = [
        ("nvml", lambda: parse_nvml_snapshot(nvml_snapshot(nvml))),
        ("nvidia-smi", lambda: _from_nvidia_smi(runner)),
        ("rocm-smi", lambda: _from_rocm(runner)),
        ("apple", lambda: _from_apple(runner, system)),
    ]
    warnings: list[str] = []
    for source, step in steps:
        try:
            parsed = step()
        except ToolMissing:
            continue
        except (ToolError, UnrecognisedOutput) as exc:
            warnings.append(f"{source}: {exc}")
            continue
        except Exception as exc:  # a detection bug must not stop the agent
            log.exception("GPU detection through %s failed", source)
            warnings.append(f"{source}: unexpected {type(exc).__name__}: {exc}")
            continue
        if parsed.gpus:
            return parsed.gpus, source, warnings + parsed.warnings
        warnings.extend(parsed.warnings)
    return [], "none", warnings


def _os_name() -> str:
    system, release = platform.system(), platform.release()
    try:
        pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        pretty = f"macOS {platform.mac_ver()[0]}" if system == "Darwin" else ""
    return f"{pretty} ({system} {release})" if pretty else f"{system} {release}"


GB = 10**9  # Coop's sizes (coop/spec.py): a job's `memory: 24GB` is 24 * 10^9 bytes


def host_gb(size_bytes: int) -> float:
    """Host RAM and disk in GB, the unit jobs ask in (``memory: 24GB``), rounded down so a node never
    claims more than it has: a 24 GiB machine is 25.76 GB, and takes a 24GB job."""
    return math.floor(size_bytes / GB * 100) / 100


def _free_gb(path: Path) -> float:
    while not path.exists() and path != path.parent:
        path = path.parent  # the state dir may not exist before the first join
    return host_gb(shutil.disk_usage(path).free)


def host_info(state_dir: Path | None = None) -> dict[str, Any]:
    """The node half of a HostReport: CPUs this process may use, RAM, free disk, versions."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    try:
        ray_version: str | None = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        ray_version = None
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "cpus": cpus,
        "memory_gb": host_gb(psutil.virtual_memory().total),
        "disk_gb": _free_gb(state_dir or Path.home()),
        "python_version": platform.python_version(),
        "ray_version": ray_version,
    }


def report_from_parsed(
    parsed: ParsedOutput | None, warnings: list[str] | None = None, state_dir: Path | None = None
) -> HostReport:
    """This machine's node facts with the GPUs of ``parsed`` (``inspect --from``); None: CPU only."""
    gpus = parsed.gpus if parsed else []
    return HostReport(
        **host_info(state_dir),
        gpus=gpus,
        source=parsed.source if parsed and gpus else "none",
        warnings=[*(warnings or []), *(parsed.warnings if parsed else [])],
    )


def detect(
    state_dir: Path | None = None, *, runner: Runner = run_tool, nvml: Any = None, system: str | None = None
) -> HostReport:
    """Inspect the live machine. Never raises for missing or broken tools (see ``warnings``)."""
    gpus, source, warnings = detect_gpus(runner, nvml, system)
    return HostReport(**host_info(state_dir), gpus=gpus, source=source, warnings=warnings)


# --- telemetry ----------------------------------------------------------------------------------


def attach_gpu_indices(processes: list[ForeignProcess], gpus: list[GpuInfo]) -> list[ForeignProcess]:
    """Fill ``gpu_index`` from ``gpu_uuid``, where the UUID names exactly one physical GPU."""
    by_uuid: dict[str, set[int]] = {}
    for gpu in gpus:
        if gpu.uuid:
            by_uuid.setdefault(gpu.uuid, set()).add(gpu.index)
    attached = []
    for proc in processes:
        indices = by_uuid.get(proc.gpu_uuid or "", set())
        if proc.gpu_index is None and len(indices) == 1:
            proc = proc.model_copy(update={"gpu_index": next(iter(indices))})
        attached.append(proc)
    return attached


def _telemetry_from_nvidia_smi(runner: Runner) -> ParsedOutput:
    readings = parse_query_gpu_csv(_query(runner, TELEMETRY_FIELDS))
    try:
        apps = parse_compute_apps_csv(runner(APPS_QUERY)).processes
    except (ToolError, UnrecognisedOutput) as exc:
        if isinstance(exc, ToolMissing):
            raise
        log.warning("nvidia-smi --query-compute-apps failed: %s", exc)
        apps = []
    return readings.model_copy(update={"processes": attach_gpu_indices(apps, readings.gpus)})


def read_telemetry(*, runner: Runner = run_tool, nvml: Any = None) -> tuple[list[GpuTelemetry], list[ForeignProcess]]:
    """Per-GPU readings and every process holding a GPU, for heartbeats; ([], []) without GPUs.

    The processes are all compute processes (and, from NVML, their names): the caller decides
    which are foreign by leaving out the ones Coop started. Like detection, it never raises:
    a failing method is logged and the next one tried.
    """
    steps: list[tuple[str, Callable[[], ParsedOutput]]] = [
        ("NVML", lambda: parse_nvml_snapshot(nvml_snapshot(nvml))),
        ("nvidia-smi", lambda: _telemetry_from_nvidia_smi(runner)),
        ("rocm-smi", lambda: parse_rocm_json(_run_keeping_output(runner, ROCM_TELEMETRY))),
    ]
    for name, step in steps:
        try:
            parsed = step()
        except ToolMissing:
            continue
        except (ToolError, UnrecognisedOutput) as exc:
            log.warning("%s telemetry failed: %s", name, exc)
            continue
        except Exception:  # a parsing bug must not stop the heartbeat
            log.exception("%s telemetry failed unexpectedly", name)
            continue
        if parsed.telemetry:
            return parsed.telemetry, parsed.processes
    return [], []
