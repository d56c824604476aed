"""Hardware parsers on every captured output in tests/data/hardware, and detection with stand-ins."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import hardware
from agent.hardware import ToolError, ToolMissing, detect, detect_gpus, merge_nvidia, read_telemetry
from agent.models import GpuInfo, HostReport, ParsedOutput
from agent.parsers import FORMATS, UnrecognisedOutput, parse_any, parse_nvidia_xml, parse_query_gpu_csv
from agent.parsers.common import clean_uuid, compute_capability_from_name, memory_gib, number
from coop import schemas

DATA = Path(__file__).resolve().parent.parent / "data" / "hardware"
FILES = sorted(p for p in DATA.rglob("*") if p.is_file())
H100_MIB = 81559 / 1024  # 79.65 GiB: what nvidia-smi and NVML say for an "80GB" H100


def read(relative: str) -> str:
    return (DATA / relative).read_text()


@dataclass
class Expect:
    """What one file must parse to; ``format=None`` means parse_any must refuse it."""

    format: str | None = None
    names: tuple[str, ...] = ()  # one per GPU, in order
    memory_gb: tuple[float, ...] = ()  # one per GPU, compared within MEMORY_TOLERANCE
    cc: tuple[float | None, ...] = ()
    driver: str | None = None
    cuda: str | None = None
    vendor: str = "nvidia"
    mig_instances: int = 0
    mig_mode: str | None = None
    uuid: str | None = None  # of the first GPU
    processes: int = 0
    warning: str | None = None  # a substring one of the warnings must contain


MEMORY_TOLERANCE = 0.05
H100 = "NVIDIA H100 80GB HBM3"
MI100 = "AMD Instinct MI100"
H200 = "NVIDIA H200"
H200_UUID = "GPU-0933e96b-9c19-f24c-94d2-11c97f740462"
H100_UUID = "GPU-6d772189-2cef-c7f5-1d2d-f616cd93f96e"
H100_COOP_UUID = "GPU-eecd7206-797e-e895-b9cb-1fcb2ce79f41"

EXPECTED: dict[str, Expect] = {
    "README.md": Expect(),
    "h100-sxm/README.md": Expect(),
    "public/SOURCES.md": Expect(),
    "h100-sxm/calibration.json": Expect(),
    # captured on the device machine on 2026-12-04 (see h200/README.md)
    "h200/README.md": Expect(),
    "h200/calibration.json": Expect(),
    "h200/coop-agent-inspect.json": Expect(),
    "h200/nvidia-smi-q.xml": Expect(
        "nvidia-smi-xml", (H200,), (140.401,), (9.0,), "580.159.04", "13.0", mig_mode="disabled", uuid=H200_UUID
    ),
    "h100-sxm/host.txt": Expect("nvidia-smi-list", (H100,), (80.0,), (9.0,), uuid=H100_UUID, warning="ignored"),
    # captured by bench/gpu_check.sh on the device machine (see h100-coop-agent/README.md)
    "h100-coop-agent/README.md": Expect(),
    "h100-coop-agent/nvidia-smi-L.txt": Expect("nvidia-smi-list", (H100,), (80.0,), (9.0,), uuid=H100_COOP_UUID),
    "h100-coop-agent/nvidia-smi-compute-apps.csv": Expect("nvidia-smi-apps-csv", processes=1),
    "h100-coop-agent/nvidia-smi-q-x.xml": Expect(
        "nvidia-smi-xml", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0", mig_mode="disabled", uuid=H100_COOP_UUID
    ),
    "h100-coop-agent/nvidia-smi-query-gpu.csv": Expect(
        "nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,), "580.159.04", mig_mode="disabled", uuid=H100_COOP_UUID
    ),
    "h100-coop-agent/nvidia-smi-telemetry.csv": Expect("nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,)),
    "h100-coop-agent/nvidia-smi.txt": Expect("nvidia-smi-table", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0"),
    "h100-sxm/nvidia-smi-busy.txt": Expect(
        "nvidia-smi-table", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0", mig_mode="disabled", processes=1
    ),
    "h100-sxm/nvidia-smi-idle.txt": Expect(
        "nvidia-smi-table", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0", mig_mode="disabled"
    ),
    "h100-sxm/nvidia-smi-q.xml": Expect(
        "nvidia-smi-xml", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0", mig_mode="disabled", uuid=H100_UUID
    ),
    "h100-sxm/nvml-and-torch.json": Expect(
        "nvml-snapshot-json", (H100,), (H100_MIB,), (9.0,), "580.159.04", "13.0", uuid=H100_UUID
    ),
    "h100-sxm/query-apps-busy.csv": Expect("nvidia-smi-apps-csv", processes=1),
    "h100-sxm/query-gpu-busy.csv": Expect(
        "nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,), "580.159.04", mig_mode="disabled", uuid=H100_UUID
    ),
    "h100-sxm/query-gpu-idle.csv": Expect(
        "nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,), "580.159.04", mig_mode="disabled", uuid=H100_UUID
    ),
    "h100-sxm/query-gpu-idle-nounits.csv": Expect(
        "nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,), "580.159.04", uuid=H100_UUID, warning="no header"
    ),
    "public/6x-mi100-rocm-smi.json": Expect(
        "rocm-smi-json", (MI100,) * 6, (31.98,) * 6, (None,) * 6, "6.2.4", vendor="amd", processes=1
    ),
    "public/a100-sxm4-80gb-mig-q-x.xml": Expect(
        "nvidia-smi-xml",
        ("NVIDIA A100-SXM4-80GB MIG",) * 4,
        (19.5,) * 4,
        (8.0,) * 4,
        "535.54.03",
        "12.2",
        mig_instances=4,
        mig_mode="enabled",
        warning="attached_gpus says 4",
    ),
    "public/dual-rtx2080-q-x.xml": Expect(
        "nvidia-smi-xml",
        ("NVIDIA GeForce RTX 2080",) * 2,
        (8.0, 8.0),
        (7.5, 7.5),
        "590.44.01",
        "13.1",
        uuid="GPU-12345678-aaaa-bbbb-cccc-0123456789ab",
        warning="appears on 2 GPUs",
    ),
    "public/h100-mig-L.txt": Expect(
        "nvidia-smi-list",
        (f"{H100} MIG 3g.40gb", f"{H100} MIG 2g.20gb", f"{H100} MIG 1g.10gb", f"{H100} MIG 1g.10gb"),
        (40.0, 20.0, 10.0, 10.0),
        (9.0,) * 4,
        mig_instances=4,
        mig_mode="enabled",
    ),
    "public/h100-mig-query-gpu-idle.csv": Expect(
        "nvidia-smi-csv",
        (H100,),
        (H100_MIB,),
        (9.0,),
        "590.48.01",
        mig_mode="enabled",
        warning="does not list MIG instances",
    ),
    "public/m1pro-spdisplays.json": Expect(
        "system-profiler-json", ("Apple M1 Pro",), (0.0,), (None,), vendor="apple", warning="memory size"
    ),
    "public/m5max-sphardware.json": Expect(
        "system-profiler-json", ("Apple M5 Max",), (128.0,), (None,), vendor="apple"
    ),
    "public/rtx3090-q-x.xml": Expect(
        "nvidia-smi-xml", ("NVIDIA GeForce RTX 3090",), (24.0,), (8.6,), "525.147.05", "12.0"
    ),
    "public/rtx4080super-query-gpu-load.csv": Expect(
        "nvidia-smi-csv", ("NVIDIA GeForce RTX 4080 SUPER",), (15.99,), (8.9,), "595.71.05"
    ),
    "public/rtx4080super-smi-load.txt": Expect(
        "nvidia-smi-table",
        ("NVIDIA GeForce RTX 4080 ...",),
        (15.99,),
        (8.9,),
        "595.71.05",
        "13.2",
        processes=7,
        warning="truncated",
    ),
    "synthetic/synthetic-apple-sysctl.txt": Expect("sysctl", ("Apple M2 Max",), (32.0,), (None,), vendor="apple"),
    "synthetic/synthetic-garbled.txt": Expect(),
    "synthetic/synthetic-m1pro-displays-and-hardware.json": Expect(
        "system-profiler-json", ("Apple M1 Pro",), (32.0,), (None,), vendor="apple"
    ),
    "synthetic/synthetic-nvidia-smi-failed.txt": Expect(),
    "synthetic/synthetic-nvml-mig-and-ada.json": Expect(
        "nvml-snapshot-json",
        ("NVIDIA A100-SXM4-80GB MIG 3g.40gb", "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "NVIDIA RTX 6000 Ada Generation"),
        (39.25, 9.75, 47.99),
        (8.0, 8.0, 8.9),
        "535.54.03",
        "12.2",
        mig_instances=2,
        processes=1,
    ),
    "synthetic/synthetic-q-x-truncated.xml": Expect(),
    "synthetic/synthetic-query-gpu-mixed-crlf.csv": Expect(
        "nvidia-smi-csv", ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"), (23.99, 24.0), (8.9, 8.6), "560.94"
    ),
    "synthetic/synthetic-query-gpu-truncated.csv": Expect(
        "nvidia-smi-csv", (H100,), (H100_MIB,), (9.0,), "580.159.04", warning="truncated"
    ),
    "synthetic/synthetic-query-gpu-upper-case-keys.csv": Expect(
        "nvidia-smi-csv", ("NVIDIA L4", "Tesla T4"), (22.49, 15.0), (8.9, 7.5), "535.104.05"
    ),
    "synthetic/synthetic-rocm-smi-mixed-case.json": Expect(
        "rocm-smi-json", (MI100, MI100), (31.98, 31.98), (None, None), "6.2.4", vendor="amd", uuid="0x1a2b3c4d5e6f7081"
    ),
    "synthetic/synthetic-windows-smi.txt": Expect(
        "nvidia-smi-table", ("NVIDIA GeForce RTX 4090",), (23.99,), (8.9,), "595.71", "13.2", processes=2
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    found = {p.relative_to(DATA).as_posix() for p in FILES}
    assert found - EXPECTED.keys() == set(), "new file in tests/data/hardware: add it to EXPECTED"
    assert EXPECTED.keys() - found == set(), "EXPECTED names a file that is gone"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_fixture_parses_as_expected(path: Path) -> None:
    expect = EXPECTED.get(path.relative_to(DATA).as_posix(), Expect())
    text = path.read_text()
    if expect.format is None:
        with pytest.raises(UnrecognisedOutput, match="Formats Coop reads"):
            parse_any(text)
        return
    parsed = parse_any(text)
    assert parsed.format == expect.format
    assert parsed.format in FORMATS
    assert len(parsed.gpus) == len(expect.names)
    for gpu, name, memory, cc in zip(parsed.gpus, expect.names, expect.memory_gb, expect.cc, strict=True):
        assert gpu.name.startswith(name)
        assert gpu.memory_gb == pytest.approx(memory, abs=MEMORY_TOLERANCE)
        assert gpu.compute_capability == cc
        assert gpu.vendor == expect.vendor
        assert gpu.driver_version == expect.driver
        assert gpu.cuda_version == expect.cuda
        if expect.mig_mode is not None:
            assert gpu.mig_mode == expect.mig_mode
    if parsed.gpus:
        assert parsed.gpus[0].uuid == expect.uuid or expect.uuid is None
    assert sum(g.mig_parent_index is not None for g in parsed.gpus) == expect.mig_instances
    assert len(parsed.processes) == expect.processes
    if expect.warning:
        assert any(expect.warning in w for w in parsed.warnings), parsed.warnings
    assert ParsedOutput.model_validate_json(parsed.model_dump_json()) == parsed


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_cut_or_damaged_output_is_read_or_refused_never_a_crash(path: Path) -> None:
    """Output cut anywhere, or with cells blanked, parses or raises UnrecognisedOutput: nothing else."""
    text = path.read_text()
    variants = [text[: len(text) * k // 23] for k in range(1, 23)]
    variants += [text.replace(", ", ", [N/A] ", 3), text.replace("MiB", "-5 MiB"), text.replace("\n", "\r\n")]
    for variant in variants:
        try:
            parsed = parse_any(variant)
        except UnrecognisedOutput:
            continue
        assert all(g.memory_gb >= 0 and g.index >= 0 for g in parsed.gpus)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(DATA).as_posix())
def test_readings_fit_the_wire_models(path: Path) -> None:
    """Telemetry and processes must be accepted by coop.schemas as the heartbeat sends them."""
    try:
        parsed = parse_any(path.read_text())
    except UnrecognisedOutput:
        return
    for reading in parsed.telemetry:
        schemas.GpuTelemetry.model_validate(reading.model_dump())
    for proc in parsed.processes:
        schemas.ForeignProcess.model_validate(proc.model_dump(exclude={"gpu_uuid", "kind"}))
    for index, gpu in enumerate(parsed.gpus):
        if gpu.memory_gb > 0:
            schemas.GpuSpec.model_validate(gpu.model_dump(include=set(schemas.GpuSpec.model_fields)) | {"index": index})


# --- details of single formats ---------------------------------------------------------------


def test_mig_instances_keep_their_parent_index_and_own_memory() -> None:
    parsed = parse_any(read("public/a100-sxm4-80gb-mig-q-x.xml"))
    assert {g.index for g in parsed.gpus} == {0}
    assert [g.mig_parent_index for g in parsed.gpus] == [0, 0, 0, 0]
    assert [g.mig_device_index for g in parsed.gpus] == [0, 1, 2, 3]
    assert all(g.memory_gb == pytest.approx(19968 / 1024) for g in parsed.gpus)


def test_masked_uuids_are_dropped_and_repeats_are_kept_with_a_warning() -> None:
    listing = parse_any(read("public/h100-mig-L.txt"))
    assert [g.uuid for g in listing.gpus] == [
        None,  # MIG-00000000-0000-... carries no identity
        "MIG-00000001-0000-0000-0000-000000000001",
        "MIG-00000002-0000-0000-0000-000000000002",
        "MIG-00000003-0000-0000-0000-000000000003",
    ]
    csv = parse_any(read("public/rtx4080super-query-gpu-load.csv"))
    assert csv.gpus[0].uuid is None  # GPU-00000000-0000-0000-0000-000000000000
    dual = parse_any(read("public/dual-rtx2080-q-x.xml"))
    assert [g.index for g in dual.gpus] == [0, 1]
    assert dual.gpus[0].uuid == dual.gpus[1].uuid


def test_telemetry_and_processes_from_the_busy_h100() -> None:
    csv = parse_any(read("h100-sxm/query-gpu-busy.csv"))
    assert csv.telemetry[0].model_dump() == {
        "index": 0,
        "utilization_pct": 98.0,
        "memory_used_gb": pytest.approx(1011 / 1024, abs=0.001),
        "temperature_c": 54.0,
        "power_w": 616.76,
    }
    apps = parse_any(read("h100-sxm/query-apps-busy.csv"))
    assert apps.processes[0].pid == 461 and apps.processes[0].name == "python3"
    assert apps.processes[0].used_memory_gb == pytest.approx(1002 / 1024, abs=0.001)
    table = parse_any(read("h100-sxm/nvidia-smi-busy.txt"))
    assert (table.processes[0].pid, table.processes[0].gpu_index, table.processes[0].kind) == (461, 0, "C")
    assert table.telemetry[0].utilization_pct == 98.0


def test_windows_processes_without_memory() -> None:
    parsed = parse_any(read("synthetic/synthetic-windows-smi.txt"))
    assert [(p.pid, p.kind, p.used_memory_gb) for p in parsed.processes] == [(4512, "C+G", None), (10520, "C", None)]


@pytest.mark.parametrize(
    ("name", "cc"),
    [
        ("NVIDIA H100 80GB HBM3", 9.0),
        ("NVIDIA H200", 9.0),
        ("NVIDIA A100-SXM4-80GB", 8.0),
        ("NVIDIA GeForce RTX 4090", 8.9),
        ("NVIDIA GeForce RTX 4080 SUPER", 8.9),
        ("NVIDIA GeForce RTX 4080 ...", 8.9),
        ("NVIDIA GeForce RTX 3090 Ti", 8.6),
        ("NVIDIA GeForce RTX 2080 Ti", 7.5),
        ("Tesla V100-SXM2-32GB", 7.0),
        ("Tesla T4", 7.5),
        ("NVIDIA L4", 8.9),
        ("NVIDIA L40S", 8.9),
        ("NVIDIA A10G", 8.6),
        ("NVIDIA RTX A6000", 8.6),
        ("NVIDIA RTX 6000 Ada Generation", 8.9),
        ("Quadro RTX 6000", 7.5),
        ("NVIDIA GeForce RTX 5090", 12.0),
        ("NVIDIA B200", 10.0),
        ("NVIDIA GeForce GTX 1080 Ti", 6.1),
        ("Tesla P100-PCIE-16GB", 6.0),
        ("Some Future GPU", None),
    ],
)
def test_compute_capability_from_the_model_name(name: str, cc: float | None) -> None:
    assert compute_capability_from_name(name) == cc


def test_value_helpers() -> None:
    assert number("[N/A]") is None and number("[Not Supported]") is None and number("") is None
    assert number("616.76 W") == 616.76 and number("98 %") == 98.0
    assert memory_gib("81559 MiB") == pytest.approx(79.647, abs=0.001)
    assert memory_gib("81559") == memory_gib("81559 MiB")
    assert memory_gib("128 GB", default_unit="gb") == 128.0
    assert memory_gib("[N/A]") is None
    assert clean_uuid("N/A") is None and clean_uuid("GPU-00000000-0000-0000-0000-000000000000") is None
    assert clean_uuid(H100_UUID) == H100_UUID


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n\t\n", "empty"),
        ("\x00\x01binary", "binary"),
        ('{"bf16_matmul_tflops": 1}', "JSON"),
        ("<html><body>not nvidia</body></html>", "nothing matched"),
        ("index, name\n", "no readable GPU rows"),
        ("1, 2, 3\n", "nothing matched"),
    ],
)
def test_unrecognised_output_says_why_and_what_is_known(text: str, reason: str) -> None:
    with pytest.raises(UnrecognisedOutput) as raised:
        parse_any(text)
    message = str(raised.value)
    assert reason in message
    assert all(name in message for name in FORMATS)


def test_apps_query_without_processes_is_recognised() -> None:
    parsed = parse_any("pid, process_name, used_gpu_memory [MiB], gpu_uuid\n")
    assert (parsed.format, parsed.processes) == ("nvidia-smi-apps-csv", [])


# --- merging the nvidia-smi outputs ----------------------------------------------------------


def test_merge_adds_the_cuda_version_from_the_xml() -> None:
    gpus, warnings = merge_nvidia(
        parse_any(read("h100-sxm/query-gpu-idle.csv")).gpus, parse_any(read("h100-sxm/nvidia-smi-q.xml")).gpus, []
    )
    assert [(g.name, g.cuda_version, g.driver_version) for g in gpus] == [(H100, "13.0", "580.159.04")]
    assert warnings == []


def test_merge_replaces_a_mig_parent_by_its_xml_instances_named_from_the_listing() -> None:
    inventory = parse_query_gpu_csv(
        "index, uuid, name, memory.total [MiB], driver_version, compute_cap, mig.mode.current\n"
        "0, GPU-513536b6-7d19-9063-b049-1e69664bb298, NVIDIA A100-SXM4-80GB, 81920 MiB, 535.54.03, 8.0, Enabled\n"
    )
    xml = parse_nvidia_xml(read("public/a100-sxm4-80gb-mig-q-x.xml"))
    listing = [
        GpuInfo(
            index=0,
            uuid="MIG-1",
            name="NVIDIA A100-SXM4-80GB MIG 1g.20gb",
            memory_gb=20,
            mig_parent_index=0,
            mig_device_index=1,
        )
    ]
    gpus, warnings = merge_nvidia(inventory.gpus, xml.gpus, listing)
    assert len(gpus) == 4 and warnings == []
    assert gpus[1].uuid == "MIG-1" and gpus[1].name.endswith("MIG 1g.20gb")
    assert gpus[1].memory_gb == pytest.approx(19.5)  # the XML's real size, not the profile's
    assert all(g.cuda_version == "12.2" and g.compute_capability == 8.0 for g in gpus)


def test_merge_falls_back_to_the_listing_then_to_the_whole_gpu() -> None:
    inventory = parse_any(read("public/h100-mig-query-gpu-idle.csv")).gpus
    listed = parse_any(read("public/h100-mig-L.txt")).gpus
    gpus, _ = merge_nvidia(inventory, [], listed)
    assert [g.memory_gb for g in gpus] == [40.0, 20.0, 10.0, 10.0]
    assert all(g.driver_version == "590.48.01" for g in gpus)
    whole, warnings = merge_nvidia(inventory, [], [])
    assert whole == inventory and "reported whole" in warnings[0]


# --- detection with stand-in tools -------------------------------------------------------------


def fake_runner(outputs: dict[str, Any]) -> Any:
    """A runner answering by command prefix: text, an exception to raise, or ToolMissing when absent."""

    def run(args: list[str]) -> str:
        command = " ".join(args)
        for prefix, answer in outputs.items():
            if command.startswith(prefix):
                if isinstance(answer, BaseException):
                    raise answer
                return str(answer)
        raise ToolMissing(f"{args[0]} not found")

    return run


class FakeNvml:
    """Just enough of pynvml to stand for one GPU, from the values in nvml-and-torch.json."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's name
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, init_error: Exception | None = None, mig: bool = False) -> None:
        self.init_error, self.mig, self.shutdown = init_error, mig, False

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return "580.159.04"

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 13000

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return f"gpu{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes:  # noqa: N802
        return b"NVIDIA H100 80GB HBM3" if handle == "gpu0" else b"NVIDIA H100 80GB HBM3 MIG 3g.40gb"

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return H100_UUID if handle == "gpu0" else "MIG-5a1e0000-0000-0000-0000-000000000001"

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:  # noqa: N802
        if handle == "gpu0":
            return SimpleNamespace(total=85520809984, used=503316480)
        return SimpleNamespace(total=40192 * 2**20, used=0)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=98, memory=35)

    def nvmlDeviceGetCudaComputeCapability(self, handle: str) -> tuple[int, int]:  # noqa: N802
        return (9, 0)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:  # noqa: N802
        return 54

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:  # noqa: N802
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMigMode(self, handle: str) -> tuple[int, int]:  # noqa: N802
        if not self.mig:
            raise self.NVMLError("Not Supported")
        return (1, 1)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: str) -> int:  # noqa: N802
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: str, slot: int) -> str:  # noqa: N802
        if slot != 0:
            raise self.NVMLError("Not Found")
        return "mig0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[SimpleNamespace]:  # noqa: N802
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=1002 * 2**20)]


def test_nvml_path_matches_the_captured_nvml_reading() -> None:
    nvml = FakeNvml()
    gpus, source, warnings = detect_gpus(fake_runner({}), nvml, "Linux")
    captured = parse_any(read("h100-sxm/nvml-and-torch.json")).gpus
    assert source == "nvml" and warnings == [] and nvml.shutdown
    assert gpus == captured
    telemetry, processes = read_telemetry(runner=fake_runner({}), nvml=nvml)
    assert telemetry[0].utilization_pct == 98 and telemetry[0].temperature_c == 54 and telemetry[0].power_w is None
    assert processes[0].pid == os.getpid() and processes[0].name  # named through psutil
    assert processes[0].gpu_index == 0


def test_nvml_mig_instances() -> None:
    gpus, source, _ = detect_gpus(fake_runner({}), FakeNvml(mig=True), "Linux")
    assert source == "nvml"
    assert [(g.index, g.mig_parent_index, g.mig_device_index, g.name) for g in gpus] == [
        (0, 0, 0, "NVIDIA H100 80GB HBM3 MIG 3g.40gb")
    ]
    assert gpus[0].memory_gb == pytest.approx(39.25)


def test_broken_nvml_warns_and_falls_through_to_nvidia_smi() -> None:
    runner = fake_runner(
        {
            "nvidia-smi --query-gpu": read("h100-sxm/query-gpu-idle.csv"),
            "nvidia-smi -q -x": read("h100-sxm/nvidia-smi-q.xml"),
        }
    )
    broken = FakeNvml(init_error=FakeNvml.NVMLError("Driver Not Loaded"))
    gpus, source, warnings = detect_gpus(runner, broken, "Linux")
    assert source == "nvidia-smi"
    assert [(g.name, g.cuda_version, g.compute_capability) for g in gpus] == [(H100, "13.0", 9.0)]
    assert any("Driver Not Loaded" in w for w in warnings)
    missing = FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    assert detect_gpus(runner, missing, "Linux")[2] == []  # absent library: skipped quietly


def test_old_driver_without_compute_cap_field() -> None:
    calls: list[str] = []

    def runner(args: list[str]) -> str:
        calls.append(" ".join(args))
        if "compute_cap" in args[1]:
            raise ToolError('Field "compute_cap" is not a valid field to query.')
        if args[1].startswith("--query-gpu"):
            return read("synthetic/synthetic-query-gpu-mixed-crlf.csv")
        raise ToolError("nvidia-smi -q exited 9: unknown error")

    gpus, source, warnings = detect_gpus(runner, FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound()), "Linux")
    assert source == "nvidia-smi" and len(calls) == 3
    assert [g.compute_capability for g in gpus] == [8.9, 8.6]
    assert any("-q -x" in w for w in warnings)


def test_mig_through_nvidia_smi_uses_the_listing_when_the_xml_fails() -> None:
    runner = fake_runner(
        {
            "nvidia-smi --query-gpu": read("public/h100-mig-query-gpu-idle.csv"),
            "nvidia-smi -q -x": ToolError("nvidia-smi -q exited 15: timeout"),
            "nvidia-smi -L": read("public/h100-mig-L.txt"),
        }
    )
    gpus, source, warnings = detect_gpus(runner, FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound()), "Linux")
    assert source == "nvidia-smi" and len(gpus) == 4
    assert all(g.mig_parent_index == 0 and g.driver_version == "590.48.01" for g in gpus)
    assert not any("does not list MIG" in w for w in warnings)


@pytest.mark.parametrize(
    "answer",
    ["garbage\x1b[0m", read("synthetic/synthetic-nvidia-smi-failed.txt"), ToolError("exited 255"), RuntimeError("bug")],
    ids=["garbage", "failed-message", "tool-error", "unexpected-exception"],
)
def test_failing_nvidia_smi_never_crashes_detection(answer: Any) -> None:
    runner = fake_runner({"nvidia-smi": answer})
    report = detect(runner=runner, nvml=FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound()), system="Linux")
    assert (report.source, report.gpus) == ("none", [])
    assert any(w.startswith("nvidia-smi:") for w in report.warnings)


def test_amd_through_rocm_smi_even_with_a_non_zero_exit() -> None:
    text = read("public/6x-mi100-rocm-smi.json")
    for answer in (text, ToolError("rocm-smi exited 2: some readings unsupported", output=text)):
        gpus, source, _ = detect_gpus(
            fake_runner({"rocm-smi": answer}), FakeNvml(FakeNvml.NVMLError_LibraryNotFound()), "Linux"
        )
        assert source == "rocm-smi" and [g.vendor for g in gpus] == ["amd"] * 6


def test_apple_fills_unified_memory_from_sysctl() -> None:
    runner = fake_runner(
        {
            "system_profiler": read("public/m1pro-spdisplays.json"),
            "sysctl": read("synthetic/synthetic-apple-sysctl.txt"),
        }
    )
    no_nvml = FakeNvml(FakeNvml.NVMLError_LibraryNotFound())
    gpus, source, warnings = detect_gpus(runner, no_nvml, "Darwin")
    assert source == "apple" and [(g.name, g.memory_gb) for g in gpus] == [("Apple M1 Pro", 32.0)]
    assert warnings == []
    fallback = fake_runner(
        {"system_profiler": ToolError("exited 1"), "sysctl": read("synthetic/synthetic-apple-sysctl.txt")}
    )
    gpus, source, warnings = detect_gpus(fallback, no_nvml, "Darwin")
    assert [g.name for g in gpus] == ["Apple M2 Max"] and "system_profiler" in warnings[0]
    assert detect_gpus(runner, no_nvml, "Linux")[1] == "none"  # system_profiler only on macOS


def test_telemetry_through_nvidia_smi_maps_processes_to_gpu_indices() -> None:
    runner = fake_runner(
        {
            "nvidia-smi --query-gpu": read("h100-sxm/query-gpu-busy.csv"),
            "nvidia-smi --query-compute-apps": read("h100-sxm/query-apps-busy.csv"),
        }
    )
    telemetry, processes = read_telemetry(runner=runner, nvml=FakeNvml(FakeNvml.NVMLError_LibraryNotFound()))
    assert telemetry[0].utilization_pct == 98.0
    assert [(p.pid, p.gpu_index) for p in processes] == [(461, 0)]


def test_processes_on_a_repeated_uuid_get_no_index() -> None:
    gpus = parse_any(read("public/dual-rtx2080-q-x.xml")).gpus
    processes = parse_any(
        "pid, process_name, gpu_uuid, used_memory [MiB]\n7, python, GPU-12345678-aaaa-bbbb-cccc-0123456789ab, 10\n"
    ).processes
    assert hardware.attach_gpu_indices(processes, gpus)[0].gpu_index is None


def test_run_tool_reports_missing_failing_and_hanging_tools() -> None:
    with pytest.raises(ToolMissing):
        hardware.run_tool(["coop-no-such-tool-anywhere"])
    with pytest.raises(ToolError, match="exited 1"):
        hardware.run_tool(["false"])
    with pytest.raises(ToolError, match="did not answer"):
        hardware.run_tool(["sleep", "5"], timeout=0.2)
    assert hardware.run_tool(["echo", "hi"]) == "hi\n"


# --- this machine ------------------------------------------------------------------------------


def test_detect_on_this_machine_is_cpu_only_and_sane(tmp_path: Path) -> None:
    report = detect(state_dir=tmp_path / "not-created-yet")
    assert isinstance(report, HostReport)
    if not (shutil.which("nvidia-smi") or shutil.which("rocm-smi") or platform.system() == "Darwin"):
        assert (report.source, report.gpus, report.warnings) == ("none", [], [])
    assert 1 <= report.cpus <= (os.cpu_count() or 1)
    assert 0 < report.memory_gb < 1 << 20
    assert report.disk_gb >= 0
    assert report.python_version == platform.python_version()
    assert report.hostname and report.os
    assert HostReport.model_validate_json(report.model_dump_json()) == report


def test_telemetry_on_this_machine_without_gpus() -> None:
    if not (shutil.which("nvidia-smi") or shutil.which("rocm-smi")):
        assert read_telemetry() == ([], [])


class LostGpuNvml(FakeNvml):
    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        raise self.NVMLError("GPU is lost")


def test_a_gpu_lost_mid_read_and_broken_tools_never_stop_telemetry_or_detection() -> None:
    runner = fake_runner({"nvidia-smi": RuntimeError("parser bug"), "rocm-smi": "not json"})
    assert read_telemetry(runner=runner, nvml=LostGpuNvml()) == ([], [])
    gpus, source, warnings = detect_gpus(fake_runner({}), LostGpuNvml(), "Linux")
    assert (gpus, source) == ([], "none") and "GPU is lost" in warnings[0]
