"""Job arrays, the pure part: what ``array:`` in job.yaml (or ``coop submit --array``) may say, and the
tasks it stands for. Shared by the spec (validation), the coordinator (creating the tasks) and the CLI.

An array is a count (``100``: indices 0-99), a list of indices (``"0-99"``, ``"0-99:2"``, ``"1,5,7"``, or a
YAML list of whole numbers) or a matrix (``{model: [a, b], task: [mmlu, gsm8k]}``: one task per
combination, index 0 first, in the order ``itertools.product`` gives over the keys as written: the last key
varies fastest). Each task sees ``COOP_ARRAY_INDEX`` and, for a matrix, ``COOP_ARRAY_<KEY>`` (the key
upper-cased) holding its value.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence

MAX_TASKS = 100_000  # tasks in one array
MAX_INDEX = 9_999_999  # the largest index a list of indices may name
MAX_KEYS = 32  # keys of a matrix
MAX_VALUE = 8192  # characters of one matrix value (as an env value)
ENV_PREFIX = "COOP_ARRAY_"
OWN_ENV = ("ID", "INDEX", "SIZE")  # COOP_ARRAY_ID, _INDEX, _SIZE: set for every task, so no key may take them

FIX = (
    f"use a number of tasks (array: 100), indices (array: 0-99, 0-99:2 or 1,5,7) or a matrix of values "
    f"(array: {{model: [a, b], task: [mmlu, gsm8k]}}); at most {MAX_TASKS} tasks"
)
MATRIX_FIX = "give each key a list of values, e.g. array: {model: [qwen-0.5b, llama-1b], task: [mmlu, gsm8k]}"
KEY_FIX = f"use letters, digits and _, not starting with a digit, e.g. model (its tasks see {ENV_PREFIX}MODEL)"
_PART = re.compile(r"(\d{1,12})(?:-(\d{1,12})(?::(\d{1,12}))?)?")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ArrayError(ValueError):
    """What is wrong with an array, and where: ``at`` is the path below ``array`` ("" for the whole)."""

    def __init__(self, message: str, fix: str = FIX, at: str = "") -> None:
        super().__init__(message)
        self.message, self.fix, self.at = message, fix, at


Array = int | str | dict[str, list[str]]


def normalise(value: object) -> Array:
    """The stored form of an ``array:`` value: a count (int), indices (a canonical string such as
    ``"0-99:2,200"``) or a matrix (each key's values as strings). Raises ArrayError."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        raise ArrayError(f"should be a count, indices or a matrix, got {_show(value)}")
    if isinstance(value, int):
        _check_count(value)
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():  # "100" from the command line: a count, as array: 100 is
            return normalise(int(text))
        canonical = ",".join(_part_text(*p) for p in _parse_indices(text))
        return f"{canonical}-{canonical}" if canonical.isdigit() else canonical  # one index: not a count
    if isinstance(value, list):
        if not value:
            raise ArrayError("the list of indices is empty")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ArrayError(f"a list of indices holds whole numbers from 0 only, got {_show(v)}")
        return normalise(",".join(str(v) for v in value) if len(value) > 1 else f"{value[0]}-{value[0]}")
    if isinstance(value, dict):
        return _matrix(value)
    raise ArrayError(f"should be a count, indices or a matrix, got a {type(value).__name__}")


def size(array: Array) -> int:
    """How many tasks ``array`` (normalised) stands for."""
    if isinstance(array, int):
        return array
    if isinstance(array, str):
        return sum(_part_size(*p) for p in _parse_indices(array))
    return math.prod(len(v) for v in array.values())


def indices(array: Array) -> list[int]:
    """Each task's index, in order (a matrix: 0 to size - 1)."""
    if isinstance(array, int):
        return list(range(array))
    if isinstance(array, str):
        return [i for low, high, step in _parse_indices(array) for i in range(low, high + 1, step)]
    return list(range(size(array)))


def values(array: Array) -> Iterator[dict[str, str]] | None:
    """A matrix's values for each task, in index order (None: not a matrix)."""
    if not isinstance(array, dict):
        return None
    keys = list(array)
    return (dict(zip(keys, combo, strict=True)) for combo in itertools.product(*array.values()))


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def task_env(array_id: int, index: int, tasks: int, values: Mapping[str, str] | None) -> dict[str, str]:
    """What a task sees besides its job's own variables."""
    env = {f"{ENV_PREFIX}ID": str(array_id), f"{ENV_PREFIX}INDEX": str(index), f"{ENV_PREFIX}SIZE": str(tasks)}
    return env | {env_name(k): v for k, v in (values or {}).items()}


def parse_option(text: str) -> tuple[Array, int | None]:
    """``coop submit --array``: what ``array:`` takes, with Slurm's ``%N`` (at most N at once) after it."""
    spec, _, limit = text.partition("%")
    if limit and not limit.strip().isdigit():
        raise ArrayError(f"{_show(text)}: what follows % must be a whole number", "e.g. --array 0-99%10")
    return normalise(spec), int(limit) if limit else None


# --- helpers ------------------------------------------------------------------------------------


def _show(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    return text if len(text) <= 60 else text[:57] + "..."


def _check_count(n: int) -> None:
    if n < 1:
        raise ArrayError(f"{n} tasks: an array has at least 1", f"use a whole number from 1 to {MAX_TASKS}")
    if n > MAX_TASKS:
        raise ArrayError(
            f"{n} tasks is more than an array may hold ({MAX_TASKS})",
            f"split it into arrays of at most {MAX_TASKS} tasks",
        )


def _parse_indices(text: str) -> list[tuple[int, int, int]]:
    """``"0-99:2,200"`` -> [(0, 98, 2), (200, 200, 1)]: each part's first and last index and its step,
    checked: indices within bounds, none named twice, at most MAX_TASKS in all."""
    if not text.strip():
        raise ArrayError("no indices given")
    parts, total = [], 0
    for raw in text.split(","):
        m = _PART.fullmatch(raw.strip())
        if not m:
            raise ArrayError(f"{_show(raw.strip())} is not an index or a range of indices in {_show(text)}")
        low = int(m[1])
        high = int(m[2]) if m[2] is not None else low
        step = int(m[3]) if m[3] is not None else 1
        if high < low:
            raise ArrayError(f"range {low}-{high} ends before it starts", "put the smaller index first, e.g. 0-99")
        if step < 1:
            raise ArrayError(f"range {raw.strip()} has a step of 0", "use a step of 1 or more, e.g. 0-99:2")
        if high > MAX_INDEX:
            raise ArrayError(f"index {high} is past the largest allowed ({MAX_INDEX})", f"use 0 to {MAX_INDEX}")
        high = low + (high - low) // step * step  # "0-99:2" ends at 98
        parts.append((low, high, step))
        total += _part_size(low, high, step)
        if total > MAX_TASKS:
            raise ArrayError(
                f"{_show(text)} names more tasks than an array may hold ({MAX_TASKS})",
                f"split it into arrays of at most {MAX_TASKS} tasks",
            )
    seen: set[int] = set()
    for low, high, step in parts:
        chunk = set(range(low, high + 1, step))
        twice = seen & chunk
        if twice:
            raise ArrayError(f"index {min(twice)} is named twice in {_show(text)}", "name each index once")
        seen |= chunk
    return parts


def _part_size(low: int, high: int, step: int) -> int:
    return (high - low) // step + 1


def _part_text(low: int, high: int, step: int) -> str:
    if low == high and step == 1:
        return str(low)
    return f"{low}-{high}" + (f":{step}" if step != 1 else "")


def _scalar(value: object, at: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ArrayError(f"{_show(value)} is not a finite number", MATRIX_FIX, at)
    if isinstance(value, (int, float)):
        try:
            text = str(value)
        except ValueError:  # an int of more than 4300 digits
            raise ArrayError("a number far too large", MATRIX_FIX, at) from None
    elif isinstance(value, str):
        text = value
    else:
        names = {"dict": "a mapping", "list": "a list", "NoneType": "null"}
        kind = names.get(type(value).__name__, type(value).__name__)
        raise ArrayError(
            f"values are text or numbers, got {kind}: {_show(value)}",
            "give each key a flat list of text or numbers, e.g. model: [qwen-0.5b, llama-1b]",
            at,
        )
    if len(text) > MAX_VALUE:
        raise ArrayError(f"a value of {len(text)} characters (at most {MAX_VALUE})", "shorten the value", at)
    return text


def _matrix(value: dict[object, object]) -> dict[str, list[str]]:
    if not value:
        raise ArrayError("the matrix is empty", MATRIX_FIX)
    if len(value) > MAX_KEYS:
        raise ArrayError(f"the matrix has {len(value)} keys (at most {MAX_KEYS})", MATRIX_FIX)
    out: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    total = 1
    for key, raw in value.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ArrayError(f"{_show(key)} cannot name an environment variable", KEY_FIX, str(key))
        name = key.upper()
        if name in OWN_ENV:
            raise ArrayError(
                f"{_show(key)} is reserved: every task sees {env_name(key)} already", "rename the key", key
            )
        if name in names:
            raise ArrayError(
                f"{_show(key)} and {_show(names[name])} would both be {env_name(key)}", "rename one of them", key
            )
        names[name] = key
        items: Sequence[object] = raw if isinstance(raw, list) else [raw]  # one value: a list of one
        if not items:
            raise ArrayError("the list of values is empty", f"give {key} one value or more, e.g. {key}: [a, b]", key)
        out[key] = [_scalar(v, f"{key}[{i}]" if isinstance(raw, list) else key) for i, v in enumerate(items)]
        total *= len(items)
        if total > MAX_TASKS:
            counts = " x ".join(str(len(v)) for v in out.values())
            raise ArrayError(
                f"the matrix makes more tasks ({counts} so far) than an array may hold ({MAX_TASKS})",
                f"use fewer values, or split it into arrays of at most {MAX_TASKS} tasks",
                key,
            )
    return out
