"""``coop-agent install-service``: a systemd unit, a dedicated user, a private environment file, and a
Python environment of its own that the service's user can run.

The clone's ``.venv`` is no place to run a service from: its interpreter often lives where only the
donor can read (``~/.pyenv``, a home directory of mode 0700), and systemd then fails with "bad
interpreter: Permission denied". So the service gets a venv under ``/opt/coop-agent``, made from an
interpreter the service user can run, with the packages of the environment Coop was installed in
copied over (offline: no index needed; PyTorch and whatever else guest jobs use come along) and
Coop itself installed from the checkout, not linked to it. Root owns it; everyone may read and run
it, nobody else may change it. It is checked as the service user before the unit is enabled.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE_NAME = "coop-agent.service"
CHECKOUT = Path(__file__).resolve().parent.parent
TEMPLATE = CHECKOUT / "deploy" / "systemd" / TEMPLATE_NAME
PREFIX = Path("/opt/coop-agent")
STATE_DIR = Path("/var/lib/coop-agent")
CA_FILE = Path("/etc/coop-agent/ca.pem")  # the cooperative's CA as the service reads it (--ca-file)
GPU_GROUPS = ("video", "render")  # device files of GPUs, on most distributions
SOURCE = ("pyproject.toml", "README.md", "coop", "agent")  # what building Coop from the checkout needs


class InstallError(RuntimeError):
    """A step of the installation failed; the message says which and what to do."""


def template_text() -> str:
    """The unit template from the checkout Coop was installed from (``pip install -e``)."""
    if not TEMPLATE.is_file():
        raise InstallError(
            f"unit template {TEMPLATE} not found: install Coop from a checkout "
            "(git clone … && pip install -e .), or copy deploy/systemd/coop-agent.service by hand"
        )
    return TEMPLATE.read_text()


@dataclass
class ServicePlan:
    unit_path: Path
    env_path: Path
    unit: str
    env: str
    user: str
    prefix: Path
    state_dir: Path
    commands: list[list[str]] = field(default_factory=list)
    ca_source: Path | None = None  # copied to ca_path: the service user may not read the donor's copy
    ca_path: Path | None = None

    @property
    def exec_start(self) -> Path:
        return self.prefix / "bin" / "coop-agent"


def plan(
    coordinator: str,
    token: str,
    *,
    user: str = "coop-agent",
    root: Path = Path("/"),
    prefix: Path = PREFIX,
    state_dir: Path = STATE_DIR,
    ca_file: Path | None = None,
) -> ServicePlan:
    """``root``: where /etc is (packaging, tests); ``prefix`` and ``state_dir`` are absolute paths on
    the machine the unit runs on."""
    unit_path = root / "etc/systemd/system/coop-agent.service"
    env_path = root / "etc/coop-agent/agent.env"
    unit = template_text().format(
        user=user,
        group=user,
        env_file="/etc/coop-agent/agent.env",
        state_dir=state_dir,
        exec_start=prefix / "bin" / "coop-agent",
    )
    env = f"COOP_AGENT_COORDINATOR={coordinator}\nCOOP_AGENT_TOKEN={token}\n"
    ca_path = None
    if ca_file is not None:  # the cooperative's own CA (docs/deploy.md), at a path the unit can read
        env += f"COOP_AGENT_CA_FILE={CA_FILE}\n"
        ca_path = root / CA_FILE.relative_to("/")
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "coop-agent.service"]]
    return ServicePlan(unit_path, env_path, unit, env, user, prefix, state_dir, commands, ca_file, ca_path)


def as_user(user: str, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``user`` (runuser, from /: the caller's working directory may be closed to it)."""
    if shutil.which("runuser") is None:
        raise InstallError("runuser (util-linux) not found: cannot check the environment as the service user")
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        ["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, cwd="/", **kwargs
    )


def ensure_user(user: str, state_dir: Path) -> None:
    """The service's system user (created if missing; in the GPU device groups that exist), and its
    state dir, mode 0700 (systemd's StateDirectory= makes it too, but only when the unit starts)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--home-dir", str(state_dir), "--shell", "/usr/sbin/nologin", user], check=True
        )
        entry = pwd.getpwnam(user)
    groups = [g for g in GPU_GROUPS if _group_exists(g)]
    if groups:
        subprocess.run(["usermod", "--append", "--groups", ",".join(groups), user], check=True)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chown(state_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(state_dir, 0o700)


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def runnable_python(user: str) -> str:
    """An interpreter of this Python's version (the copied packages are built for it) that ``user``
    can run: this one's base if it can, else the system's."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = getattr(sys, "_base_executable", sys.executable)
    candidates = [os.path.realpath(base), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    candidates += [found for found in [shutil.which(f"python{version}")] if found]
    tried = []
    for candidate in dict.fromkeys(candidates):
        if not os.path.exists(candidate):
            continue
        check = as_user(user, [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        if check.returncode == 0 and check.stdout.strip() == version:
            return candidate
        tried.append(f"{candidate}: {(check.stderr or check.stdout).strip()[-200:]}")
    raise InstallError(
        f"no Python {version} that user {user} can run ({'; '.join(tried) or 'none found'}): install one for "
        f"all users (Debian/Ubuntu: apt-get install python{version}-venv), or make this one readable"
    )


def _scripts(source_bin: Path, target_bin: Path, old_prefix: str) -> None:
    """Console scripts of the copied packages (``ray`` among them), pointed at the new interpreter."""
    skip = {"coop", "coop-agent"}  # installed from the checkout below
    for script in sorted(source_bin.iterdir()):
        if script.name in skip or script.name.startswith(("python", "activate", "Activate")) or not script.is_file():
            continue
        try:
            head, rest = script.read_bytes().split(b"\n", 1)
        except ValueError:
            continue
        if not head.startswith(b"#!" + old_prefix.encode() + b"/bin/python"):
            continue
        target = target_bin / script.name
        target.write_bytes(b"#!" + str(target_bin / "python").encode() + b"\n" + rest)
        target.chmod(0o755)


def _ignore_own_install(_dir: str, names: list[str]) -> set[str]:
    """Coop's own editable install (it links to the checkout); Coop is installed from it instead."""
    return {n for n in names if n.startswith(("__editable__.coop-", "__editable___coop_", "coop-"))}


def build_env(prefix: Path, python: str, checkout: Path | None = CHECKOUT) -> None:
    """A venv at ``prefix`` made by ``python``, with this environment's packages and Coop from
    ``checkout`` (None: Coop is among the copied packages already, a non-editable install). Built
    beside ``prefix`` and moved into place, so a failed build leaves an existing one alone."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    new = prefix.with_name(prefix.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([python, "-m", "venv", "--without-pip", str(new)], check=True, capture_output=True, text=True)
        site = new / "lib" / f"python{version}" / "site-packages"
        source = Path(sysconfig.get_paths()["purelib"])
        shutil.copytree(source, site, symlinks=True, dirs_exist_ok=True, ignore=_ignore_own_install)
        platlib = Path(sysconfig.get_paths()["platlib"])
        if platlib != source:
            shutil.copytree(platlib, site, symlinks=True, dirs_exist_ok=True, ignore=_ignore_own_install)
        _scripts(Path(sys.prefix) / "bin", new / "bin", sys.prefix)
        if checkout is not None:
            with tempfile.TemporaryDirectory() as tmp:  # a copy: the build writes build/ and egg-info
                src = Path(tmp) / "coop"
                src.mkdir()
                for name in SOURCE:
                    item = checkout / name
                    if item.is_dir():
                        shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__"))
                    elif item.is_file():
                        shutil.copy2(item, src / name)
                subprocess.run(
                    [str(new / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                     "--no-build-isolation", "--disable-pip-version-check", str(src)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
        subprocess.run(["chmod", "-R", "u+rwX,go+rX,go-w", str(new)], check=True)
        subprocess.run(["chown", "-R", "0:0", str(new)], check=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise InstallError(f"building {prefix} failed: {' '.join(exc.cmd)}: {(exc.stderr or '')[-2000:]}") from None
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old = prefix.with_name(prefix.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if prefix.exists():
        prefix.rename(old)
    new.rename(prefix)
    _relocate(prefix / "bin", str(new), str(prefix))
    shutil.rmtree(old, ignore_errors=True)


def _relocate(bin_dir: Path, built: str, final: str) -> None:
    """Scripts name their interpreter by the path the venv was built at (shebangs, ``activate``)."""
    for script in bin_dir.iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if b"\0" not in data[:1024] and built.encode() in data:
            mode = script.stat().st_mode
            script.write_bytes(data.replace(built.encode(), final.encode()))
            script.chmod(mode)


def check_env(prefix: Path, user: str) -> None:
    """The unit's ExecStart, run as the service user: its interpreter starts, imports the agent and
    Ray, and the command answers."""
    probe = as_user(user, [str(prefix / "bin" / "python"), "-c", "import agent.main, coop.client, ray"])
    if probe.returncode != 0:
        said = probe.stderr.strip()[-1500:]
        raise InstallError(f"{prefix}/bin/python cannot import the agent as user {user}: {said}")
    cli = as_user(user, [str(prefix / "bin" / "coop-agent"), "--help"])
    if cli.returncode != 0:
        raise InstallError(f"{prefix}/bin/coop-agent does not run as user {user}: {(cli.stderr or cli.stdout)[-1500:]}")


def verify_unit(unit_path: Path) -> str | None:
    """``systemd-analyze verify`` on the unit file: None when systemd-analyze is not installed, else
    what it said (raises InstallError when it refuses the unit)."""
    if shutil.which("systemd-analyze") is None:
        return None
    done = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise InstallError(f"systemd-analyze verify refused {unit_path}: {said}")
    return said


def write_files(p: ServicePlan) -> None:
    """The unit, and the env file (0640: root and the service's group only; it holds the token)."""
    p.unit_path.parent.mkdir(parents=True, exist_ok=True)
    p.unit_path.write_text(p.unit)
    p.env_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(p.env_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(p.env)
    os.chmod(p.env_path, 0o640)
    if p.ca_source is not None and p.ca_path is not None:  # a certificate is public: 0644
        shutil.copyfile(p.ca_source, p.ca_path)
        os.chmod(p.ca_path, 0o644)
    try:
        gid = pwd.getpwnam(p.user).pw_gid
    except KeyError:
        return  # packaging (--no-env): the package creates the user and sets the group
    os.chown(p.env_path, 0, gid)


def install(p: ServicePlan, *, build: bool = True, enable: bool = True, checkout: Path | None = CHECKOUT) -> list[str]:
    """User, environment (checked as the user), files, ``systemd-analyze verify``, then enable. Returns
    what was done, for the donor."""
    done = []
    if build:
        ensure_user(p.user, p.state_dir)
        done.append(f"user {p.user} (state dir {p.state_dir}, 0700)")
        python = runnable_python(p.user)
        from_checkout = checkout is not None and (checkout / "pyproject.toml").is_file()
        build_env(p.prefix, python, checkout if from_checkout else None)
        check_env(p.prefix, p.user)
        done.append(f"environment {p.prefix} (from {python}), checked as {p.user}")
    write_files(p)
    done.append(f"{p.unit_path} and {p.env_path} (0640)" + (f", CA {p.ca_path}" if p.ca_path else ""))
    if build or p.exec_start.exists():
        said = verify_unit(p.unit_path)
        done.append("systemd-analyze verify: no systemd-analyze here" if said is None else "systemd-analyze verify: ok")
    else:  # it would refuse an ExecStart that is not there yet
        done.append(f"not verified: {p.exec_start} does not exist yet ('systemd-analyze verify' the unit once it does)")
    if not enable:
        return done
    if shutil.which("systemctl") is None:
        raise InstallError(
            "systemctl not found: this machine does not run systemd; start 'coop-agent join' "
            "another way (see docs/agent.md)"
        )
    for cmd in p.commands:
        subprocess.run(cmd, check=True)
    done.append("enabled and started coop-agent.service")
    return done
