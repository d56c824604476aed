"""JobSpec: job.yaml parsed and validated.

A job file is the one thing every user writes by hand, so a mistake here must come back at submit
time as a list of `field: message (fix)` lines that name the user-facing field (`memory`, not
`memory_gb`), quote the bad value and say what would be accepted. Pydantic does the validation;
this module owns the input forms (sizes, ranges, durations) and turns pydantic's errors into
`FieldError`s. The normalised dump (`model_dump(mode="json")`) validates back to the same spec.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import reprlib
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from coop import arrays
from coop.schemas import MAX_GPU_MEMORY_GB, MAX_NODE_MEMORY_GB, MAX_NODES

MAX_YAML_BYTES = 1 << 20
MAX_TEXT = 64 * 1024
MAX_PATH = 4096
MAX_RUNTIME_S = 30 * 86400
MAX_NESTING = 16  # levels of mappings and lists: a job spec needs 3 (resources.gpu_memory.min_gb)
MAX_NUMBER_CHARS = 64  # digits in a size or a duration
_SURROGATE = re.compile("[\ud800-\udfff]")
RESERVED_ENV = (
    "COOP_JOB_ID", "COOP_ATTEMPT", "COOP_CHECKPOINT_DIR", "COOP_OUTPUT_DIR", "COOP_INPUT_DIR",
    "COOP_NODE_RANK", "COOP_NUM_NODES", "COOP_GPUS_PER_NODE", "COOP_ARRAY_INDEX",
)  # fmt: skip
MAX_INPUTS = 16

SIZE_FIX = f"use a size like 32GB, 512MB or 1.5TB (at most {MAX_NODE_MEMORY_GB:g}GB)"
RANGE_FIX = f"use a size like 24GB, a range like 16GB..48GB, or 16GB+ (per GPU, at most {MAX_GPU_MEMORY_GB:g}GB)"
CC_FIX = "use a version like 8.0 or 8.0+ (at least), or a range like 8.0..9.0"
DURATION_FIX = "use a duration like 90s, 30m, 4h, 1d or 1h30m (from 1s to 30d)"
FIXES = {
    "": "start from the example in docs/jobspec.md: a mapping with at least name: and run:",
    "name": "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. lora-qwen-0.5b",
    "kind": "use one of: finetune, eval, batch",
    "resources": "use a mapping, e.g. resources: {gpus: 1, gpu_memory: 16GB+}",
    "resources.gpus": "use a whole number from 0 (CPU only) to 64: GPUs on each node",
    "resources.nodes": "use a whole number from 1 to 64: machines the job spans, each with resources.gpus GPUs",
    "resources.gpu_memory": RANGE_FIX,
    "resources.gpu": "use a GPU model or a list of models, e.g. gpu: [RTX4090, A100]",
    "resources.compute_capability": CC_FIX,
    "resources.cpus": "use a whole number from 1 to 1024",
    "resources.memory": SIZE_FIX,
    "resources.tier": "use one of: consumer, hpc, any",
    "workdir": "use a path such as . or /data/project, or null for no workdir",
    "setup": "use a shell command as a string (for several lines: setup: | and an indented block)",
    "run": "use a shell command as a string (for several lines: run: | and an indented block)",
    "env": "use NAME: value pairs, e.g. env: {WANDB_MODE: offline}",
    "max_runtime": DURATION_FIX,
    "priority": "use one of: low, normal, high",
    "preemptible": "use true or false, unquoted",
    "checkpoint_dir": "use a path such as /ckpt, or remove the field",
    "retries": "use a whole number from 0 to 20: attempts after its node was lost (preemptions never count)",
    "retries_on_failure": "use a whole number from 0 to 20: attempts after the job itself failed (a non-zero exit)",
    "inputs": "use a list of earlier jobs, e.g. inputs: [{job: lora-tiny-finetune, to: finetune}]",
    "inputs.job": "use the id of one of your earlier jobs (e.g. 12) or its name (your latest job of that name)",
    "array": arrays.FIX,
    "max_parallel": f"use a whole number from 1 to {arrays.MAX_TASKS}: tasks of the array that may run at once",
    "inputs.to": "use a folder name under $COOP_INPUT_DIR such as finetune or runs/base (no '..', no leading '/')",
}
SYNONYMS = {
    "num_nodes": "nodes", "nnodes": "nodes", "node_count": "nodes",
    "num_gpus": "gpus", "gpu_count": "gpus", "accelerators": "gpu", "gpu_type": "gpu", "vram": "gpu_memory",
    "ram": "memory", "command": "run", "cmd": "run", "environment": "env", "envs": "env",
    "timeout": "max_runtime", "time_limit": "max_runtime", "walltime": "max_runtime",
    "retry_on_failure": "retries_on_failure", "retries_on_error": "retries_on_failure",
    "max_retries": "retries",
}  # fmt: skip


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str = Field(description='user-facing dotted path, e.g. "resources.gpu_memory"; "" = document')
    message: str
    fix: str


class SpecError(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)  # args stay (errors,) so the exception pickles
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(f"{e.field or '(document)'}: {e.message} ({e.fix})" for e in self.errors)


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxstring, _repr.maxother = 2, 4, 4, 60, 60


def _show(value: object) -> str:
    """The bad value as the user wrote it, short (values may be huge or deeply aliased)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    try:
        return _repr.repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits has no str()
        return f"a {type(value).__name__} too large to show"


def _err(message: str, fix: str, subfield: str | None = None) -> PydanticCustomError:
    ctx: dict[str, Any] = {"message": message, "fix": fix}
    if subfield:
        ctx["subfield"] = subfield
    return PydanticCustomError("coop", "{message}", ctx)


# --- sizes, durations, ranges -------------------------------------------------------------------

_SIZE_UNITS = {"": 10**9, "b": 1} | {  # bytes per unit; a bare number is GB
    prefix + suffix: (1024 if suffix == "ib" else 1000) ** power
    for power, prefix in enumerate("kmgt", start=1)
    for suffix in ("", "b", "ib")
}
_DURATION_UNITS = (
    dict.fromkeys(["s", "sec", "secs", "second", "seconds"], 1)
    | dict.fromkeys(["m", "min", "mins", "minute", "minutes"], 60)
    | dict.fromkeys(["h", "hr", "hrs", "hour", "hours"], 3600)
    | dict.fromkeys(["d", "day", "days"], 86400)
)


def parse_size_gb(value: str | int | float) -> float:
    """'24GB', '24G', '24GiB', '512MB', '1.5TB' or a number of GB -> GB (10^9 bytes; GiB = 2^30)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{_show(value)} is not a size")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*([A-Za-z]*)\s*", value)
        if not m or len(m[1]) > MAX_NUMBER_CHARS:
            raise ValueError(f"{_show(value)} is not a size")
        if m[2].lower() not in _SIZE_UNITS:
            raise ValueError(f'{_show(value)} is not a size (unknown unit "{m[2]}")')
        gb = float(m[1]) * _SIZE_UNITS[m[2].lower()] / 10**9
    else:
        gb = _float(value, "a size")
    if not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"{_show(value)} is not a size (it must be more than 0)")
    return gb


def _float(value: int | float, what: str) -> float:
    """A number as a float; an int too large for one (YAML reads 400 digits as an int) is no ``what``."""
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{_show(value)} is not {what} (far too large)") from None


def parse_duration_s(value: str | int | float) -> int:
    """'4h', '30m', '90s', '1d', '1h30m', '04:00:00' or a number of seconds -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{_show(value)} is not a duration")
    if isinstance(value, (int, float)):
        seconds = _float(value, "a duration")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{_show(value)} is not a duration (it must be 0 or more seconds)")
        return round(seconds)
    text = value.strip().lower()
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"{_show(value)} is not a duration (too long)")
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+(:\d+){1,2}", text):  # [hh:]mm:ss, as Slurm writes it
        return sum(int(p) * 60**i for i, p in enumerate(reversed(text.split(":"))))
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)\s*", text)
    if not re.fullmatch(r"(\d+(\.\d+)?\s*[a-z]+\s*)+", text):
        raise ValueError(f"{_show(value)} is not a duration")
    for _, unit in parts:
        if unit not in _DURATION_UNITS:
            raise ValueError(f'{_show(value)} is not a duration (unknown unit "{unit}")')
    return round(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def _parse_version(value: str | int | float) -> float:
    try:
        cc = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{_show(value)} is not a compute capability") from None
    if not 1.0 <= cc < 100:
        raise ValueError(f"{_show(value)} is not a compute capability (they run from 1.0 to about 12.0)")
    return cc


def _split_range(value: object, parse: Any, what: str, fix: str) -> tuple[Any, Any] | object:
    """'X', 'X+' (at least X), 'X..Y' or a number -> (min, max); dicts pass through to the model."""
    if isinstance(value, (dict, BaseModel)):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _err(f"expected {what}, got {_show(value)}", fix)
    try:
        if isinstance(value, str) and value.strip().endswith("+"):
            return parse(value.strip()[:-1]), None
        if isinstance(value, str) and ".." in value:
            low, high = value.split("..", 1)
            return parse(low), parse(high)
        return parse(value), None
    except ValueError as e:  # name the whole range when one end is wrong
        whole = "" if str(e).startswith(_show(value)) else f" in {_show(value)}"
        raise _err(f"{e}{whole}", fix) from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, serialize_by_alias=True, allow_inf_nan=False)


class MemRange(_Model):
    """Memory per GPU in GB. A bare size means "at least": `16GB` == `16GB+` == {min_gb: 16}."""

    min_gb: float = Field(gt=0, le=MAX_GPU_MEMORY_GB)
    max_gb: float | None = Field(default=None, gt=0, le=MAX_GPU_MEMORY_GB)

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: object) -> object:
        parsed = _split_range(value, _gpu_memory_gb, "a size or a size range", RANGE_FIX)
        return {"min_gb": parsed[0], "max_gb": parsed[1]} if isinstance(parsed, tuple) else parsed

    @model_validator(mode="after")
    def _ordered(self) -> MemRange:
        if self.max_gb is not None and self.max_gb < self.min_gb:
            raise _err(
                f"range minimum {self.min_gb:g}GB is above its maximum {self.max_gb:g}GB",
                "put the smaller size first, e.g. 16GB..48GB",
            )
        return self

    def contains(self, gb: float) -> bool:
        return gb >= self.min_gb and (self.max_gb is None or gb <= self.max_gb)


class VersionRange(_Model):
    """CUDA compute capability. A bare version means "at least": `8.0` == `8.0+` == {min: 8.0}."""

    min: float = Field(ge=1, lt=100)
    max: float | None = Field(default=None, ge=1, lt=100)

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: object) -> object:
        parsed = _split_range(value, _parse_version, "a compute capability", CC_FIX)
        return {"min": parsed[0], "max": parsed[1]} if isinstance(parsed, tuple) else parsed

    @model_validator(mode="after")
    def _ordered(self) -> VersionRange:
        if self.max is not None and self.max < self.min:
            raise _err(
                f"range minimum {self.min:g} is above its maximum {self.max:g}",
                "put the lower version first, e.g. 8.0..9.0",
            )
        return self

    def contains(self, cc: float) -> bool:
        return cc >= self.min and (self.max is None or cc <= self.max)


_GPU_NOISE = re.compile(
    r"^(NVIDIA|GEFORCE|TESLA|QUADRO|AMD|RADEON|INSTINCT|APPLE|GPU|GENERATION|"
    r"PCIE|SXM\d*|HBM\d*E?|NVL|\d+(\.\d+)?[GT]B)$"
)


def normalise_gpu_model(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'RTX4090', 'NVIDIA A100-SXM4-80GB' -> 'A100'.

    Split on spaces, '-' and '_', drop vendor and brand words and memory or form-factor tokens,
    join the rest and upper-case it. Idempotent, so allow-list entries and detected names
    normalised the same way compare with ==.
    """
    tokens = re.split(r"[\s_-]+", name.upper())
    return "".join(t for t in tokens if t and not _GPU_NOISE.match(t))


def _gpu_entry(name: str) -> str:
    model = normalise_gpu_model(name)
    if not model:
        raise _err(f"{_show(name)} names no GPU model", 'use a model such as "RTX4090", "A100" or "H100"')
    return model


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise _err("contains a NUL character", "remove the NUL (\\0) character")
    return text


def _env_key(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise _err(
            f"{_show(key)} is not a valid variable name",
            "use letters, digits and _, not starting with a digit, e.g. WANDB_MODE",
        )
    if key.upper().startswith("COOP_"):
        raise _err(
            f"{_show(key)} is reserved: COOP_ variables are set by Coop",
            f"rename it; Coop itself sets {', '.join(RESERVED_ENV)}",
        )
    return key


def _env_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


def _bounded_size(limit_gb: float, what: str) -> Any:
    def parse(value: str | int | float) -> float:
        gb = parse_size_gb(value)
        if gb > limit_gb:
            raise ValueError(f"{_show(value)} is more than {what} has (at most {limit_gb:g}GB)")
        return gb

    return parse


_gpu_memory_gb = _bounded_size(MAX_GPU_MEMORY_GB, "any GPU")


def _runtime(value: str | int | float) -> int:
    seconds = parse_duration_s(value)
    if not 1 <= seconds <= MAX_RUNTIME_S:
        raise ValueError(f"{_show(value)} is outside the allowed 1s..30d")
    return seconds


def _optional(parse: Any, fix: str) -> BeforeValidator:
    """A validator turning the user's form (`32GB`, `4h`) into the stored number."""

    def convert(value: object) -> object:
        try:
            return None if value is None else parse(value)
        except ValueError as e:
            raise _err(str(e), fix) from None

    return BeforeValidator(convert)


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_nul)]
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_no_nul)]
GpuModel = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_gpu_entry)]
EnvKey = Annotated[str, AfterValidator(_env_key)]
Size = Annotated[float | None, _optional(_bounded_size(MAX_NODE_MEMORY_GB, "any node"), SIZE_FIX)]
Duration = Annotated[int | None, _optional(_runtime, DURATION_FIX)]
EnvValue = Annotated[str, BeforeValidator(_env_value), Field(max_length=8192), AfterValidator(_no_nul)]


class Resources(_Model):
    """What a job needs on each node it runs on; ``nodes`` > 1 is a gang: that many machines, each
    with all of the rest, started together (``gpus``, ``cpus`` and ``memory`` are per node)."""

    gpus: int = Field(default=0, ge=0, le=64)
    gpu_memory: MemRange | None = None
    gpu: list[GpuModel] | None = Field(default=None, min_length=1, max_length=64)
    compute_capability: VersionRange | None = None
    cpus: int = Field(default=1, ge=1, le=1024)
    memory_gb: Size = Field(default=None, alias="memory")
    tier: Literal["consumer", "hpc", "any"] = "any"
    nodes: int = Field(default=1, ge=1, le=MAX_NODES)

    @field_validator("gpu", mode="before")
    @classmethod
    def _one_model(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _gpu_fields_need_gpus(self) -> Resources:
        given = [f for f in ("gpu_memory", "gpu", "compute_capability") if getattr(self, f) is not None]
        if self.gpus == 0 and given:
            raise _err(
                f"{', '.join(given)} given but gpus is 0 (CPU only)",
                f"set resources.gpus to 1 or more, or remove {', '.join('resources.' + g for g in given)}",
                subfield=given[0],
            )
        return self

    @property
    def total_gpus(self) -> int:
        """GPUs of the whole job: per node times nodes."""
        return self.gpus * self.nodes


def _input_folder(value: str) -> str:
    if value.startswith("/") or any(part in ("", ".", "..") for part in value.split("/")):
        raise _err(f"{_show(value)} leaves $COOP_INPUT_DIR", FIXES["inputs.to"])
    return value


_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _job_ref(value: object) -> int | str:
    """A job id (a whole number) or a job name: one check, so that an error says both in one line."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**31 - 1:
        return value
    if isinstance(value, str) and _JOB_NAME.match(value):
        return value
    raise _err(f"{_show(value)} is not a job id or a job name", FIXES["inputs.job"])


JobRef = Annotated[int | str, PlainValidator(_job_ref)]


def _array(value: object) -> object:
    try:
        return None if value is None else arrays.normalise(value)
    except arrays.ArrayError as e:
        raise _err(e.message, e.fix, subfield=e.at or None) from None


ArrayValue = Annotated[int | str | dict[str, list[str]], BeforeValidator(_array)]
InputFolder = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._/-]+$"), AfterValidator(_input_folder)
]


class Input(_Model):
    """An earlier job's outputs, put under ``$COOP_INPUT_DIR/<to>`` before the job starts. ``job``:
    its id, or a name (the member's latest job of that name, resolved when the job is submitted)."""

    job: JobRef
    to: InputFolder | None = None

    @property
    def folder(self) -> str:
        return self.to or str(self.job)


class JobSpec(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["finetune", "eval", "batch"] = "batch"
    resources: Resources = Resources()
    workdir: PathText | None = "."
    setup: Text | None = None
    run: Text
    env: dict[EnvKey, EnvValue] = Field(default_factory=dict, max_length=128)
    max_runtime_s: Duration = Field(default=None, alias="max_runtime")
    priority: Literal["low", "normal", "high"] = "normal"
    preemptible: bool = True
    checkpoint_dir: PathText | None = None
    # infrastructure: another attempt after the node or the backend lost it (a preemption never counts)
    retries: int = Field(default=2, ge=0, le=20)
    # the application: another attempt after the job failed on its own (a non-zero exit, killed for memory)
    retries_on_failure: int = Field(default=0, ge=0, le=20)
    inputs: list[Input] = Field(default_factory=list, max_length=MAX_INPUTS)
    # a job array (docs/jobspec.md#arrays): left out of the stored form when not given
    array: ArrayValue | None = Field(default=None, exclude_if=lambda v: v is None)
    max_parallel: int | None = Field(default=None, ge=1, le=arrays.MAX_TASKS, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _max_parallel_needs_array(self) -> JobSpec:
        if self.max_parallel is not None and self.array is None:
            raise _err(
                "max_parallel given without array",
                "add array: (e.g. array: 100), or remove max_parallel",
                subfield="max_parallel",
            )
        return self

    def task_spec(self) -> JobSpec:
        """What each task of the array runs: this spec without ``array`` and ``max_parallel``."""
        return self.model_copy(update={"array": None, "max_parallel": None})

    @field_validator("inputs")
    @classmethod
    def _distinct_folders(cls, value: list[Input]) -> list[Input]:
        folders = [i.folder for i in value]
        if len(set(folders)) != len(folders):
            raise _err("two inputs go to the same folder", "give each input its own to: folder")
        return value

    @field_validator("resources", "env", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return {} if value is None else value  # `resources:` with every line commented out

    @field_validator("run")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise _err(f"{_show(value)} is empty", FIXES["run"])
        return value


# --- errors -------------------------------------------------------------------------------------


def _model_at(parts: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    for part in parts:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        types = (get_args(field.annotation) or (field.annotation,)) if field else ()
        inner = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _unknown_field(parts: list[str], key: str) -> tuple[str, str]:
    model = _model_at(parts)
    valid = _names(model) if model else []
    message = f"unknown field {_show(key)}"
    listing = f"valid fields: {', '.join(valid)}"
    if not parts and key in _names(Resources):
        return message, f"move it under resources:, i.e. resources: {{{key}: ...}}"
    if parts == ["resources"] and key in _names(JobSpec):
        return message, "move it out of resources: to the top level"
    guess = SYNONYMS.get(key) if SYNONYMS.get(key) in valid else None
    guess = guess or next(iter(difflib.get_close_matches(key, valid, n=1)), None)
    return message, (f'did you mean "{guess}"? {listing}' if guess else listing)


def _field_error(err: Any) -> FieldError:
    ctx = err.get("ctx") or {}
    parts = [p for p in err["loc"] if p != "[key]"] + ([ctx["subfield"]] if "subfield" in ctx else [])
    path = ""
    for p in parts:  # list indices in brackets: resources.gpu[1]
        path += f"[{p}]" if isinstance(p, int) and path else f"{'.' if path else ''}{p}"
    named = [str(p) for p in parts if not isinstance(p, int)]  # inputs[0].job: its fix is inputs.job's
    if err["type"] == "extra_forbidden":
        message, fix = _unknown_field(named[:-1], named[-1])
        return FieldError(field=path, message=message, fix=fix)
    if err["type"] == "missing":
        message = "required field is missing"
    elif err["type"] == "coop":
        message = ctx["message"]
    else:
        message = f"{err['msg'].replace('Input should', 'should')}, got {_show(err['input'])}"
    prefixes = [".".join(named[:i]) for i in range(len(named), -1, -1)]
    fix = ctx.get("fix") or next((FIXES[p] for p in prefixes if p in FIXES), FIXES[""])
    return FieldError(field=path, message=message, fix=fix)


def _fail(message: str, fix: str = FIXES[""], field: str = "") -> SpecError:
    return SpecError([FieldError(field=field, message=message, fix=fix)])


SURROGATE_FIX = "send UTF-8 text: a JSON string may not hold a lone \\ud800..\\udfff escape"
NESTING_FIX = "a job spec nests a few levels (resources: {gpu_memory: ...}); start from the example in docs/jobspec.md"


def _dotted(path: list[object]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f"{'.' if i else ''}{p}" for i, p in enumerate(path))


def _check_tree(data: object) -> None:
    """Refuse what would break the code after validation: nesting deeper than MAX_NESTING (pydantic and
    the error messages recurse), a mapping or list that contains itself (a YAML alias), lone
    surrogates (no database, and no UTF-8 reply, can hold them) and NULs (PostgreSQL holds none).
    Each container is walked once, so aliases repeated at every level cost nothing; its height is
    remembered for later visits."""
    height: dict[int, int] = {}
    on_path: set[int] = set()

    def walk(value: object, path: list[object]) -> int:
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _fail("contains a lone surrogate, which is not text", SURROGATE_FIX, _dotted(path))
            if "\0" in value:  # PostgreSQL stores no NUL, in any text or JSON column
                raise _fail("contains a NUL character", "remove the NUL (\\0) character", _dotted(path))
            return 0
        if not isinstance(value, (dict, list)):
            return 0
        if id(value) in on_path:
            raise _fail("contains itself (a YAML alias to an enclosing node)", NESTING_FIX, _dotted(path[:3]))
        if id(value) not in height:
            if len(path) >= MAX_NESTING:
                raise _fail(f"nested more than {MAX_NESTING} levels deep", NESTING_FIX, _dotted(path[:3]))
            on_path.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            below = 0
            for key, item in items:
                if isinstance(key, str) and _SURROGATE.search(key):
                    raise _fail("a key contains a lone surrogate, which is not text", SURROGATE_FIX, _dotted(path))
                if isinstance(key, str) and "\0" in key:
                    raise _fail("a key contains a NUL character", "remove the NUL (\\0) character", _dotted(path))
                below = max(below, walk(item, [*path, key if isinstance(key, (str, int)) else str(key)]))
            on_path.discard(id(value))
            height[id(value)] = below + 1
        if len(path) + height[id(value)] > MAX_NESTING:
            raise _fail(f"nested more than {MAX_NESTING} levels deep", NESTING_FIX, _dotted(path[:3]))
        return height[id(value)]

    walk(data, [])


def validate_spec(data: object) -> JobSpec:
    """An already-parsed mapping (from JSON or YAML) -> JobSpec; raises SpecError listing every problem."""
    if isinstance(data, JobSpec):
        return data
    if data is None:
        raise _fail("the job spec is empty")
    if not isinstance(data, dict):
        kind = {"list": "a list", "str": "a string"}.get(type(data).__name__, f"a {type(data).__name__}")
        raise _fail(f"the job spec must be a mapping (name: ..., run: ...), got {kind}: {_show(data)}")
    _check_tree(data)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([_field_error(x) for x in e.errors(include_url=False)]) from None
    except RecursionError:  # _check_tree bounds the depth: a last guard, never a 500
        raise _fail(f"nested more than {MAX_NESTING} levels deep", NESTING_FIX) from None


# --- YAML ---------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false, so `yes`, `on`, `NO` stay strings)
    and duplicate keys refused instead of the last one silently winning."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Nodes nest at most MAX_NESTING deep: PyYAML composes recursively, and ``[[[[...`` would
        otherwise end in a RecursionError."""
        if self._depth >= MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, (str, int, float, bool)):
                continue  # SafeLoader reports unhashable keys itself
            if (type(key), key) in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_show(key)}",
                    key_node.start_mark,
                )
            seen.add((type(key), key))
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_job_yaml(text: str) -> JobSpec:
    """job.yaml text -> JobSpec; raises SpecError (bad YAML is one error on field "")."""
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_YAML_BYTES:
        raise _fail(
            f"the job file is {size / 2**20:.1f} MiB; the limit is 1 MiB",
            "keep data and code in workdir; job.yaml only describes the job",
        )
    surrogate = _SURROGATE.search(text)
    if surrogate:
        line = text.count("\n", 0, surrogate.start()) + 1
        raise _fail(f"the job file holds a lone surrogate at line {line}, which is not text", SURROGATE_FIX)
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hints = {"'\\t'": "indent with spaces, not tabs", "duplicate": "keep only one of the two"}
        hints["nested"] = NESTING_FIX
        fix = next((f for k, f in hints.items() if k in str(e.problem)), "check indentation, quotes and brackets")
        raise _fail(f"invalid YAML{where}: {e.problem}", fix) from None
    except yaml.YAMLError as e:
        raise _fail(f"invalid YAML: {e}", "check indentation, quotes and brackets") from None
    except RecursionError:  # compose_node bounds the depth: a last guard, never a 500
        raise _fail(f"invalid YAML: nested more than {MAX_NESTING} levels deep", NESTING_FIX) from None
    except ValueError as e:  # PyYAML's int() of a number with more than 4300 digits
        reason = str(e).split("; use sys.")[0]  # not Python's advice to itself
        raise _fail(f"invalid YAML: {reason}", "write numbers with at most a few dozen digits") from None
    return validate_spec(data)
