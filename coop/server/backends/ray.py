"""Runs attempts through the Ray Jobs API, pinned to the node the coordinator chose.

Each attempt is one Ray job with ``submission_id = coop-<job>-<attempt>``: a second submission of
the same id is refused by Ray, so a coordinator restart can never run an attempt twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from coop.server.backends import Launch, LogRead, RunStatus, gang_env, gang_size, master_port, rank_ref
from coop.server.config import Settings
from coop.server.services import workdirs

log = logging.getLogger("coop.backends.ray")

# Ray reports these when the node running the job's supervisor disappeared, not when the job failed.
# Every Coop job runs through the node's sandbox wrapper (agent/guest.py) in the agent's own interpreter
# (COOP_PYTHON, set by the agent for Ray's processes); -I keeps the job's working directory off sys.path.
GUEST_ENTRYPOINT = 'exec "${COOP_PYTHON:-python}" -I -m agent.guest'
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
        """One Ray job (a gang: one per rank, each pinned to its node), started now."""
        from ray.job_submission import JobStatus  # noqa: F401  (import errors surface here, not later)

        ranks = launch.node_resources or (launch.node_resource,)
        master = self.node_address(ranks[0]) if launch.nodes > 1 else ""
        workdir = self.unpack(launch.workdir) if launch.workdir is not None else None
        try:
            for rank, resource in enumerate(ranks):
                env = launch.env
                if launch.nodes > 1:
                    env = {**env, **gang_env(launch.nodes, rank, master, master_port(launch.ref), launch.gpus)}
                self._submit_one(launch, rank_ref(launch.ref, rank), resource, env, workdir)
        except Exception:
            if launch.nodes > 1:  # a gang starts whole or not at all: no rank is left running alone
                self.stop(launch.ref)
            raise
        finally:
            if workdir is not None:  # Ray zipped and uploaded it during submit_job (or never will)
                shutil.rmtree(workdir.parent, ignore_errors=True)

    def _submit_one(self, launch: Launch, ref: str, resource: str, env: dict[str, str], workdir: Path | None) -> None:
        runtime_env: dict[str, Any] = {"env_vars": guest_env(launch, ref, env)}
        if workdir is not None:
            runtime_env["working_dir"] = str(workdir)
        try:
            self.client.submit_job(
                entrypoint=GUEST_ENTRYPOINT,
                submission_id=ref,
                runtime_env=runtime_env,
                entrypoint_num_gpus=launch.gpus,
                entrypoint_num_cpus=launch.cpus,
                entrypoint_resources={resource: 0.001},
                metadata=launch.metadata,
            )
        except RuntimeError as exc:
            if "already exists" in str(exc):  # submitted before a restart: attach, don't resubmit
                log.info("attempt %s was already submitted; re-attaching", ref)
                return
            raise

    def node_address(self, resource: str) -> str:
        """The cluster-network address of the Ray node that holds ``resource`` (a Coop node's own):
        a gang's rank 0, where the other ranks meet (``MASTER_ADDR``)."""
        from ray.util.state import list_nodes

        alive: list[Any] = [("state", "=", "ALIVE")]
        for n in list_nodes(address=self.dashboard_url, filters=alive, detail=True, raise_on_missing_output=False):
            if resource in (n.resources_total or {}):
                return str(n.node_ip)
        raise RuntimeError(f"no live Ray node has {resource}: its agent has not joined the Ray cluster")

    def status(self, ref: str) -> RunStatus:
        size = gang_size(ref)
        if size == 1:
            return self._status_one(ref)
        statuses = [self._status_one(rank_ref(ref, k)) for k in range(size)]
        return self._gang_status(ref, statuses)

    def _gang_status(self, ref: str, statuses: list[RunStatus]) -> RunStatus:
        """One state for the gang: a rank that ended otherwise than well ends it (its other ranks are
        stopped here, so none waits forever on a peer that is gone)."""
        states = [s.state for s in statuses]
        if "MISSING" in states and not {"SUCCEEDED", "FAILED", "STOPPED", "LOST"} & set(states):
            # not all submitted (the coordinator stopped in between): reconcile submits the rest
            return RunStatus("MISSING", message=statuses[states.index("MISSING")].message)
        for bad in ("LOST", "MISSING", "FAILED", "STOPPED"):
            if bad in states:
                rank = states.index(bad)
                if any(state in ("PENDING", "RUNNING") for state in states):
                    self.stop(ref)
                    return RunStatus("RUNNING", message=f"rank {rank} ended ({bad}): stopping the others")
                first = statuses[rank]
                state = "LOST" if bad == "MISSING" else bad
                return RunStatus(state, first.exit_code, first.message, first.retry, rank)  # type: ignore[arg-type]
        if all(state == "SUCCEEDED" for state in states):
            return RunStatus("SUCCEEDED", 0)
        return RunStatus("RUNNING" if "RUNNING" in states else "PENDING")

    def _status_one(self, ref: str) -> RunStatus:
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
        for k in range(gang_size(ref)):
            try:
                self.client.stop_job(rank_ref(ref, k))
            except RuntimeError as exc:
                log.warning("stopping %s: %s", rank_ref(ref, k), exc)

    def read_logs(self, ref: str, offset: int) -> LogRead:
        """The job's output past ``offset`` (a gang's ref: rank 0's). Ray's Jobs API has no read from an
        offset: ``get_job_logs``
        gives the whole log, and ``tail_job_logs`` (a websocket per job, held open) also starts from the
        beginning. So the whole log is fetched and only what lies past ``offset`` is returned: a read
        costs the log's whole size, which is why the log loop reads running jobs every
        ``COOP_LOG_SHIP_INTERVAL_S`` in a thread of its own, not in each scheduler cycle. Raises
        (``RuntimeError``, or a connection error) when Ray cannot give it."""
        if gang_size(ref) > 1:
            ref = rank_ref(ref, 0)
        data = str(self.client.get_job_logs(ref)).encode()[offset:]
        return LogRead(data, offset + len(data))

    def fetch_files(self, ref: str, dest: Path) -> bool:
        return False  # each attempt's wrapper sends them, from the node (agent/job_files.py)

    def listing(self, limit: int = 1000, timeout_s: int = 10) -> dict[str, list[dict[str, Any]]]:
        """What the Ray cluster holds now, as plain dicts for ``services.foreign_work``: its nodes, the
        jobs not ended (submitted through the Jobs API or plain drivers) and every plain driver, the actors
        not yet dead, the tasks not ended and the live driver processes (where a plain driver runs).
        Raises when Ray cannot be read; at most ``limit`` of each (the rest is unseen)."""
        from ray.util.state import list_actors, list_jobs, list_nodes, list_tasks, list_workers

        common: dict[str, Any] = {
            "address": self.dashboard_url,
            "limit": limit,
            "timeout": timeout_s,
            "raise_on_missing_output": False,
        }
        nodes = list_nodes(detail=True, **common)
        # the jobs still running (Ray keeps every finished submission), and every plain driver: few, and
        # whether an actor's job is listed tells a driver's actor from Ray's own (see foreign_work)
        ended: list[Any] = [("status", "!=", s) for s in ("SUCCEEDED", "FAILED", "STOPPED")]
        jobs = list_jobs(detail=True, filters=ended, **common)
        known = {(j.submission_id, j.job_id) for j in jobs}
        jobs += [
            j
            for j in list_jobs(detail=True, filters=[("type", "=", "DRIVER")], **common)
            if (j.submission_id, j.job_id) not in known
        ]
        actors = list_actors(detail=True, filters=[("state", "!=", "DEAD")], **common)
        tasks = list_tasks(filters=[("state", "!=", "FINISHED"), ("state", "!=", "FAILED")], **common)
        drivers = list_workers(filters=[("worker_type", "=", "DRIVER"), ("is_alive", "=", "True")], **common)
        return {
            "nodes": [
                {
                    "node_id": n.node_id,
                    "is_head": bool(n.is_head_node),
                    "ip": n.node_ip,
                    "state": str(n.state),
                    "coop_resources": sorted(r for r in (n.resources_total or {}) if r.startswith("coop_node_")),
                    "labels": {k: v for k, v in (n.labels or {}).items() if k.startswith("coop/")},
                }
                for n in nodes
            ],
            "jobs": [
                {
                    "type": str(getattr(j.type, "value", j.type)),
                    "job_id": j.job_id,
                    "submission_id": j.submission_id,
                    "status": str(getattr(j.status, "value", j.status)),
                    "entrypoint": (j.entrypoint or "")[:500],
                    "driver_node_id": j.driver_node_id,
                    "driver_ip": j.driver_info.node_ip_address if j.driver_info else None,
                    "driver_pid": str(j.driver_info.pid) if j.driver_info else None,
                }
                for j in jobs
            ],
            "actors": [
                {
                    "actor_id": a.actor_id,
                    "class_name": a.class_name,
                    "name": a.name or "",
                    "namespace": a.ray_namespace or "",
                    "state": str(a.state),
                    "job_id": a.job_id,
                    "node_id": a.node_id,
                }
                for a in actors
            ],
            "tasks": [
                {
                    "task_id": t.task_id,
                    "name": t.name,
                    "type": str(t.type),
                    "state": str(t.state),
                    "job_id": t.job_id,
                    "node_id": t.node_id,
                }
                for t in tasks
            ],
            "drivers": [{"ip": w.ip, "pid": str(w.pid), "node_id": w.node_id} for w in drivers],
        }


def guest_env(launch: Launch, ref: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """What Ray puts in the entrypoint's environment (a gang's rank: its own ``ref`` and ``env``). The
    job's own variables travel inside ``COOP_GUEST``, applied only inside the sandbox: as plain
    runtime_env variables they would also reach the wrapper itself (a PATH or LD_PRELOAD of the job's
    choosing, before any sandbox)."""
    job = {
        "ref": ref or launch.ref,
        "command": launch.command,
        "env": launch.env if env is None else env,
        "owner": launch.owner,
        "cpus": launch.cpus or None,
        "memory_bytes": int(launch.memory_gb * 10**9) if launch.memory_gb else None,  # GB, as asked (coop/spec.py)
        "transfer_token": launch.transfer_token,  # the wrapper's, for outputs and checkpoints: never the job's
    }
    return {"COOP_GUEST": json.dumps(job), "RAY_JOB_STOP_WAIT_TIME_S": str(int(launch.grace_s))}


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
