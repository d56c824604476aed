"""The batch script Coop writes for one attempt (pure).

Values the user wrote (command, environment) reach the script only through ``shlex.quote``: single
quotes, in which bash expands nothing, so a ``$(...)``, a backtick, a quote or a newline in them is
passed on exactly as written. ``#SBATCH`` lines carry only numbers, Coop's own job name and the
admin's pool settings, each checked against a pattern with no spaces or quotes; no user string goes
into a comment either (a newline there would end the comment).

A gang (``nodes`` > 1) is one batch job of ``--nodes`` N, one task per node: the batch shell (on the
first node) unpacks the workdir and starts ``srun`` once, which runs :data:`RANK_WRAPPER` on every
node with the command as an argument. The wrapper sends the rank's output to its own
``rank-<k>.log``, takes its rank from ``$SLURM_NODEID`` and leaves ``rank-<k>.exit``; the batch
shell's own output (unpack errors, ``srun``'s messages) goes to ``rank-0.log`` too, so rank 0's log
is the gang's log. ``--kill-on-bad-exit`` stops every rank when one fails, and the gang's exit code is
that of the rank that failed first on its own (not one Slurm stopped for it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from shlex import quote

from coop.server.backends import gang_env, master_port

OUTPUT = "output.log"  # in the job directory: the log Coop reads back (a gang's: RANK_LOG of each rank)
EXIT_STATUS = "exit-status"  # in the job directory: the command's exit code, for when Slurm has forgotten the job
RANK_LOG = "rank-{rank}.log"  # in the job directory: one rank's output; rank 0's has the batch shell's too
RANK_EXIT = "rank-{rank}.exit"  # in the job directory: "<exit code> <ns since epoch> <1 if stopped, else 0>"
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
    nodes: int = 1  # a gang's size: cpus, gpus and memory_gb are per node
    port: int | None = None  # a gang's MASTER_PORT; None: master_port(name)


def time_limit(seconds: int) -> str:
    """Slurm counts limits in whole minutes: round up, at least one."""
    return str(max(1, math.ceil(seconds / 60)))


def _directives(job: BatchJob) -> list[str]:
    opts = [
        f"--job-name={job.name}",
        f"--output={OUTPUT if job.nodes == 1 else RANK_LOG.format(rank=0)}",
        "--open-mode=append",
        "--no-requeue",  # Coop requeues as a new attempt; Slurm must not rerun it behind Coop's back
    ]
    if job.nodes == 1:
        opts.append("--ntasks=1")
    else:  # --gres, --cpus-per-task (one task a node) and --mem are per node in Slurm
        opts += [f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    opts.append(f"--cpus-per-task={job.cpus}")
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
    for opt in job.extra_options if job.nodes > 1 else []:
        if opt.split("=", 1)[0] in ("--nodes", "--ntasks", "--ntasks-per-node"):
            raise ValueError(f"the pool's sbatch option {opt} would change the shape of a gang of {job.nodes} nodes")
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
    lines += _gang_start(job) if job.nodes > 1 else _start(job)
    lines += [
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"; status=$?',
    ]
    if job.nodes > 1:
        lines += _gang_status(job)
    lines += [
        # kept beside the log: without accounting, Slurm forgets a finished job after MinJobAge
        f'echo "$status" > {status}.tmp && mv {status}.tmp {status}',
    ]
    if job.workdir_archive:  # what was unpacked goes, whatever the outcome: a job keeps its results elsewhere
        lines.append(f"cd {quote(job.job_dir)} && rm -rf work")
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def _start(job: BatchJob) -> list[str]:
    return [
        # The command runs as a child so that its exit code can be kept (below). A SIGTERM to this
        # shell (a cancel, a preemption, the time limit) is passed on, and the shell waits for the
        # command to finish saving, as it would if the command were the batch shell itself.
        'trap \'[ -n "${child:-}" ] && kill -TERM "$child" 2>/dev/null\' TERM',
        f"/bin/bash -c {quote(job.command)} &",
        "child=$!",
    ]


_RANK = "\x00rank\x00"  # stand-ins given to gang_env: which of its variables take the rank, which the master
_MASTER = "\x00master\x00"

# Runs once per node under srun, as ``bash -c RANK_WRAPPER coop-rank COMMAND JOB_DIR``: Coop's own
# text (the command and the directory come in as arguments, never as script). It keeps the rank's
# exit code, and whether Slurm had stopped it (a TERM: a cancel, or another rank's failure), for the
# batch shell to find the rank that failed first. Slurm signals every process of the step, the
# command included; the wrapper passes the TERM on as the batch shell does.
RANK_WRAPPER = """\
d=$2 r=${SLURM_NODEID:?}
exec >>"$d/rank-$r.log" 2>&1 || { echo "coop: rank $r on $(hostname) cannot write to $d: \\
a gang needs Coop's scratch dir on a filesystem every node shares" >&2; exit 97; }
cd "$d/work" || { echo "coop: rank $r on $(hostname) cannot see $d/work: \\
a gang needs Coop's scratch dir on a filesystem every node shares" >&2; exit 97; }
@RANK_VARS@
stopped=0
trap 'stopped=1; [ -n "${child:-}" ] && kill -TERM "$child" 2>/dev/null' TERM
/bin/bash -c "$1" &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child"; done
wait "$child"; status=$?
echo "$status $(date +%s%N) $stopped" >"$d/rank-$r.exit"
exit "$status"
"""


def _gang_start(job: BatchJob) -> list[str]:
    """Every rank's environment (gang_env), and srun starting the wrapper once per node."""
    env = gang_env(job.nodes, _RANK, _MASTER, job.port or master_port(job.name), job.gpus)
    common, per_rank = [], []
    for key, value in env.items():
        if not _ENV_KEY.match(key):
            raise ValueError(f"environment variable name {key!r} is not a shell identifier")
        if value == _RANK:
            per_rank.append(f'{key}="$r"')
        elif value == _MASTER:
            common.append(f'{key}="$coop_master"')
        else:
            common.append(f"{key}={quote(value)}")
    wrapper = RANK_WRAPPER.replace("@RANK_VARS@", f"export {' '.join(per_rank)}" if per_rank else ":")
    srun = ["srun", f"--nodes={job.nodes}", f"--ntasks={job.nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={job.cpus}", "--kill-on-bad-exit=1", "--export=ALL"]  # fmt: skip
    no_master = "{ echo 'coop: cannot name the first node of the gang (scontrol show hostnames)' >&2; exit 97; }"
    return [
        # rank 0 runs on the allocation's first node: where every rank finds the rendezvous
        'coop_master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'[ -n "$coop_master" ] || {no_master}',
        *(f"export {assignment}" for assignment in common),
        # srun itself answers a SIGTERM by killing the ranks outright: a SIGTERM to this shell alone
        # goes to the ranks instead (scancel signals only the job's steps, not this shell), and srun
        # ends when they do. A cancel signals every rank directly anyway.
        'trap \'[ -n "${child:-}" ] && scancel --quiet --signal=TERM "$SLURM_JOB_ID" 2>/dev/null\' TERM',
        f"{' '.join(srun)} /bin/bash -c {quote(wrapper)} coop-rank {quote(job.command)} {quote(job.job_dir)} &",
        "child=$!",
    ]


def _gang_status(job: BatchJob) -> list[str]:
    """The gang's exit code: the rank that failed first without being stopped (srun's own code is the
    highest of all ranks', often a stopped rank's 143); srun's where none did (a cancel: all stopped)."""
    ranks = f"{quote(job.job_dir)}/{RANK_EXIT.format(rank='*')}"
    return [
        'first="" first_at=""',
        f"for f in {ranks}; do",
        '  read -r code at stopped < "$f" 2>/dev/null || continue',
        '  [ "$stopped" = 0 ] && [ "$code" != 0 ] || continue',
        '  if [ -z "$first_at" ] || [ "$at" -lt "$first_at" ]; then first=$f first_at=$at rank_code=$code; fi',
        "done",
        'if [ "$status" != 0 ] && [ -n "$first" ]; then',
        "  rank=${first##*/rank-}; rank=${rank%.exit}",
        '  echo "coop: rank $rank failed first (exit $rank_code): the gang\'s exit code" >&2',
        "  status=$rank_code",
        "fi",
    ]
