"""The simulator's two input files, read into plain records with an error that names row, field and fix.

jobs CSV:  submit_time, duration, gpus, member [, name, gpu_memory, gpu_model, preemptible, max_runtime, nodes]
nodes CSV: name, member, gpus, gpu_model, gpu_memory, tflops [, tier, offline]

``duration`` is seconds on a 100 TFLOP/s GPU; ``gpus`` the job's width in all (a job wider than one
node is a gang over ``nodes`` nodes, ``spread``); ``offline`` is ``start-end`` intervals (seconds)
separated by ``;``, during which the owner has the machine back. See docs/simulate.md.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from coop.spec import normalise_gpu_model

JOB_FIELDS = ("submit_time", "duration", "gpus", "member")
JOB_OPTIONAL = ("name", "gpu_memory", "gpu_model", "preemptible", "max_runtime", "nodes")
NODE_FIELDS = ("name", "member", "gpus", "gpu_model", "gpu_memory", "tflops")
NODE_OPTIONAL = ("tier", "offline")
MEMBER_FIELDS = ("member",)
MEMBER_OPTIONAL = ("share", "gpu_cap")
TIERS = ("consumer", "hpc")
MAX_GPUS = 64  # on one node (a job may ask for more: it runs as a gang over several nodes, ``spread``)

T = TypeVar("T")


class InputError(ValueError):
    """A bad input file: ``str()`` names the file, the row (line number) and the field, and says the fix."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str, fix: str) -> None:
        where = path + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}; {fix}")
        self.path, self.line, self.field, self.message, self.fix = path, line, field, message, fix


@dataclass(frozen=True)
class SimJob:
    id: int  # 1-based row order
    name: str
    member: str
    submit: float  # seconds from the start
    duration: float  # seconds on a 100 TFLOP/s GPU
    gpus: int  # in all: a gang's over all its nodes, as the trace gives it
    gpu_memory: float | None  # GB per GPU, at least
    gpu_models: tuple[str, ...]  # allow-list, normalised; empty = any
    preemptible: bool
    # the declared limit (wall-clock seconds on whatever card, as the job spec's): it orders the
    # member's own queue, and an attempt that would run past it fails there, as live
    max_runtime: float | None = None
    # machines it spans, each with ``per_node`` GPUs (a gang when above 1); None: as ``spread`` decides
    # from the cluster (one node when one is wide enough)
    nodes: int | None = None

    @property
    def per_node(self) -> int:
        """GPUs on each of its nodes: its width over its nodes, rounded up."""
        return -(-self.gpus // (self.nodes or 1))

    @property
    def total_gpus(self) -> int:
        """GPUs it holds in all: ``per_node`` on each node (at least ``gpus``)."""
        return self.per_node * (self.nodes or 1)


@dataclass(frozen=True)
class SimNode:
    id: int  # 1-based row order
    name: str
    member: str
    gpus: int
    gpu_model: str  # normalised
    gpu_memory: float  # GB per GPU
    tflops: float  # per GPU, as calibrated
    tier: str
    offline: tuple[tuple[float, float], ...]  # (start, end): the owner has it back


@dataclass(frozen=True)
class SimMember:
    """What an admin sets per member (``coop admin quota``): fair-share weight and GPU cap."""

    share: float = 1.0
    gpu_cap: int | None = None


class _Row:
    """One CSV row; each getter raises InputError naming the row and the field."""

    def __init__(self, path: str, line: int, values: dict[str, str]) -> None:
        self.path, self.line, self.values = path, line, values

    def fail(self, field: str, message: str, fix: str) -> InputError:
        return InputError(self.path, self.line, field, message, fix)

    def text(self, field: str, default: str | None = None) -> str:
        value = (self.values.get(field) or "").strip()
        if not value:
            if default is not None:
                return default
            raise self.fail(field, "is empty", f"give a value for '{field}'")
        return value

    def number(self, field: str, kind: Callable[[str], T], lowest: float, what: str, default: T | None = None) -> T:
        raw = (self.values.get(field) or "").strip()
        if not raw and default is not None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise self.fail(field, f"'{raw}' is not {what}", f"write {what} of at least {lowest:g}") from None
        if not math.isfinite(float(value)) or float(value) < lowest:  # type: ignore[arg-type]
            raise self.fail(field, f"{raw} is out of range", f"write {what} of at least {lowest:g}")
        return value

    def boolean(self, field: str, default: bool) -> bool:
        raw = (self.values.get(field) or "").strip().lower()
        if not raw:
            return default
        if raw in ("true", "yes", "1"):
            return True
        if raw in ("false", "no", "0"):
            return False
        raise self.fail(field, f"'{raw}' is not true or false", "write true or false")


def _rows(path: Path, required: Iterable[str], optional: Iterable[str]) -> Iterable[_Row]:
    name = str(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise InputError(name, None, None, f"cannot be read ({e.strerror})", "check the path") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            raise InputError(name, 1, None, "has no header row", f"start with a header: {','.join(required)}")
        missing = [f for f in required if f not in header]
        if missing:
            raise InputError(name, 1, missing[0], "required column is missing",
                             f"the header needs {', '.join(required)}")  # fmt: skip
        known = set(required) | set(optional)
        unknown = [h for h in header if h not in known]
        if unknown:
            raise InputError(name, 1, unknown[0], "unknown column", f"use only {', '.join(sorted(known))}")
        reader.fieldnames = header
        for values in reader:
            if None in values:
                raise InputError(name, reader.line_num, None, "has more values than the header has columns",
                                 "remove the extra values or quote a value that holds a comma")  # fmt: skip
            if not any((v or "").strip() for v in values.values()):
                continue  # a blank line
            yield _Row(name, reader.line_num, values)


def _models(row: _Row, field: str) -> tuple[str, ...]:
    raw = (row.values.get(field) or "").strip()
    if not raw:
        return ()
    models = tuple(normalise_gpu_model(m) for m in raw.split("|"))
    if not all(models):
        raise row.fail(field, f"'{raw}' has an empty model name", "separate model names with | (e.g. A100|H100)")
    return tuple(sorted(set(models)))


def read_jobs(path: Path) -> list[SimJob]:
    jobs: list[SimJob] = []
    for row in _rows(path, JOB_FIELDS, JOB_OPTIONAL):
        job_id = len(jobs) + 1
        memory = row.number("gpu_memory", float, 0, "a size in GB", default=0.0)
        jobs.append(
            SimJob(
                id=job_id,
                name=row.text("name", default=f"job-{job_id}"),
                member=row.text("member"),
                submit=row.number("submit_time", float, 0, "a number of seconds"),
                duration=_positive(row, "duration", row.number("duration", float, 0, "a number of seconds")),
                gpus=row.number("gpus", int, 1, "a whole number of GPUs"),
                gpu_memory=memory or None,
                gpu_models=_models(row, "gpu_model"),
                preemptible=row.boolean("preemptible", True),
                max_runtime=_optional_positive(row, "max_runtime"),
                nodes=_nodes(row),
            )
        )
    if not jobs:
        raise InputError(str(path), None, None, "holds no jobs", "add at least one row under the header")
    return jobs


def _nodes(row: _Row) -> int | None:
    """The optional ``nodes`` column: machines the job spans (its GPUs spread evenly over them)."""
    if not (row.values.get("nodes") or "").strip():
        return None
    nodes = row.number("nodes", int, 1, "a whole number of nodes")
    gpus = row.number("gpus", int, 1, "a whole number of GPUs")
    if nodes > gpus:
        raise row.fail("nodes", f"{nodes} nodes for {gpus} GPUs leaves a node without a GPU",
                       f"give at most {gpus} nodes (each runs gpus / nodes GPUs, rounded up)")  # fmt: skip
    return nodes


def _optional_positive(row: _Row, field: str) -> float | None:
    if not (row.values.get(field) or "").strip():
        return None
    return _positive(row, field, row.number(field, float, 0, "a number of seconds"))


def _positive(row: _Row, field: str, value: float) -> float:
    if value <= 0:
        raise row.fail(field, f"{value:g} is not positive", f"give '{field}' a value above 0")
    return value


def _node_gpus(row: _Row) -> int:
    gpus = row.number("gpus", int, 1, "a whole number of GPUs")
    if gpus > MAX_GPUS:
        raise row.fail("gpus", f"{gpus} is more than one node can hold", f"give a node at most {MAX_GPUS}")
    return gpus


def _intervals(row: _Row) -> tuple[tuple[float, float], ...]:
    raw = (row.values.get("offline") or "").strip()
    if not raw:
        return ()
    out: list[tuple[float, float]] = []
    fix = "write start-end in seconds, intervals separated by ; (e.g. 3600-7200;86400-90000)"
    for part in raw.split(";"):
        start_s, sep, end_s = part.strip().partition("-")
        try:
            start, end = float(start_s), float(end_s)
        except ValueError:
            raise row.fail("offline", f"'{part.strip()}' is not a start-end interval", fix) from None
        if not sep or not (0 <= start < end) or not math.isfinite(end):
            raise row.fail("offline", f"'{part.strip()}' is not a start-end interval with start < end", fix)
        if out and start < out[-1][1]:
            raise row.fail("offline", f"'{part.strip()}' overlaps or precedes the interval before it",
                           "list intervals in time order without overlaps")  # fmt: skip
        out.append((start, end))
    return tuple(out)


def read_nodes(path: Path) -> list[SimNode]:
    nodes: list[SimNode] = []
    names: dict[str, int] = {}
    for row in _rows(path, NODE_FIELDS, NODE_OPTIONAL):
        name = row.text("name")
        if name in names:
            raise row.fail("name", f"node '{name}' is already on line {names[name]}", "give every node its own name")
        names[name] = row.line
        tier = row.text("tier", default="consumer")
        if tier not in TIERS:
            raise row.fail("tier", f"'{tier}' is not a tier", f"use one of {', '.join(TIERS)}")
        gpus = _node_gpus(row)
        model = normalise_gpu_model(row.text("gpu_model"))
        if not model:
            raise row.fail("gpu_model", "is not a GPU model name", "write a model such as RTX4090 or A100")
        nodes.append(
            SimNode(
                id=len(nodes) + 1,
                name=name,
                member=row.text("member"),
                gpus=gpus,
                gpu_model=model,
                gpu_memory=_positive(row, "gpu_memory", row.number("gpu_memory", float, 0, "a size in GB")),
                tflops=_positive(row, "tflops", row.number("tflops", float, 0, "a number of TFLOP/s")),
                tier=tier,
                offline=_intervals(row),
            )
        )
    if not nodes:
        raise InputError(str(path), None, None, "holds no nodes", "add at least one row under the header")
    return nodes


def read_members(path: Path) -> dict[str, SimMember]:
    """Optional members CSV: member, share (default 1), gpu_cap (empty: no cap)."""
    members: dict[str, SimMember] = {}
    lines: dict[str, int] = {}
    for row in _rows(path, MEMBER_FIELDS, MEMBER_OPTIONAL):
        name = row.text("member")
        if name in members:
            raise row.fail("member", f"'{name}' is already on line {lines[name]}", "list each member once")
        lines[name] = row.line
        share = row.number("share", float, 0, "a fair-share weight", default=1.0)
        raw_cap = (row.values.get("gpu_cap") or "").strip()
        cap = row.number("gpu_cap", int, 0, "a whole number of GPUs") if raw_cap else None
        members[name] = SimMember(share, cap)
    return members


def _num(x: float) -> str:
    """Shortest text that reads back as the same float ("3600" rather than "3600.0")."""
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else repr(x)


def write_jobs(jobs: list[SimJob], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(("submit_time", "duration", "gpus", "member", "name", "gpu_memory", "gpu_model", "preemptible",
                      "max_runtime", "nodes"))  # fmt: skip
        for j in jobs:
            out.writerow((_num(j.submit), _num(j.duration), j.gpus, j.member, j.name,
                          _num(j.gpu_memory) if j.gpu_memory else "", "|".join(j.gpu_models),
                          str(j.preemptible).lower(), _num(j.max_runtime) if j.max_runtime else "",
                          j.nodes if j.nodes is not None else ""))  # fmt: skip


def write_nodes(nodes: list[SimNode], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(("name", "member", "gpus", "gpu_model", "gpu_memory", "tflops", "tier", "offline"))
        for n in nodes:
            away = ";".join(f"{_num(a)}-{_num(b)}" for a, b in n.offline)
            out.writerow((n.name, n.member, n.gpus, n.gpu_model, _num(n.gpu_memory), _num(n.tflops), n.tier, away))


def contribution_shares(nodes: list[SimNode]) -> dict[str, SimMember]:
    """Fair-share weights proportional to what each member donates (GPUs x calibrated TFLOP/s), scaled
    so the average donor's weight is 1; a member that donates nothing keeps weight 1."""
    donated: dict[str, float] = {}
    for n in nodes:
        donated[n.member] = donated.get(n.member, 0.0) + n.gpus * n.tflops
    mean = sum(donated.values()) / len(donated) if donated else 1.0
    return {m: SimMember(share=(v / mean) if v > 0 and mean > 0 else 1.0) for m, v in donated.items()}


def busy_horizon(jobs: list[SimJob], gpus: int) -> float:
    """How long a pool of ``gpus`` GPUs stays busy with what the jobs ask, all asked at once, in the
    durations' unit (seconds on a 100 TFLOP/s GPU): the H where the sum over jobs of GPUs x
    min(duration, H) equals ``gpus`` x H. Each job counts only up to H: a service that runs for months
    after the rest has drained keeps a GPU, not the pool, busy. When the pool holds every job at once,
    nothing is contended: the longest duration (no limit)."""
    high = max((j.duration for j in jobs), default=0.0)
    if sum(j.total_gpus for j in jobs) <= gpus:
        return high
    high = max(high, sum(j.total_gpus * j.duration for j in jobs) / gpus)  # H is at most the work over the GPUs
    low = 0.0
    for _ in range(100):  # bisection, to well under a second
        mid = (low + high) / 2
        low, high = (mid, high) if sum(j.total_gpus * min(j.duration, mid) for j in jobs) > gpus * mid else (low, mid)
    return high


def ideal_last_start(jobs: list[SimJob], nodes: list[SimNode]) -> float:
    """When the last job would start if the pool were one machine holding all its GPUs at their average
    speed, serving jobs in submit order (a job waits until enough GPUs are free): a pool with no
    fragmentation and no policy to blame, which after that only drains. It depends on the trace and the
    cluster only (offline intervals aside), so every policy is judged over the same window (the report's
    share window ends there). 0 when there are no jobs or no GPUs."""
    gpus = sum(n.gpus for n in nodes)
    speed = sum(n.gpus * n.tflops for n in nodes) / gpus / 100.0 if gpus else 0.0
    if not jobs or speed <= 0:
        return 0.0
    ending: list[tuple[float, int]] = []  # (end, GPUs) of the jobs running
    free, clock, last = gpus, 0.0, 0.0
    for job in sorted(jobs, key=lambda j: (j.submit, j.id)):
        width = job.total_gpus
        if width > gpus:
            continue  # no machine could run it
        clock = max(clock, job.submit)
        while ending and (free < width or ending[0][0] <= clock):
            end, held = heapq.heappop(ending)
            clock, free = max(clock, end), free + held
        free -= width
        last = clock
        heapq.heappush(ending, (clock + job.duration / speed, width))
    return last


def spread(job: SimJob, nodes: list[SimNode]) -> SimJob:
    """The job with the machines it spans set: the trace's own ``nodes``, else as few as the widest node
    allows: ``ceil(gpus / G)``, where G is the most GPUs on one node that meets the job's GPU model and
    memory (any node when none does, so the replay's refusal names what is missing), each with
    ``ceil(gpus / nodes)`` GPUs. A job no wider than such a node stays on one (``nodes`` = 1)."""
    if job.nodes is not None:
        return job
    fitting = [
        n.gpus for n in nodes
        if (not job.gpu_models or n.gpu_model in job.gpu_models) and n.gpu_memory >= (job.gpu_memory or 0.0)
    ]  # fmt: skip
    widest = max(fitting or [n.gpus for n in nodes] or [job.gpus])
    return replace(job, nodes=max(1, -(-job.gpus // widest)))
