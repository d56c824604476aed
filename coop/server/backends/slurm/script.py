"""The batch script Coop writes for one attempt (pure).

Values the user wrote (command, environment) reach the script only through ``shlex.quote``: single
quotes, in which bash expands nothing, so a ``$(...)``, a backtick, a quote or a newline in them is
passed on exactly as written. ``#SBATCH`` lines carry only numbers, Coop's own job name and the
admin's pool settings, each checked against a pattern with no spaces or quotes; no user string goes
into a comment either (a newline there would end the comment).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from shlex import quote

OUTPUT = "output.log"  # in the job directory: the log Coop reads back
EXIT_STATUS = "exit-status"  # in the job directory: the command's exit code, for when Slurm has forgotten the job
_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:=/+-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class BatchJob:
    name: str  # Coop's submission id, coop-<job>-<attempt>: also how Coop finds the job again
    job_dir: str  # absolute, on the cluster
    command: str
    env: dict[str, str]
    cpus: int
    gpus: int = 0
    gres: str | None = None  # "gpu:rtx4090" or "gpu"
    memory_gb: float | None = None
    time_limit_s: int | None = None
    workdir_archive: str | None = None  # absolute path of the uploaded tar.gz
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    extra_options: list[str] = field(default_factory=list)


def time_limit(seconds: int) -> str:
    """Slurm counts limits in whole minutes: round up, at least one."""
    return str(max(1, math.ceil(seconds / 60)))


def _directives(job: BatchJob) -> list[str]:
    opts = [
        f"--job-name={job.name}",
        f"--output={OUTPUT}",
        "--open-mode=append",
        "--no-requeue",  # Coop requeues as a new attempt; Slurm must not rerun it behind Coop's back
        "--ntasks=1",
        f"--cpus-per-task={job.cpus}",
    ]
    for flag, value in (("partition", job.partition), ("account", job.account), ("qos", job.qos)):
        if value:
            opts.append(f"--{flag}={value}")
    if job.gpus:
        if not job.gres:
            raise ValueError("a GPU job needs the GRES to ask for")
        opts.append(f"--gres={job.gres}:{job.gpus}")
    if job.memory_gb:
        opts.append(f"--mem={math.ceil(job.memory_gb * 1024)}M")
    if job.time_limit_s:
        opts.append(f"--time={time_limit(job.time_limit_s)}")
    opts += job.extra_options
    for opt in opts:
        _, _, value = opt.partition("=")
        if not opt.startswith("--") or (value and not _SBATCH_VALUE.match(value)) or " " in opt:
            raise ValueError(f"refusing to write #SBATCH {opt!r}: only plain words may go there")
    return [f"#SBATCH {opt}" for opt in opts]


def batch_script(job: BatchJob) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", job.name):
        raise ValueError(f"job name {job.name!r}: only letters, digits, '.', '_' and '-'")
    lines = ["#!/bin/bash", *_directives(job)]
    lines += [
        "# Written by Coop. Every value below is single-quoted: bash expands nothing inside.",
        f"cd {quote(job.job_dir)} || exit 97",
        "mkdir -p work || exit 97",
    ]
    if job.workdir_archive:
        archive = quote(job.workdir_archive)
        unpack_failed = "{ echo 'coop: cannot unpack the workdir' >&2; rm -rf work; exit 98; }"
        lines.append(f"tar -xzf {archive} -C work || {unpack_failed}")
    lines.append("cd work || exit 97")
    for key, value in job.env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"environment variable name {key!r} is not a shell identifier")
        lines.append(f"export {key}={quote(value)}")
    status = quote(f"{job.job_dir}/{EXIT_STATUS}")
    lines += [
        # The command runs as a child so that its exit code can be kept (below). A SIGTERM to this
        # shell (a cancel, a preemption, the time limit) is passed on, and the shell waits for the
        # command to finish saving, as it would if the command were the batch shell itself.
        'trap \'[ -n "${child:-}" ] && kill -TERM "$child" 2>/dev/null\' TERM',
        f"/bin/bash -c {quote(job.command)} &",
        "child=$!",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; status=$?',
        # kept beside the log: without accounting, Slurm forgets a finished job after MinJobAge
        f'echo "$status" > {status}.tmp && mv {status}.tmp {status}',
    ]
    if job.workdir_archive:  # what was unpacked goes, whatever the outcome: a job keeps its results elsewhere
        lines.append(f"cd {quote(job.job_dir)} && rm -rf work")
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"
