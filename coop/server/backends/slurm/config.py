"""A Slurm pool's settings and the wire models of the pools API (no SQLAlchemy here).

Every string that ends up in a command line or a ``#SBATCH`` line is checked against a narrow
pattern here, and quoted again where it is used: a pool's settings come from an admin, but a typo
should be refused with the field's name, not run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from coop.schemas import MAX_TFLOPS
from coop.spec import normalise_gpu_model

# A word Slurm accepts as a partition, account or QOS name.
SlurmName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")]
PoolName = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
MemberName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
CPU_TFLOPS_PER_CORE = 0.05  # fp32 per core, for the credits of CPU-only jobs on a pool


class GpuInfo(BaseModel):
    """What ``sinfo`` cannot say about a GPU model: its memory, compute capability and speed."""

    model_config = ConfigDict(extra="forbid")
    memory_gb: float = Field(gt=0, le=4096)
    compute_capability: float | None = Field(default=None, ge=0, le=100)
    tflops: float = Field(gt=0, le=MAX_TFLOPS, description="dense bf16 matmul TFLOP/s per GPU, as calibration measures")


# Typical values for models common on clusters: (memory GB, compute capability, measured dense bf16
# TFLOP/s). A100 is taken as the 40 GB card: a pool of 80 GB A100s says so with gpu_info, so that an
# 80 GB job is never sent to a 40 GB card by default.
GPU_CATALOG: dict[str, GpuInfo] = {
    model: GpuInfo(memory_gb=mem, compute_capability=cc, tflops=tflops)
    for model, (mem, cc, tflops) in {
        "V100": (32, 7.0, 90),
        "T4": (16, 7.5, 25),
        "A10": (24, 8.6, 100),
        "A30": (24, 8.0, 130),
        "A40": (48, 8.6, 120),
        "A100": (40, 8.0, 250),
        "RTXA6000": (48, 8.6, 120),
        "RTX3090": (24, 8.6, 60),
        "RTX4090": (24, 8.9, 150),
        "L4": (24, 8.9, 90),
        "L40": (48, 8.9, 150),
        "L40S": (48, 8.9, 250),
        "H100": (80, 9.0, 650),
        "H200": (141, 9.0, 700),
        "GH200": (96, 9.0, 700),
        "B200": (180, 10.0, 1500),
    }.items()
}

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")  # a normalised GPU model name, e.g. RTX4090
_GRES = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)?$")
_SBATCH_OPTION = re.compile(r"^--[a-z][a-z-]*(=[A-Za-z0-9_.,:=/+-]+)?$")
_FORBIDDEN_OPTIONS = {"--wrap", "--output", "--error", "--chdir", "--job-name", "--open-mode", "--export-file", "--uid",
                      "--gid", "--get-user-env"}  # fmt: skip


def _host(value: str) -> str:
    if value.startswith("-") or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:_-]*", value):
        raise ValueError("a host name or IP address (letters, digits, '.', ':', '-', '_'), e.g. login.cluster.edu")
    return value


def _user(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError("a login name (letters, digits, '.', '-', '_'; not starting with a digit or '-')")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\0" in value or "\n" in value:
        raise ValueError("an absolute path on the coordinator's host, e.g. /etc/coop/ssh/hpc_key")
    return value


def _scratch(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./+@-]+", value) or value.startswith("-") or "/../" in f"/{value}/":
        raise ValueError(
            "a path on the cluster (letters, digits and . _ / + @ -; no '..'), absolute or relative to the "
            "user's home, e.g. /scratch/coop or coop-scratch"
        )
    return value


def _gres_map(value: dict[str, str]) -> dict[str, str]:
    out = {}
    for model, gres in value.items():
        name = normalise_gpu_model(model)
        if not name:
            raise ValueError(f"{model!r} names no GPU model; use a model such as RTX4090 or A100")
        if not _GRES.match(gres) or not gres.startswith("gpu"):
            raise ValueError(f"{model}={gres!r}: give the GRES as Slurm spells it, 'gpu:TYPE' (or 'gpu' if untyped)")
        out[name] = gres
    return out


def _gpu_info(value: dict[str, GpuInfo]) -> dict[str, GpuInfo]:
    out = {}
    for model, info in value.items():
        name = normalise_gpu_model(model)
        if not _MODEL.match(name):  # stored in the pool's JSON: PostgreSQL refuses a NUL there (a 500)
            raise ValueError(f"{model!r} names no GPU model; use a model such as RTX4090 or A100")
        out[name] = info
    return out


def _sbatch_options(value: list[str]) -> list[str]:
    for opt in value:
        if not _SBATCH_OPTION.match(opt):
            raise ValueError(f"{opt!r}: give long options as --name or --name=value (no spaces or quotes)")
        if opt.split("=", 1)[0] in _FORBIDDEN_OPTIONS:
            raise ValueError(f"{opt!r}: Coop sets {opt.split('=', 1)[0]} itself")
    return value


class SlurmPoolConfig(BaseModel):
    """How to reach the cluster and what to ask it for. Paths to keys are on the coordinator's host."""

    model_config = ConfigDict(extra="forbid")
    host: Annotated[str, Field(max_length=253), AfterValidator(_host)]
    port: int = Field(default=22, ge=1, le=65535)
    user: Annotated[str, AfterValidator(_user)]
    key: Annotated[str, Field(max_length=1024), AfterValidator(_absolute)] = Field(
        description="private key file on the coordinator's host (mode 600)"
    )
    known_hosts: Annotated[str, Field(max_length=1024), AfterValidator(_absolute)] = Field(
        description="known_hosts file on the coordinator's host that holds the login node's key"
    )
    partition: SlurmName | None = None
    account: SlurmName | None = None
    qos: SlurmName | None = None
    gres_map: Annotated[dict[str, str], AfterValidator(_gres_map)] = Field(default_factory=dict, max_length=64)
    gpu_info: Annotated[dict[str, GpuInfo], AfterValidator(_gpu_info)] = Field(default_factory=dict, max_length=64)
    scratch_dir: Annotated[str, Field(max_length=1024), AfterValidator(_scratch)] = "coop-scratch"
    sbatch_options: Annotated[list[str], AfterValidator(_sbatch_options)] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _known_models(self) -> SlurmPoolConfig:
        unknown = sorted(m for m in self.gres_map if m not in self.gpu_info and m not in GPU_CATALOG)
        if unknown:
            them = "them" if len(unknown) > 1 else "it"
            raise ValueError(
                f"Coop does not know the memory and speed of {', '.join(unknown)}: add gpu_info for {them} "
                f"(CLI: --gpu-info {unknown[0]}=MEMORY_GB,COMPUTE_CAPABILITY,TFLOPS)"
            )
        return self

    def gpu(self, model: str) -> GpuInfo:
        return self.gpu_info.get(model) or GPU_CATALOG[model]


# --- wire models of /v1/pools -------------------------------------------------------------------


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: PoolName
    member: MemberName | None = Field(default=None, description="who holds the allocation (default: you)")
    max_jobs: int = Field(default=10, ge=1, le=10_000, description="most Coop jobs in the pool at once")
    slurm: SlurmPoolConfig


@dataclass(frozen=True)
class NodeClass:
    """Nodes of one shape in a pool's partition: what the scheduler places on, and what the API lists."""

    name: str  # stable: "RTX4090x2-64cpu-500gb", "cpu-128cpu-1000gb"
    model: str | None
    gres: str | None  # what sbatch asks for, e.g. "gpu:rtx4090"
    gpus: int
    gpu_memory_gb: float
    compute_capability: float | None
    tflops_per_gpu: float | None
    cpus: int
    memory_gb: float
    nodes: int  # in the partition
    usable: int  # of those, how many take work now

    @property
    def cpu_tflops(self) -> float:
        return self.cpus * CPU_TFLOPS_PER_CORE

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class PoolOut(BaseModel):
    id: int
    name: str
    member: str
    kind: str
    enabled: bool
    max_jobs: int
    running: int = Field(description="Coop attempts in the pool now")
    state: str = Field(description="unknown | ok | unreachable | refused")
    detail: str | None
    refreshed_at: datetime | None
    slurm: dict[str, Any]
    capacity: list[NodeClass]
    created_at: datetime


class PoolTestResult(BaseModel):
    ok: bool
    pool: str
    message: str
    host_key: str | None = Field(default=None, description="the login node's key fingerprint, when it connected")
    seconds: float
    capacity: list[NodeClass] = Field(default_factory=list)
