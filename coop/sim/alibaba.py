"""Convert the Alibaba GPU cluster trace (cluster-trace-gpu-v2023, "openb") to the simulator's CSVs.

The trace has no user column, so members follow a fixed rule (docs/simulate.md): member k of K
(k = 1..K) weighs k; nodes go to members by smooth weighted round-robin in the trace's node order.
Every member asks for work in proportion to the TFLOP/s it gives: by default (``assign="work"``) each
task, in creation order, goes to the member furthest below that share of the GPU-time asked so far;
``assign="count"`` gives it to the member whose slice of [0, 1) holds crc32(task name) / 2^32 (shares
of the task *count*, which heavy-tailed task lengths pull far from shares of the work).
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from coop.sim.inputs import InputError, SimJob, SimNode, busy_horizon

# GB and calibrated dense TFLOP/s per GPU the converter assumes for the trace's models. G2 and G3 are
# undisclosed internal models: taken as V100-class cards.
MODELS: dict[str, tuple[float, float]] = {
    "P100": (16.0, 18.0),
    "T4": (16.0, 40.0),
    "V100M16": (16.0, 100.0),
    "V100M32": (32.0, 100.0),
    "A10": (24.0, 70.0),
    "G2": (32.0, 100.0),
    "G3": (32.0, 100.0),
}
NODE_FILE = "openb_node_list_gpu_node.csv"
TASK_FILE = "openb_pod_list_default.csv"
PREEMPTIBLE_QOS = ("BE", "Burstable")  # best effort and burstable tasks may be preempted; LS, Guaranteed not
ASSIGN_RULES = ("work", "count")


@dataclass(frozen=True)
class Conversion:
    jobs: list[SimJob]
    nodes: list[SimNode]
    skipped: dict[str, int]  # why -> tasks left out


def _read(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise InputError(str(path), None, None, f"cannot be read ({e.strerror})",
                         "give the folder that holds the trace's CSV files") from None  # fmt: skip
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(str(path), 1, missing[0], "column is missing", "is this the v2023 openb trace?")
        return [(reader.line_num, row) for row in reader]


def convert(folder: Path, members: int = 8, node_every: int = 1, time_scale: float = 1.0,
            tasks: str = TASK_FILE, since: float = 0.0, assign: str = "work") -> Conversion:  # fmt: skip
    """Nodes (every ``node_every``-th, to make a smaller pool) and tasks of the trace in ``folder``.

    Tasks created at or after ``since`` (trace seconds) that asked for GPUs and ran (a scheduled time, a
    deletion after it) become jobs: a share of a
    GPU (gpu_milli < 1000) becomes a whole GPU, as Coop does not share cards; submit times are divided
    by ``time_scale`` (above 1: the same work arrives faster); the run time observed is taken as
    measured on the pool's average card and restated for a 100 TFLOP/s GPU.
    """
    if members < 1 or node_every < 1 or time_scale <= 0 or assign not in ASSIGN_RULES:
        raise ValueError(f"members and node_every must be at least 1, time_scale above 0, assign one of {ASSIGN_RULES}")
    names = [f"m{k:02d}" for k in range(1, members + 1)]
    weights = list(range(1, members + 1))
    node_rows = _read(folder / NODE_FILE, ("sn", "gpu", "model"))
    nodes: list[SimNode] = []
    current = [0.0] * members
    for index, (line, row) in enumerate(node_rows):
        model = row["model"].strip()
        if model not in MODELS:
            raise InputError(str(folder / NODE_FILE), line, "model", f"unknown GPU model '{model}'",
                             f"add it to coop.sim.alibaba.MODELS (known: {', '.join(MODELS)})")  # fmt: skip
        if index % node_every:
            continue
        gpus = int(row["gpu"])
        if gpus < 1:
            continue
        for k in range(members):  # smooth weighted round-robin: deterministic and even
            current[k] += weights[k]
        owner = max(range(members), key=lambda k: (current[k], -k))
        current[owner] -= sum(weights)
        memory, tflops = MODELS[model]
        nodes.append(SimNode(len(nodes) + 1, row["sn"], names[owner], gpus, model, memory, tflops, "consumer", ()))
    given = [sum(n.gpus * n.tflops for n in nodes if n.member == name) for name in names]
    total_tflops = sum(given)
    average = total_tflops / sum(n.gpus for n in nodes)
    fractions = [g / total_tflops for g in given]
    skipped: dict[str, int] = {}
    raw: list[tuple[float, SimJob]] = []
    for _, row in _read(folder / tasks, ("name", "num_gpu", "creation_time", "deletion_time", "scheduled_time")):
        gpus = int(row["num_gpu"] or 0)
        if float(row["creation_time"]) < since:
            skipped["before --since"] = skipped.get("before --since", 0) + 1
            continue
        if gpus < 1:
            skipped["CPU only"] = skipped.get("CPU only", 0) + 1
            continue
        if not row["scheduled_time"] or not row["deletion_time"]:
            skipped["never ran"] = skipped.get("never ran", 0) + 1
            continue
        ran = float(row["deletion_time"]) - float(row["scheduled_time"])
        if ran <= 0:
            skipped["ran for no time"] = skipped.get("ran for no time", 0) + 1
            continue
        models = tuple(m for m in (row.get("gpu_spec") or "").split("|") if m)
        job = SimJob(0, row["name"], "", float(row["creation_time"]), ran * average / 100, gpus, None,
                     models, (row.get("qos") or "") in PREEMPTIBLE_QOS)  # fmt: skip
        raw.append((float(row["creation_time"]), job))
    raw.sort(key=lambda x: (x[0], x[1].name))
    start = min((t for t, _ in raw), default=0.0)
    if assign == "work":
        owners = _by_work(raw, fractions, busy_horizon([j for _, j in raw], sum(n.gpus for n in nodes)))
    else:
        owners = _by_count(raw, fractions)
    jobs = [
        replace(j, id=i, member=names[owner], submit=round((t - start) / time_scale, 3), duration=round(j.duration, 3))
        for i, ((t, j), owner) in enumerate(zip(raw, owners, strict=True), start=1)
    ]
    return Conversion(jobs, nodes, skipped)


def _by_work(raw: list[tuple[float, SimJob]], fractions: list[float], horizon: float) -> list[int]:
    """Each task, in creation order, to the member furthest below its share of the GPU-time asked so far
    (ties: the lower number), so what each member asks for tracks what it gives all through the trace.
    A task counts at most ``horizon`` (seconds on a 100 TFLOP/s GPU): a service that runs for months
    after the pool has drained competes with no one then."""
    asked, total, owners = [0.0] * len(fractions), 0.0, []
    for _, job in raw:
        work = job.gpus * min(job.duration, horizon)
        total += work
        owner = max(range(len(fractions)), key=lambda k: (fractions[k] * total - asked[k], -k))
        asked[owner] += work
        owners.append(owner)
    return owners


def _by_count(raw: list[tuple[float, SimJob]], fractions: list[float]) -> list[int]:
    """Each task to the member whose slice of [0, 1), sized by ``fractions``, holds crc32(name) / 2^32."""
    bounds, acc = [], 0.0
    for f in fractions:
        acc += f
        bounds.append(acc)
    last = len(fractions) - 1
    return [next(k for k, b in enumerate(bounds) if zlib.crc32(j.name.encode()) / 2**32 < b or k == last)
            for _, j in raw]  # fmt: skip
