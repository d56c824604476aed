"""Runs attempts through the Ray Jobs API, pinned to the node the coordinator chose.

Each attempt is one Ray job with ``submission_id = coop-<job>-<attempt>``: a second submission of
the same id is refused by Ray, so a coordinator restart can never run an attempt twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from coop.server.backends import Launch, RunStatus
from coop.server.config import Settings
from coop.server.services import workdirs

log = logging.getLogger("coop.backends.ray")

# Ray reports these when the node running the job's supervisor disappeared, not when the job failed.
_LOST_ERRORS = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"}


class RayBackend:
    name = "ray"

    def __init__(
        self,
        dashboard_url: str,
        auth_token: str | None = None,
        cache_dir: Path | None = None,
        workdir_limits: workdirs.Limits | None = None,
    ) -> None:
        """``workdir_limits``: the caps a launch unpacks under (default: the settings' upload caps)."""
        self.dashboard_url = dashboard_url
        self.auth_token = auth_token
        self.cache_dir = cache_dir
        self.workdir_limits = workdir_limits or workdirs.Limits.of(Settings())
        self._client: Any = None
        if cache_dir is not None:
            _remove_stale(cache_dir)
        self._log_errors: set[str] = set()  # attempts whose log read failed once: warned about already
        if auth_token:
            # Ray reads its auth mode and token from the environment once, when it is first imported:
            # set them before anything here imports it (COOP_RAY_AUTH_TOKEN alone must be enough).
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = auth_token

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.dashboard_url)
        return self._client

    def unpack(self, archive: Path) -> Path:
        """Ray wants a directory (or a zip) as working_dir: unpack the tar.gz into a fresh temporary
        directory, under the same caps as an upload's check (see ``workdirs.extract``). The caller
        removes it once Ray has taken it: ``submit_job`` zips and uploads a local working_dir to the
        cluster before it returns, so nothing unpacked needs to stay on the coordinator's disk."""
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        prefix = archive.name.removesuffix(".tar.gz")[:12] + "-"
        outer = Path(tempfile.mkdtemp(prefix=prefix, dir=self.cache_dir))  # no cache_dir: the system's temp dir
        try:  # a workdir of its own inside: the archive may set its root's mtime, never the outer one's
            workdirs.extract(archive, outer / "workdir", self.workdir_limits)
        except BaseException:
            shutil.rmtree(outer, ignore_errors=True)
            raise
        return outer / "workdir"

    def submit(self, launch: Launch) -> None:
        from ray.job_submission import JobStatus  # noqa: F401  (import errors surface here, not later)

        env = {**launch.env, "RAY_JOB_STOP_WAIT_TIME_S": str(int(launch.grace_s))}
        runtime_env: dict[str, Any] = {"env_vars": env}
        workdir = self.unpack(launch.workdir) if launch.workdir is not None else None
        if workdir is not None:
            runtime_env["working_dir"] = str(workdir)
        try:
            self.client.submit_job(
                entrypoint=launch.command,
                submission_id=launch.ref,
                runtime_env=runtime_env,
                entrypoint_num_gpus=launch.gpus,
                entrypoint_num_cpus=launch.cpus,
                entrypoint_resources={launch.node_resource: 0.001},
                metadata=launch.metadata,
            )
        except RuntimeError as exc:
            if "already exists" in str(exc):  # submitted before a restart: attach, don't resubmit
                log.info("attempt %s was already submitted; re-attaching", launch.ref)
                return
            raise
        finally:
            if workdir is not None:  # Ray zipped and uploaded it during submit_job (or never will)
                shutil.rmtree(workdir.parent, ignore_errors=True)

    def status(self, ref: str) -> RunStatus:
        try:
            info = self.client.get_job_info(ref)
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return RunStatus("MISSING", message=str(exc))
            raise
        state = str(info.status.value if hasattr(info.status, "value") else info.status)
        exit_code = getattr(info, "driver_exit_code", None)
        message = info.message or ""
        if state == "FAILED" and (getattr(info, "error_type", None) or "") in _LOST_ERRORS:
            return RunStatus("LOST", exit_code, message)
        if state in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"):
            return RunStatus(state, exit_code, message)  # type: ignore[arg-type]
        return RunStatus("PENDING", exit_code, message)

    def stop(self, ref: str) -> None:
        try:
            self.client.stop_job(ref)
        except RuntimeError as exc:
            log.warning("stopping %s: %s", ref, exc)

    def logs(self, ref: str) -> str:
        """The attempt's whole log so far, or "" when Ray cannot give it now (the node that ran it
        is gone, say): a failed read must never hold up the attempt's state change."""
        try:
            text = str(self.client.get_job_logs(ref))
        except Exception as exc:
            if ref not in self._log_errors:
                self._log_errors.add(ref)
                log.warning("could not read the logs of %s from Ray: %s", ref, str(exc).strip()[:300])
            return ""
        self._log_errors.discard(ref)
        return text


STALE_UNPACKED_S = 3600  # an unpacked dir this old was left by a killed coordinator (or an older Coop)


def _remove_stale(cache_dir: Path) -> None:
    """Once, when the backend starts: every launch removes its own unpacked dir, so only a crash leaves
    one. The age keeps another worker's launch in progress (same data dir) out of reach."""
    if not cache_dir.is_dir():
        return
    for old in cache_dir.iterdir():
        try:
            if old.lstat().st_mtime < time.time() - STALE_UNPACKED_S:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        except OSError:
            pass  # removed meanwhile, or not ours to remove: no reason to hold the start back
