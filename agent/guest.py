"""Runs one Coop job's command in the inner sandbox: ``python -I -m agent.guest`` is every Ray
entrypoint the coordinator submits (see ``coop.server.backends.ray``).

It runs in Ray's worker environment, which holds the Ray token, so it rebuilds the job's
environment from scratch: the node's policy comes from the agent (``COOP_SANDBOX_POLICY``), the
job from the coordinator (``COOP_GUEST``: command, env, owner, limits). ``-I`` keeps the job's own
working directory (which Ray makes the current one) off ``sys.path``: a job cannot replace this
module with its own code.

Stopping: Ray sends SIGTERM to the entrypoint and all its descendants, then SIGKILL after the grace
period. This wrapper and bubblewrap ignore SIGTERM/SIGINT (so they live to report the job's exit
code and clean up); the job's processes get them with their default meaning restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.job_files import JobFiles
from agent.sandbox import GUEST_ENV_KEEP, GUEST_ENV_KEEP_PREFIXES, Policy, bwrap

GUEST_ENV = "COOP_GUEST"
GPU_ASSIGNMENT = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
PIDS_MAX = 4096  # a fork bomb stops here, not at the machine's limit
CPU_PERIOD_US = 100_000
# this wrapper ignores SIGTERM/SIGINT (to outlive the job and send its files back); the job must not
DEFAULT_SIGNALS = ("env", "--default-signal=TERM,INT,HUP")


def say(message: str) -> None:
    """A line in the job's own log: the researcher reads why something was not as asked."""
    print(f"coop sandbox: {message}", file=sys.stderr, flush=True)


def guest_environment(job: dict[str, Any], scratch: Path) -> dict[str, str]:
    """The job's environment: a few harmless variables of the worker's (GPU assignment, locale,
    PATH), the job's own, and where its scratch space is. Nothing else of Ray's environment."""
    base = {k: v for k, v in os.environ.items() if k in GUEST_ENV_KEEP or k.startswith(GUEST_ENV_KEEP_PREFIXES)}
    env = {**base, **{str(k): str(v) for k, v in job.get("env", {}).items()}}
    assigned = {k: os.environ[k] for k in GPU_ASSIGNMENT if k in os.environ}  # Ray's choice wins over the job's
    for folder in ("output", "checkpoint", "input"):
        (scratch / folder).mkdir(parents=True, exist_ok=True)
    return {
        "COOP_CHECKPOINT_DIR": str(scratch / "checkpoint"),  # unless the job names one (restored either way)
        **env,
        **assigned,
        "HOME": str(scratch),
        "TMPDIR": "/tmp",
        "COOP_SCRATCH_DIR": str(scratch),
        "COOP_OUTPUT_DIR": str(scratch / "output"),
        "COOP_INPUT_DIR": str(scratch / "input"),
    }


def gpu_devices(policy: Policy) -> list[str]:
    """The device nodes of the GPUs Ray gave this job (and the driver's shared ones), not the others':
    a job that sets CUDA_VISIBLE_DEVICES itself still cannot open a GPU it was not given."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    indices = {part.strip() for part in visible.split(",") if part.strip()}
    if not all(i.isdigit() for i in indices):
        return policy.devices  # UUIDs or MIG names: their device files cannot be told apart here
    chosen = []
    for device in policy.devices:
        name = Path(device).name
        suffix = name.removeprefix("nvidia")
        if name.startswith("nvidia") and suffix.isdigit():
            if suffix in indices:
                chosen.append(device)
        else:
            chosen.append(device)  # nvidiactl, nvidia-uvm, /dev/dri, /dev/kfd: shared by every GPU
    return chosen


def checkpoint_source(policy: Policy, owner: str, requested: str) -> Path:
    """Where a job's checkpoint directory really lives: under its member's own folder, so one
    member's job naming another's checkpoint path gets a folder of its own, not theirs."""
    relative = os.path.normpath(requested).lstrip("/")
    if relative.startswith("..") or not relative or relative == ".":
        raise ValueError(f"checkpoint_dir {requested!r} is not a usable absolute path")
    member = "".join(c for c in owner if c.isalnum() or c in "-_") or "unknown"
    return Path(policy.guest_root) / "checkpoints" / f"member-{member}" / relative


def apply_limits(policy: Policy, name: str, cpus: float | None, memory_bytes: int | None) -> list[Path]:
    """Put this process (and so the job) in cgroups of its own with the limits it asked for."""
    settings: dict[str, dict[str, str]] = {
        "memory": {"memory.limit_in_bytes": str(memory_bytes)} if memory_bytes else {},
        "cpu": {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(int(cpus * CPU_PERIOD_US))}
        if cpus
        else {},
        "pids": {"pids.max": str(PIDS_MAX)},
    }
    made = []
    for controller, base in policy.cgroups.items():
        values = settings.get(controller)
        if not values:
            continue
        group = Path(base) / name
        try:
            group.mkdir(exist_ok=True)
            made.append(group)
            for key, value in values.items():
                (group / key).write_text(value)
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            say(f"the {controller} limit could not be applied ({exc.strerror or exc}); running without it")
    return made


def inner_command(policy: Policy, command: str, env: dict[str, str], cwd: str, binds: dict[str, str]) -> list[str]:
    """bubblewrap over the outer sandbox's view: all of it read-only, none of Ray's or the other
    guests' files (they are under /tmp, the guest home, scratch and checkpoints), a fresh /tmp."""
    guest_root = Path(policy.guest_root)
    args = [
        bwrap() or "bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    for device in gpu_devices(policy):
        args += ["--dev-bind-try", device, device]
    for hidden in ("/tmp", str(guest_root)):  # the guest root holds the outer /tmp under its own name too
        args += ["--tmpfs", hidden]
    for source, target in binds.items():
        args += ["--bind", source, target]
    args += ["--chdir", cwd, "--clearenv"]
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    # bubblewrap and this wrapper ignore SIGTERM/SIGINT; the job gets them with their default meaning
    return [*args, "--", *DEFAULT_SIGNALS, "/bin/sh", "-c", command]


def working_dir() -> str:
    """The job's working directory, where Ray started this wrapper. Ray nodes that share a session
    directory (several on one machine) each unpack a working dir into the same path, replacing the
    folder another node's job had just entered: the folder of that name is then the one to use."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        replaced = os.environ.get("PWD", "")
        if not replaced or not os.path.isdir(replaced):
            raise
        os.chdir(replaced)
        return replaced


def run(job: dict[str, Any], policy: Policy | None) -> int:
    ref = "".join(c for c in str(job.get("ref", "job")) if c.isalnum() or c in "-_") or "job"
    command = str(job["command"])
    cwd = working_dir()
    requested = job.get("env", {}).get("COOP_CHECKPOINT_DIR")
    if policy is None or not policy.enabled:
        if policy is None:
            say("this node has no Coop sandbox policy: the job runs unsandboxed")
        scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"coop-scratch-{ref}"
        scratch.mkdir(parents=True, exist_ok=True)
        env = guest_environment(job, scratch)
        checkpoints = Path(env["COOP_CHECKPOINT_DIR"])
        argv = [*DEFAULT_SIGNALS, "/bin/sh", "-c", command]
        groups: list[Path] = []
    else:
        if requested and not Path(requested).is_relative_to("/tmp"):
            where = (
                "outside /tmp: in the sandbox everything else is read-only"
                if Path(requested).is_absolute()
                else "relative: in the sandbox the working directory is a private copy, gone after each attempt"
            )
            say(
                f"checkpoint_dir {requested} is {where}. Name a folder under /tmp in job.yaml (kept per "
                "member on this node), or leave checkpoint_dir out for the default"
            )
            return 2
        scratch = Path(policy.guest_root) / "scratch" / ref
        scratch.mkdir(parents=True, exist_ok=True)
        # Ray unpacks a working dir once per content and hands it to every job with the same files,
        # another member's included: each attempt works in a copy of its own, inside its scratch.
        shutil.rmtree(scratch / "work", ignore_errors=True)
        cwd = str(shutil.copytree(cwd, scratch / "work", symlinks=True))
        env = guest_environment(job, scratch)
        binds = {str(scratch): str(scratch)}
        checkpoints = Path(env["COOP_CHECKPOINT_DIR"])  # the attempt's own (in its scratch), unless named
        if requested:
            checkpoints = checkpoint_source(policy, str(job.get("owner", "")), requested)
            checkpoints.mkdir(parents=True, exist_ok=True)
            binds[str(checkpoints)] = requested
        groups = apply_limits(policy, ref, job.get("cpus"), job.get("memory_bytes"))
        argv = inner_command(policy, command, env, cwd, binds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # inherited by bubblewrap; the job's shell restores them
    files = JobFiles.connect(job, checkpoints, Path(env["COOP_OUTPUT_DIR"]), Path(env["COOP_INPUT_DIR"]))
    try:
        if not files.restore():
            return 2
        job_process = subprocess.Popen(argv, env=env, cwd=cwd)
        files.sync_while(job_process)
        code = job_process.returncode
        files.send_back()
    finally:
        files.close()
        shutil.rmtree(scratch, ignore_errors=True)
        for group in groups:
            with contextlib.suppress(OSError):  # a process of the job still in it, being killed
                group.rmdir()
    return 128 - code if code < 0 else code


def main() -> int:
    raw = os.environ.get(GUEST_ENV)
    if not raw:
        say(f"{GUEST_ENV} is not set: this module runs Coop jobs that the coordinator submitted")
        return 2
    return run(json.loads(raw), Policy.from_env())


if __name__ == "__main__":
    sys.exit(main())
