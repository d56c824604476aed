"""SSH to a login node with paramiko: host key checked, key authentication only, timeouts everywhere.

One :class:`Connection` per pool is kept open and reused (a command over an open connection costs
a round trip, a new connection several); a call that finds it broken reconnects. Host keys come
only from the pool's known_hosts file (``RejectPolicy``: an unknown or changed key is refused),
never from ``~/.ssh`` or an agent.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import select
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

log = logging.getLogger("coop.server.backends.slurm.ssh")


class SshError(Exception):
    """A failure meant for a person: what went wrong and, where known, how to fix it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class HostKeyError(SshError):
    """The login node's key is unknown or does not match known_hosts: nothing was sent to it."""


class AuthError(SshError):
    pass


class CommandError(SshError):
    def __init__(self, command: str, rc: int, err: str) -> None:
        program = command.split("&&")[-1].strip().split(" ", 1)[0]  # "cd DIR && sbatch …" -> sbatch
        super().__init__(f"{program} failed (exit {rc}): {err.strip()[:500] or 'no message'}")
        self.rc = rc
        self.err = err


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    key: str  # private key file on this machine
    known_hosts: str

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: 'host' on port 22, '[host]:port' otherwise."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: 'ssh-ed25519 SHA256:…'."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def load_key(path: str) -> paramiko.PKey:
    """The private key, refused when others may read it (as OpenSSH does) or when it needs a passphrase."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise AuthError(f"cannot read the SSH key {path}: {exc.strerror}", "put the pool's key there") from None
    if not stat.S_ISREG(mode):
        raise AuthError(f"the SSH key {path} is not a file", "give the path of the private key file")
    if mode & 0o077:
        raise AuthError(f"the SSH key {path} is readable by other users", f"chmod 600 {path}")
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise AuthError(
            f"the SSH key {path} is protected by a passphrase", "give Coop a key without one (mode 600)"
        ) from None
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise AuthError(f"the SSH key {path} cannot be loaded: {exc}", "give an OpenSSH private key") from None


def check_known_hosts(target: Target) -> None:
    """known_hosts must exist and hold a key for this host (whether it matches is checked on connect)."""
    try:
        keys = paramiko.HostKeys(target.known_hosts)
    except OSError as exc:
        raise HostKeyError(
            f"cannot read known_hosts {target.known_hosts}: {exc.strerror}",
            "create it with the login node's key, checked against the fingerprint the cluster publishes",
        ) from None
    if keys.lookup(target.known_hosts_name) is None:
        raise HostKeyError(
            f"{target.known_hosts} has no key for {target.known_hosts_name}",
            f"ssh-keyscan -p {target.port} {target.host} >> {target.known_hosts}, after checking the "
            "fingerprint with the cluster's admins",
        )


class Connection:
    """One reused SSH connection (and SFTP session) to a login node; thread-safe."""

    def __init__(
        self, target: Target, connect_timeout: float = 10.0, command_timeout: float = 30.0, backoff_s: float = 15.0
    ) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.backoff_s = backoff_s  # after a failed connect, calls fail at once for this long
        self.host_key: str | None = None
        self._failed: tuple[float, SshError] | None = None
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()

    # --- connecting -----------------------------------------------------------------------------

    def connect(self) -> str:
        """Open the connection if it is not open; returns the host key's fingerprint.

        A login node that did not answer is not asked again for ``backoff_s``: the scheduler, which
        calls here every cycle, must not wait out a timeout each time."""
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                self.close()
                if self._failed is not None and time.monotonic() - self._failed[0] < self.backoff_s:
                    raise self._failed[1]
                try:
                    self._client = self._open()
                except SshError as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
                self._failed = None
            assert self.host_key is not None
            return self.host_key

    def _open(self) -> paramiko.SSHClient:
        t = self.target
        check_known_hosts(t)
        pkey = load_key(t.key)
        client = paramiko.SSHClient()
        client.load_host_keys(t.known_hosts)  # the only keys trusted; no system or user known_hosts
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        timeout = self.connect_timeout
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.user,
                pkey=pkey,
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"the host key of {t.known_hosts_name} does not match {t.known_hosts}: it offered "
                f"{fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}; refusing to connect",
                "someone may be intercepting the connection, or the cluster changed its key: check the new "
                f"fingerprint with the cluster's admins before you update {t.known_hosts}",
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthError(
                f"{t.where} refused the key {t.key}: {exc}",
                "add the public key to ~/.ssh/authorized_keys of that user on the login node",
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"{t.known_hosts_name} is not in {t.known_hosts}; refusing to connect",
                    f"ssh-keyscan -p {t.port} {t.host} >> {t.known_hosts}, after checking the fingerprint",
                ) from None
            raise SshError(f"SSH to {t.where} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            reason = "timed out" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
            raise SshError(f"cannot reach {t.where}: {reason}", "check the host, port and network") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(30)
        self.host_key = fingerprint(transport.get_remote_server_key())
        log.info("connected to %s (%s)", t.where, self.host_key)
        return client

    def close(self) -> None:
        with self._lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    def _broken(self, exc: BaseException, what: str) -> SshError:
        self.close()  # the next call reconnects
        return SshError(f"lost the connection to {self.target.where} during {what}: {exc or type(exc).__name__}")

    # --- commands -------------------------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None, check: bool = True, retry: bool = False) -> Result:
        """Run one command; ``retry``: reconnect and run it again once if the connection broke
        (only for commands that are safe to repeat)."""
        for attempt in (1, 2):
            try:
                result = self._run_once(command, timeout or self.command_timeout)
                break
            except SshError as exc:
                if isinstance(exc, (HostKeyError, AuthError)) or not retry or attempt == 2:
                    raise
                log.info("retrying %s after: %s", command.split(" ", 1)[0], exc)
        if check and result.rc != 0:
            raise CommandError(command, result.rc, result.err)
        return result

    def _run_once(self, command: str, timeout: float) -> Result:
        with self._lock:
            self.connect()
            assert self._client is not None
            transport = self._client.get_transport()
            assert transport is not None
            try:
                chan = transport.open_session(timeout=timeout)
                chan.settimeout(timeout)
                chan.exec_command(command)
                out, err = self._collect(chan, time.monotonic() + timeout)
                rc = chan.recv_exit_status()
                chan.close()
            except SshError:
                raise
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._broken(exc, command.split(" ", 1)[0]) from None
        return Result(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    def _collect(self, chan: paramiko.Channel, deadline: float) -> tuple[bytes, bytes]:
        out, err = bytearray(), bytearray()
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            elif chan.exit_status_ready():
                return bytes(out), bytes(err)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:  # a hung login node: drop the connection, the next call reconnects
                    raise self._broken(TimeoutError("no answer within the timeout"), "a command")
                select.select([chan], [], [], min(remaining, 0.05))

    # --- files (SFTP) ---------------------------------------------------------------------------

    def _files(self) -> paramiko.SFTPClient:
        self.connect()
        if self._sftp is None:
            assert self._client is not None
            self._sftp = self._client.open_sftp()
            self._sftp.get_channel().settimeout(self.command_timeout)  # type: ignore[union-attr]
        return self._sftp

    def _sftp_call(self, what: str, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(self._files(), *args)
            except SshError:
                raise
            except (paramiko.SSHException, EOFError, TimeoutError, ConnectionError) as exc:
                raise self._broken(exc, what) from None
            except FileNotFoundError:
                raise
            except OSError as exc:  # the server refused this one operation (permissions, disk full)
                raise SshError(f"{what} on {self.target.where} failed: {exc}") from None

    def realpath(self, path: str) -> str:
        return str(self._sftp_call("realpath", lambda s: s.normalize(path)))

    def makedirs(self, path: str) -> None:
        def make(sftp: paramiko.SFTPClient) -> None:
            parts = [p for p in path.split("/") if p]
            current = "/" if path.startswith("/") else ""
            for part in parts:
                current = f"{current}{part}" if current.endswith("/") or not current else f"{current}/{part}"
                try:
                    sftp.stat(current)
                except FileNotFoundError:
                    sftp.mkdir(current, 0o700)

        self._sftp_call("mkdir", make)

    def size(self, path: str) -> int | None:
        def stat_size(sftp: paramiko.SFTPClient) -> int | None:
            try:
                return sftp.stat(path).st_size
            except FileNotFoundError:
                return None

        return self._sftp_call("stat", stat_size)  # type: ignore[no-any-return]

    def write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write a whole file: to a temporary name, then renamed over ``path`` (never half-written)."""

        def put(sftp: paramiko.SFTPClient) -> None:
            tmp = f"{path}.part"
            with sftp.open(tmp, "wb") as f:
                f.write(data)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)

        self._sftp_call("write", put)

    def upload(self, local: Path, path: str) -> None:
        def put(sftp: paramiko.SFTPClient) -> None:
            tmp = f"{path}.part"
            sftp.put(str(local), tmp)
            sftp.chmod(tmp, 0o600)
            sftp.posix_rename(tmp, path)

        self._sftp_call("upload", put)

    def download_tree(self, path: str, dest: Path) -> int:
        """Copy the regular files under ``path`` into ``dest`` (links are not followed, nothing is left
        to a shell); returns how many. A ``path`` that does not exist copies nothing."""

        def get(sftp: paramiko.SFTPClient) -> int:
            copied, folders = 0, [""]
            while folders:
                relative = folders.pop()
                try:
                    entries = sftp.listdir_attr(f"{path}/{relative}" if relative else path)
                except FileNotFoundError:
                    if relative:
                        raise
                    return 0
                for entry in entries:
                    child = f"{relative}/{entry.filename}" if relative else entry.filename
                    if stat.S_ISDIR(entry.st_mode or 0):
                        folders.append(child)
                    elif stat.S_ISREG(entry.st_mode or 0):
                        (dest / child).parent.mkdir(parents=True, exist_ok=True)
                        sftp.get(f"{path}/{child}", str(dest / child))
                        copied += 1
            return copied

        return self._sftp_call("download", get)  # type: ignore[no-any-return]

    def sync_tree(self, local: Path, path: str) -> int:
        """Make ``path`` hold exactly the regular files under ``local``: each uploaded (to a temporary
        name, then renamed), and the files there that ``local`` lacks removed. Returns how many went."""
        wanted = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and not p.is_symlink()}

        def put(sftp: paramiko.SFTPClient) -> int:
            for relative in sorted(wanted):
                target = f"{path}/{relative}"
                parent = target.rsplit("/", 1)[0]
                for depth in range(len(path.split("/")), len(parent.split("/")) + 1):
                    folder = "/".join(parent.split("/")[:depth])
                    try:
                        sftp.stat(folder)
                    except FileNotFoundError:
                        sftp.mkdir(folder, 0o700)
                sftp.put(str(local / relative), f"{target}.part")
                sftp.posix_rename(f"{target}.part", target)
            folders = [""]
            while folders:
                relative = folders.pop()
                for entry in sftp.listdir_attr(f"{path}/{relative}" if relative else path):
                    child = f"{relative}/{entry.filename}" if relative else entry.filename
                    if stat.S_ISDIR(entry.st_mode or 0):
                        folders.append(child)
                    elif child not in wanted:
                        sftp.remove(f"{path}/{child}")
            return len(wanted)

        return self._sftp_call("upload", put)  # type: ignore[no-any-return]

    def read(self, path: str, offset: int = 0, limit: int = 1024 * 1024) -> bytes:
        """Up to ``limit`` bytes from ``offset``; empty when the file does not exist (yet)."""

        def get(sftp: paramiko.SFTPClient) -> bytes:
            try:
                with sftp.open(path, "rb") as f:
                    f.seek(offset)
                    return bytes(f.read(limit))
            except OSError as exc:
                if exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError):
                    return b""
                raise

        return self._sftp_call("read", get)  # type: ignore[no-any-return]
