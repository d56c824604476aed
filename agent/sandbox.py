"""The guest sandbox: bubblewrap around the Ray node (outer) and around each job's command (inner).

A donated machine runs strangers' code. Everything that arrives through Ray (a job's entrypoint,
and any task or actor Ray places here) runs in the *outer* sandbox: a filesystem of the system's
read-only directories, the Python that runs Coop and Ray, and a private ``/tmp``; the agent's
state, ``/etc/coop-agent``, every home directory and whatever else the machine holds are simply not
there. Its processes live in their own PID namespace (they see no other process's command line or
environment), and when the agent runs as root they run as an unprivileged user (``coop-guest``).

Ray's own processes need the Ray token; a job never does. Each Coop job's command therefore runs
in an *inner* sandbox (``agent.guest``): a fresh PID namespace again, no Ray directories, a clean
environment without any token, a private ``/tmp``, its own scratch directory, its checkpoint
directory, its working directory and the GPUs Ray gave it, plus the CPU and memory limits it asked
for where the kernel's cgroups allow it.

The mechanism is bubblewrap (Debian ``bubblewrap``), not namespace code of our own.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

POLICY_ENV = "COOP_SANDBOX_POLICY"  # the node's policy, as JSON, in the environment of Ray's processes
GUEST_USER = "coop-guest"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "cpu", "pids")
# System directories a guest may read: never a home, /var, /srv, /mnt or /media.
SYSTEM_DIRS = ("/usr", "/etc", "/opt/rocm", "/run/systemd/resolve")
TOP_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HIDDEN_ALWAYS = ("/etc/coop-agent",)
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")
# What a guest's environment may keep from Ray's worker environment: everything else (tokens above
# all) is dropped; the job's own env from its job.yaml is added on top.
GUEST_ENV_KEEP = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TERM",
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
)
GUEST_ENV_KEEP_PREFIXES = ("LC_",)


class SandboxError(RuntimeError):
    """The sandbox cannot be set up here; the message says why and what to do."""


@dataclass
class Policy:
    """A node's sandbox, decided by the agent and handed to Ray's processes (and so to ``agent.guest``)."""

    enabled: bool
    guest_root: str  # host directory holding the guests' tmp/, home/, scratch/ and checkpoints/
    uid: int | None = None  # run Ray and the guests as this user (the agent runs as root)
    gid: int | None = None
    hide: list[str] = field(default_factory=list)  # extra paths no guest may see
    cgroups: dict[str, str] = field(default_factory=dict)  # controller -> delegated cgroup directory
    devices: list[str] = field(default_factory=list)  # GPU device nodes to pass through

    @property
    def tmp(self) -> Path:
        return Path(self.guest_root) / "tmp"

    @property
    def home(self) -> Path:
        return Path(self.guest_root) / "home"

    def to_env(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> Policy | None:
        raw = environ.get(POLICY_ENV)
        return cls(**json.loads(raw)) if raw else None


def bwrap() -> str | None:
    return shutil.which("bwrap")


def guest_user(name: str = GUEST_USER, create: bool = True) -> tuple[int, int]:
    """The unprivileged user guests run as when the agent is root (created on first use)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def python_paths() -> list[str]:
    """What running Coop's agent module and Ray needs: the interpreter's prefixes and the package
    directories (an editable install keeps them in a checkout, whose other files stay hidden)."""
    import agent
    import coop

    paths = {
        sys.prefix,
        sys.exec_prefix,
        sys.base_prefix,
        sys.base_exec_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
    }
    paths |= {str(Path(m.__file__).resolve().parent) for m in (coop, agent) if m.__file__}
    return sorted(p for p in paths if not any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS))


def gpu_devices() -> list[str]:
    return sorted({p for pattern in GPU_DEVICE_GLOBS for p in glob.glob(pattern)})


def delegate_cgroups(name: str, uid: int, gid: int) -> dict[str, str]:
    """cgroup v1 directories the guests' user may create children in and set limits on: one per
    controller the kernel mounts and lets us write. Returns only those that worked."""
    made: dict[str, str] = {}
    for controller in CGROUP_CONTROLLERS:
        base = CGROUP_ROOT / controller
        if not (base / "cgroup.procs").exists() or (CGROUP_ROOT / "cgroup.controllers").exists():
            continue  # not a v1 hierarchy for this controller (v2 delegation is systemd's job)
        target = base / name
        try:
            target.mkdir(exist_ok=True)
            for stale in target.iterdir():  # a job's group left by a killed agent, once it is empty
                if stale.is_dir():
                    with contextlib.suppress(OSError):
                        stale.rmdir()
            for item in [target, *(target / f for f in ("cgroup.procs", "tasks"))]:
                os.chown(item, uid, gid)
        except OSError:
            continue
        made[controller] = str(target)
    return made


def make_policy(
    enabled: bool,
    guest_root: Path,
    *,
    hide: list[str] | None = None,
    cgroup_name: str = "coop-guests",
) -> Policy:
    """The node's policy; creates the guest root (owned by the guest user) and delegated cgroups."""
    uid = gid = None
    if enabled:
        if bwrap() is None:
            raise SandboxError(
                "bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get install bubblewrap), "
                "or run with --no-sandbox if this machine runs only your own jobs"
            )
        if os.geteuid() == 0:
            uid, gid = guest_user()
    for sub in ("tmp", "home", "scratch", "checkpoints"):
        path = guest_root / sub
        path.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(path, uid, gid if gid is not None else -1)
    os.chmod(guest_root, 0o755)  # only traversal: the children are the guests' own
    cgroups = delegate_cgroups(cgroup_name, uid, gid) if enabled and uid is not None and gid is not None else {}
    return Policy(enabled, str(guest_root), uid, gid, sorted(set(hide or [])), cgroups, gpu_devices())


def outer_command(policy: Policy, command: list[str], writable: Sequence[Path] = ()) -> list[str]:
    """``command`` (``ray start …``) inside the outer sandbox. ``writable``: more host directories
    it needs to write (a head's temp dir that ``coop up`` reads its address from).

    As root, two bubblewraps: the first (root) builds the filesystem, which may take Python from
    places the guest user cannot reach (``/root/.pyenv``), then drops to the guest user; the second
    (that user, in its own user namespace) adds the PID namespace and its /proc. A /proc mounted by
    root would carry read-only covers that forbid each job's own /proc one level further down."""
    if not policy.enabled:
        return command
    as_root = policy.uid is not None
    namespaces = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    devices = ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
    for device in policy.devices:
        devices += ["--dev-bind-try", device, device]
    # As root, a PID namespace of the first bubblewrap's too: dropping to the guest user clears the
    # kernel's parent-death signal, so only its namespace's end takes the rest down with the agent.
    args = [bwrap() or "bwrap", "--die-with-parent", *(["--unshare-pid"] if as_root else namespaces)]
    made: set[str] = {"/", "/tmp"}

    def parents(path: str) -> list[str]:
        """Mount points' missing parents, made traversable: bubblewrap would make them 0700, root's."""
        missing = [str(p) for p in reversed(Path(path).parents) if str(p) not in made]
        made.update(missing)
        return [arg for parent in missing for arg in ("--perms", "0755", "--dir", parent)]

    for top in TOP_LINKS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in (*SYSTEM_DIRS, *python_paths()):
        if os.path.exists(path):
            args += [*parents(path), "--ro-bind", path, path]
    args += ["--ro-bind-try", "/sys", "/sys"]
    # as root, the host's /proc and /dev stand in until the second bubblewrap replaces them
    args += ["--bind", "/proc", "/proc", "--dev-bind", "/dev", "/dev"] if as_root else ["--proc", "/proc", *devices]
    for path in policy.cgroups.values():
        args += ["--bind", path, path]
    # /tmp first: the guest root (and a head's temp dir) may lie under the host's /tmp; then what is
    # hidden (the agent's state dir, say), then the guest root, which may lie inside it
    args += ["--bind", str(policy.tmp), "/tmp"]
    for hidden in (*HIDDEN_ALWAYS, *policy.hide):
        if os.path.exists(hidden):
            args += [*parents(hidden), "--tmpfs", hidden]
    for path in (policy.guest_root, *map(str, writable)):
        args += [*parents(path), "--bind", path, path]
    args += ["--chdir", str(policy.home)]
    if as_root:
        drop = [
            "setpriv",
            f"--reuid={policy.uid}",
            f"--regid={policy.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
        second = [
            bwrap() or "bwrap",
            "--die-with-parent",
            *namespaces,
            "--bind",
            "/",
            "/",
            "--proc",
            "/proc",
            *devices,
            "--chdir",
            str(policy.home),
        ]
        args += ["--", *drop, "--", *second]
    return [*args, "--", *command]


def ray_environment(policy: Policy, extra: dict[str, str]) -> dict[str, str]:
    """The environment Ray's processes start with: only what they need, never the agent's own
    (its token, the donor's shell variables); the policy rides along for ``agent.guest``."""
    keep = {k: v for k, v in os.environ.items() if k in GUEST_ENV_KEEP or k.startswith(GUEST_ENV_KEEP_PREFIXES)}
    keep |= {k: v for k, v in os.environ.items() if k.startswith("RAY_") and "TOKEN" not in k}
    env = {
        **keep,
        "HOME": str(policy.home),
        "TMPDIR": "/tmp",
        "USER": GUEST_USER if policy.uid else os.environ.get("USER", ""),
    }
    return {**env, **extra, POLICY_ENV: policy.to_env()}


def preview(enabled: bool, guest_root: Path, hide: list[str] | None = None) -> Policy | None:
    """The policy ``make_policy`` would build, without creating anything (for ``coop-agent inspect``);
    None when the sandbox is on but bubblewrap is missing."""
    if enabled and bwrap() is None:
        return None
    uid = gid = None
    cgroups: dict[str, str] = {}
    if enabled and os.geteuid() == 0:
        try:
            uid, gid = guest_user(create=False)
        except KeyError:
            uid, gid = -1, -1  # created at the first join
        v1 = not (CGROUP_ROOT / "cgroup.controllers").exists()
        cgroups = {
            c: str(CGROUP_ROOT / c / "coop-guests")
            for c in CGROUP_CONTROLLERS
            if v1 and os.access(CGROUP_ROOT / c, os.W_OK)
        }
    return Policy(enabled, str(guest_root), uid, gid, sorted(set(hide or [])), cgroups, gpu_devices())


@dataclass
class Enforcement:
    what: str
    enforced: bool
    how: str


def enforcement(policy: Policy | None) -> list[Enforcement]:
    """What this node's sandbox enforces, for ``coop-agent inspect``: said plainly, including what it
    does not."""
    if sys.platform == "darwin":
        return [
            Enforcement(
                "guest isolation",
                False,
                "macOS: no sandbox; guest jobs run as the agent's user with "
                "its files, processes and environment in reach. Donate only to jobs you trust.",
            )
        ]
    if policy is None:
        return [
            Enforcement(
                "guest isolation",
                False,
                "bubblewrap (bwrap) is not installed: the agent refuses to "
                "join until it is (apt-get install bubblewrap), or runs with --no-sandbox",
            )
        ]
    if not policy.enabled:
        return [
            Enforcement(
                "guest isolation",
                False,
                "--no-sandbox: guest jobs can read what the agent's user can "
                "read, including the agent's token; for a machine that runs only your own jobs",
            )
        ]
    who = (
        f"user {GUEST_USER} (uid {policy.uid})" if policy.uid is not None else f"the agent's user (uid {os.geteuid()})"
    )
    found = [
        Enforcement(
            "filesystem",
            True,
            "bubblewrap: system dirs read-only, private /tmp; no homes, agent state, "
            "/etc/coop-agent" + (", " + ", ".join(policy.hide) if policy.hide else ""),
        ),
        Enforcement("processes", True, "own PID and IPC namespaces: no other process's command line or environment"),
        Enforcement("user", True, who + ", no capabilities"),
        Enforcement("tokens", True, "a job's environment is rebuilt without any Coop or Ray token"),
    ]
    limits = {
        "memory": "memory limit (resources.memory)",
        "cpu": "CPU quota (resources.cpus)",
        "pids": "process count limit",
    }
    for controller, what in limits.items():
        if controller in policy.cgroups:
            found.append(Enforcement(what, True, f"cgroup v1 {policy.cgroups[controller]}"))
        else:
            why = (
                "the agent does not run as root, so it cannot delegate cgroups"
                if policy.uid is None
                else "no writable cgroup v1 hierarchy for it (cgroup v2 needs systemd delegation)"
            )
            found.append(Enforcement(what, False, why))
    found.append(
        Enforcement(
            "network",
            False,
            "shared with the machine: guests reach what it reaches (they hold no token for Coop or Ray)",
        )
    )
    return found
