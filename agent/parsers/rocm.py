"""``rocm-smi --showproductname --showmeminfo vram ... --json`` (AMD).

rocm-smi's JSON is a flat ``{"card0": {label: value}, "system": {...}}`` whose labels change
case between versions ("Card series" / "Card Series"), so labels are compared lower-cased.
Everything is a string; sizes are bytes. rocm-smi can print warnings before the JSON, so the
parser starts at the first ``{``. AMD GPUs have no CUDA compute capability (None).
"""

from __future__ import annotations

import re
from typing import Any

from agent.models import ForeignProcess, GpuInfo, GpuTelemetry, ParsedOutput
from agent.parsers.common import GIB, UnrecognisedOutput, clean_uuid, load_json, number, text, uuid_warnings

_CARD = re.compile(r"^card(\d+)$", re.IGNORECASE)


def looks_like_rocm(data: Any) -> bool:
    return isinstance(data, dict) and any(_CARD.match(str(key)) for key in data)


def _lower(mapping: Any) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in mapping.items()} if isinstance(mapping, dict) else {}


def _name(card: dict[str, Any]) -> str:
    for key in ("marketing name", "card series", "card model", "device name"):
        value = text(str(card.get(key, "")))
        if value and not re.fullmatch(r"0x[0-9a-f]+", value, re.IGNORECASE):
            bracket = re.search(r"\[([^\]]+)\]", value)  # "Arcturus GL-XL [Instinct MI100]"
            value = bracket.group(1).strip() if bracket else value
            return value if value.upper().startswith("AMD") else f"AMD {value}"
    return "AMD GPU " + str(card.get("gpu id", card.get("card model", "unknown")))


def _bytes_gib(value: Any) -> float | None:
    amount = number(str(value)) if value is not None else None
    return round(amount / GIB, 3) if amount is not None else None


def parse_rocm_json(text_in: str) -> ParsedOutput:
    """rocm-smi JSON → GPUs (index from ``cardN``), telemetry and the ``--showpids`` processes."""
    data = load_json(text_in)
    if not looks_like_rocm(data):
        raise UnrecognisedOutput("JSON without cardN entries: not rocm-smi output")
    system = _lower(next((v for k, v in data.items() if str(k).lower() == "system"), {}))
    driver = text(str(system.get("driver version", "")))
    gpus, telemetry, warnings = [], [], []
    cards = sorted(
        ((int(m.group(1)), _lower(v)) for k, v in data.items() if (m := _CARD.match(str(k)))), key=lambda item: item[0]
    )
    for index, card in cards:
        memory = _bytes_gib(card.get("vram total memory (b)"))
        if memory is None:
            warnings.append(f"card{index}: no 'VRAM Total Memory (B)' (run rocm-smi with --showmeminfo vram)")
        gpus.append(
            GpuInfo(
                index=index,
                uuid=clean_uuid(str(card.get("unique id", ""))),
                name=_name(card),
                memory_gb=memory or 0.0,
                driver_version=driver,
                vendor="amd",
            )
        )
        temperature = card.get("temperature (sensor edge) (c)", card.get("temperature (sensor junction) (c)"))
        power = card.get("average graphics package power (w)", card.get("current socket graphics package power (w)"))
        telemetry.append(
            GpuTelemetry(
                index=index,
                utilization_pct=number(str(card.get("gpu use (%)", ""))),
                memory_used_gb=_bytes_gib(card.get("vram total used memory (b)")),
                temperature_c=number(str(temperature or "")),
                power_w=number(str(power or "")),
            )
        )
    processes = []
    for key, value in system.items():
        pid = re.fullmatch(r"pid\s*(\d+)", key)
        if pid:  # "PID104225": "mlir-cpu-runner, 0, 0, 0, 0" = name, GPUs, VRAM bytes, SDMA, CU occupancy
            fields = [f.strip() for f in str(value).split(",")]
            vram = _bytes_gib(fields[2]) if len(fields) > 2 else None
            processes.append(ForeignProcess(pid=int(pid.group(1)), name=fields[0], used_memory_gb=vram))
    return ParsedOutput(
        format="rocm-smi-json",
        source="rocm-smi",
        gpus=gpus,
        telemetry=telemetry,
        processes=processes,
        warnings=warnings + uuid_warnings(gpus),
    )
