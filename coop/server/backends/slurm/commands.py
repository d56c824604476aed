"""The command lines Coop runs on a login node, each argument quoted with ``shlex.quote``.

Output formats are explicit and joined by :data:`SEP` so that :mod:`coop.server.backends.slurm.parse` can split
them without guessing; ``-h`` drops headers and ``--parsable`` makes sbatch print only the id.
"""

from __future__ import annotations

from shlex import quote

from coop.server.backends.slurm.parse import SEP

SINFO_FORMAT = SEP.join(("%N", "%c", "%m", "%G", "%T", "%C", "%P"))
SQUEUE_FORMAT = SEP.join(("%i", "%j", "%T", "%r"))
SACCT_FIELDS = "JobIDRaw,JobName,State,ExitCode,Elapsed"


def _line(*args: str) -> str:
    return " ".join(quote(a) for a in args)


def sinfo(partition: str | None) -> str:
    args = ["sinfo", "-N", "-h", "-o", SINFO_FORMAT]
    if partition:
        args += ["-p", partition]
    return _line(*args)


def squeue(user: str, names: list[str] | None = None) -> str:
    """The user's jobs in any state Slurm still remembers (``MinJobAge`` after they end)."""
    args = ["squeue", "--states=all", "-h", "-u", user, "-o", SQUEUE_FORMAT]
    if names:
        args.append("--name=" + ",".join(names))
    return _line(*args)


def scontrol_job(job_id: str) -> str:
    return _line("scontrol", "-o", "show", "job", job_id)


def sacct(user: str, name: str) -> str:
    """Finished jobs Slurm no longer shows in squeue, from accounting (last 30 days)."""
    return _line("sacct", "-n", "-X", "-P", f"--delimiter={SEP}", "-u", user, "-S", "now-30days",
                 f"--name={name}", "-o", SACCT_FIELDS)  # fmt: skip


def sbatch(job_dir: str, script: str) -> str:
    """Submit from the job's own directory: relative ``#SBATCH --output`` paths resolve there."""
    return f"cd {quote(job_dir)} && {_line('sbatch', '--parsable', script)}"


def scancel(user: str, name: str) -> str:
    """By name: works before Coop has learnt the job id (e.g. right after a coordinator restart)."""
    return _line("scancel", "-u", user, f"--name={name}")
