"""Pure parsers for what ``sinfo``, ``squeue``, ``scontrol``, ``sacct`` and ``sbatch`` print.

Every command Coop runs asks for explicit fields joined by :data:`SEP`, the ASCII unit separator,
which no Slurm name, state or path contains (see :mod:`coop.server.backends.slurm.commands`). The tests feed these
functions output captured from a real Slurm (``tests/data/slurm``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEP = "\x1f"

# Node states that take no new work, with or without a flag ("drained*", "down~", "mixed+drain").
_UNUSABLE = {"down", "drain", "drained", "draining", "fail", "failing", "maint", "inval", "unknown", "future",
             "not_responding", "no_respond", "power_down", "powering_down", "reboot_issued", "perfctrs"}  # fmt: skip
_STATE_FLAGS = "*~#!%$@^-"
_COUNT = re.compile(r"^(\d+)([KMGT]?)$")
_MULTIPLIER = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class SlurmOutputError(ValueError):
    """Slurm printed something these parsers do not understand (the message quotes it)."""


@dataclass(frozen=True)
class Gres:
    name: str  # "gpu"
    type: str | None  # "rtx4090"; None when the site does not type its GRES
    count: int

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.type}" if self.type else self.name


@dataclass(frozen=True)
class SinfoNode:
    name: str
    cpus: int
    memory_mb: int
    gres: tuple[Gres, ...]
    state: str  # long form, lower case, flags kept: "idle", "mixed", "drained*"
    partition: str  # without the default marker "*"

    @property
    def usable(self) -> bool:
        return node_usable(self.state)


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, NODE_FAIL, ...
    reason: str


@dataclass(frozen=True)
class JobRecord:
    """A job's final (or current) state as ``scontrol`` or ``sacct`` report it."""

    job_id: str
    state: str  # first word only: sacct says "CANCELLED by 1001"
    exit_code: int | None
    signal: int | None
    reason: str = ""
    name: str = ""
    time_limit: str = ""


def node_usable(state: str) -> bool:
    """Can this node take work? Not when it is down, drained, failing or not responding ("*")."""
    state = state.strip().lower()
    if not state or state.endswith("*"):
        return False
    parts = state.rstrip(_STATE_FLAGS).split("+")
    return not any(p in _UNUSABLE for p in parts)


def _count(text: str, where: str) -> int:
    m = _COUNT.match(text)
    if m is None:
        raise SlurmOutputError(f"not a count: {text!r} in {where!r}")
    return int(m.group(1)) * _MULTIPLIER[m.group(2)]


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses: 'gpu:a:2(S:0-1),shard:8' -> two items."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [s.strip() for s in items if s.strip()]


def parse_gres(text: str) -> tuple[Gres, ...]:
    """'gpu:rtx4090:2(S:0-1),shard:8' -> (Gres(gpu, rtx4090, 2), Gres(shard, None, 8)); '(null)' -> ()."""
    text = text.strip()
    if not text or text == "(null)":
        return ()
    out = []
    for item in _split_top(text):
        bare = item.split("(", 1)[0]
        parts = bare.split(":")
        if len(parts) > 1 and _COUNT.match(parts[-1]):
            count, parts = _count(parts[-1], text), parts[:-1]
        else:
            count = 1
        name, gres_type = parts[0], ":".join(parts[1:]) or None
        if not name:
            raise SlurmOutputError(f"GRES without a name: {item!r} in {text!r}")
        out.append(Gres(name, gres_type, count))
    return tuple(out)


def _fields(line: str, n: int, what: str) -> list[str]:
    fields = line.rstrip("\r\n").split(SEP)
    if len(fields) != n:
        raise SlurmOutputError(f"{what}: expected {n} fields, got {len(fields)} in {line!r}")
    return [f.strip() for f in fields]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def parse_sinfo(text: str) -> list[SinfoNode]:
    """``sinfo -N -h -o '%N␟%c␟%m␟%G␟%T␟%C␟%P'``: one node per line (per partition it is in)."""
    nodes = []
    for line in _lines(text):
        name, cpus, mem, gres, state, _cpu_states, partition = _fields(line, 7, "sinfo")
        nodes.append(
            SinfoNode(
                name=name,
                cpus=_count(cpus.rstrip("+"), line),
                memory_mb=_count(mem.rstrip("+"), line),
                gres=parse_gres(gres),
                state=state.lower(),
                partition=partition.rstrip("*"),
            )
        )
    return nodes


def parse_squeue(text: str) -> list[QueueEntry]:
    """``squeue --states=all -h -o '%i␟%j␟%T␟%r'``."""
    return [QueueEntry(*_fields(line, 4, "squeue")) for line in _lines(text)]


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's 'CODE:SIGNAL' ('3:0', '0:15') -> (3, 0), (0, 15); anything else -> (None, None)."""
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _key(line: str, key: str) -> str:
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", line)
    return m.group(1) if m else ""


def parse_scontrol_job(text: str) -> JobRecord | None:
    """``scontrol -o show job ID``: one line of Key=Value pairs; None when it printed nothing."""
    lines = _lines(text)
    if not lines:
        return None
    line = lines[0]
    job_id, state = _key(line, "JobId"), _key(line, "JobState")
    if not job_id or not state:
        raise SlurmOutputError(f"scontrol: no JobId/JobState in {line[:200]!r}")
    code, signal = parse_exit_code(_key(line, "ExitCode"))
    return JobRecord(
        job_id=job_id,
        state=state,
        exit_code=code,
        signal=signal,
        reason=_key(line, "Reason"),
        name=_key(line, "JobName"),
        time_limit=_key(line, "TimeLimit"),
    )


def parse_sacct(text: str) -> list[JobRecord]:
    """``sacct -n -X -P --delimiter='␟' -o JobIDRaw,JobName,State,ExitCode,Elapsed``."""
    out = []
    for line in _lines(text):
        job_id, name, state, exit_code, _elapsed = _fields(line, 5, "sacct")
        code, signal = parse_exit_code(exit_code)
        words = state.split()
        out.append(JobRecord(job_id=job_id, state=words[0] if words else "", exit_code=code, signal=signal, name=name))
    return out


def parse_sbatch(text: str) -> str:
    """``sbatch --parsable`` prints 'JOBID' or 'JOBID;CLUSTER'."""
    lines = _lines(text)
    job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
    if not job_id.isdigit():
        raise SlurmOutputError(f"sbatch --parsable printed {text.strip()[:200]!r}, not a job id")
    return job_id
