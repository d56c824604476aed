"""Helpers every parser shares: tolerant value parsing, GPU model facts, UUID hygiene."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from agent.models import GpuInfo

MigMode = Literal["enabled", "disabled"] | None

GIB = 2**30


class UnrecognisedOutput(ValueError):
    """The text is not a tool output Coop can read (or is too broken to read)."""


_MISSING = {"", "n/a", "[n/a]", "none", "not supported", "[not supported]", "unknown", "[unknown error]"}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# Memory units as tools print them, in bytes. nvidia-smi writes MiB, Apple "GB" (which are GiB).
_MEMORY_UNITS = {
    "b": 1,
    "kib": 2**10,
    "kb": 2**10,
    "mib": 2**20,
    "mb": 2**20,
    "gib": GIB,
    "gb": GIB,
    "tib": 2**40,
    "tb": 2**40,
}


def load_json(text_in: str) -> Any:
    """The first JSON value in ``text_in``, skipping any banner lines before it."""
    start = min((i for i in (text_in.find("{"), text_in.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise UnrecognisedOutput("no JSON found")
    try:
        value, _ = json.JSONDecoder().raw_decode(text_in[start:])
    except json.JSONDecodeError as exc:
        raise UnrecognisedOutput(f"malformed or truncated JSON: {exc}") from exc
    return value


def missing(value: str | None) -> bool:
    """True for the many ways tools say "no value": N/A, [N/A], [Not Supported], bracketed notes."""
    if value is None:
        return True
    text = value.strip().lower()
    return text in _MISSING or (text.startswith("[") and text.endswith("]"))


def number(value: str | None) -> float | None:
    """The first number in a value ("98 %", "616.76 W", "54C"), or None when there is none."""
    if missing(value):
        return None
    assert value is not None
    match = _NUMBER.search(value.replace(",", ""))
    return float(match.group()) if match else None


def memory_gib(value: str | None, default_unit: str = "mib") -> float | None:
    """A memory size in GiB from "81559 MiB", "81559" (in ``default_unit``) or "128 GB"."""
    if missing(value):
        return None
    assert value is not None
    match = re.search(r"([-+]?\d+(?:\.\d+)?)\s*([A-Za-z]+)?", value.replace(",", ""))
    if not match:
        return None
    unit = (match.group(2) or default_unit).lower()
    scale = _MEMORY_UNITS.get(unit)
    if scale is None or float(match.group(1)) < 0:
        return None
    return round(float(match.group(1)) * scale / GIB, 3)


def text(value: str | None) -> str | None:
    """A stripped string, or None for the tools' "no value" spellings."""
    return None if missing(value) else (value or "").strip()


def mig_mode(value: str | None) -> MigMode:
    """Normalise "Enabled"/"Disabled"/1/0 to "enabled"/"disabled"; anything else is None."""
    if missing(value):
        return None
    v = (value or "").strip().lower()
    if v in {"enabled", "1", "true"}:
        return "enabled"
    if v in {"disabled", "0", "false"}:
        return "disabled"
    return None


# Compute capability by model name, for sources that do not report it (nvidia-smi before 510,
# `nvidia-smi -L`, the plain table). First match wins, so more specific patterns come first.
# Values from NVIDIA's "CUDA GPUs" list.
_CC_BY_NAME: list[tuple[str, float]] = [
    (r"\bG?B[12]00\b", 10.0),  # B100, B200, GB200
    (r"RTX PRO \d+ Blackwell|RTX 50\d0", 12.0),
    (r"\bG?H[12]00\b|\bH800\b|\bH20\b", 9.0),  # H100, H200, GH200
    (r"RTX \d000 Ada|\bL40S?\b|\bL4\b|\bL20\b|RTX 40\d0", 8.9),
    (r"\bA100\b|\bA800\b|\bA30\b", 8.0),
    (r"RTX A\d000|\bA10G?\b|\bA40\b|\bA16\b|\bA2\b|RTX 30\d0", 8.6),
    (r"RTX 20\d0|TITAN RTX|Quadro RTX|\bT4\b|GTX 16\d0", 7.5),
    (r"\bV100\b|TITAN V\b", 7.0),
    (r"\bP100\b", 6.0),
    (r"GTX 10\d0|\bP40\b|\bP4\b|TITAN Xp?\b", 6.1),
]


def compute_capability_from_name(name: str) -> float | None:
    """Best guess of the CUDA compute capability from a model name; None when unknown."""
    for pattern, cc in _CC_BY_NAME:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return cc
    return None


def nominal_memory_gb(name: str) -> float | None:
    """The size in a name ("H100 80GB HBM3", "A100-SXM4-80GB", MIG "3g.40gb"), or None."""
    match = re.search(r"(\d+)\s*gb\b", name, flags=re.IGNORECASE)
    return float(match.group(1)) if match else None


def clean_uuid(value: str | None) -> str | None:
    """Drop UUIDs that carry no identity: N/A and the all-zero ones publishers mask with."""
    uuid = text(value)
    if uuid is None:
        return None
    if not re.search(r"[1-9a-fA-F]", uuid.split("-", 1)[-1]):
        return None
    return uuid


def uuid_warnings(gpus: list[GpuInfo]) -> list[str]:
    """Warn about UUIDs repeated on one machine (masked output); the index stays the key."""
    seen: dict[str, int] = {}
    for gpu in gpus:
        if gpu.uuid:
            seen[gpu.uuid] = seen.get(gpu.uuid, 0) + 1
    return [
        f"UUID {uuid} appears on {count} GPUs (masked output?); GPUs are told apart by index"
        for uuid, count in seen.items()
        if count > 1
    ]


def vendor_from_name(name: str) -> str:
    """Which vendor a marketing name belongs to, for the sources that mix them (macOS)."""
    lowered = name.lower()
    if "apple" in lowered:
        return "apple"
    if any(word in lowered for word in ("amd", "radeon", "instinct", "ati")):
        return "amd"
    if any(word in lowered for word in ("nvidia", "geforce", "quadro", "tesla")):
        return "nvidia"
    return "other"
