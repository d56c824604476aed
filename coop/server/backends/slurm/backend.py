"""Runs attempts as ``sbatch`` jobs on a pool's Slurm cluster, over the pool's one SSH connection.

Each attempt is one Slurm job named after its submission id (``coop-<job>-<attempt>``), in its own
directory ``<scratch>/jobs/<id>`` holding the batch script and the output. The name is how Coop
finds the job again after a restart, and why a submission is never repeated: ``submit`` looks for
the name first. Workdirs are uploaded once per content hash to ``<scratch>/workdirs``.

A gang (``Launch.nodes`` > 1, ref ``coop-<job>-<attempt>-x<N>``) is one Slurm job of N nodes, under
the gang's ref; status and stop act on it whole. Each rank's output is ``rank-<k>.log`` in the job
directory (read by the rank's ref, ``...-x<N>-rank<k>``; the gang's ref reads rank 0's, which also
holds the batch shell's own lines). The job directory must be on a filesystem every node shares (as
the scratch dir is on nearly every cluster): the ranks run in its ``work`` folder, write their logs
there, and what they leave in ``output`` comes back from there.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from coop.server.backends import Launch, LogRead, RunStatus, gang_size, split_ref
from coop.server.backends.slurm import commands
from coop.server.backends.slurm.capacity import node_classes
from coop.server.backends.slurm.config import NodeClass, SlurmPoolConfig
from coop.server.backends.slurm.parse import (
    JobRecord,
    QueueEntry,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_job,
    parse_sinfo,
    parse_squeue,
)
from coop.server.backends.slurm.script import EXIT_STATUS, OUTPUT, RANK_LOG, BatchJob, batch_script
from coop.server.backends.slurm.ssh import CommandError, Connection, SshError, Target

log = logging.getLogger("coop.backends.slurm")
LOG_READ_LIMIT = 4 * 1024 * 1024  # most bytes of a job's output one read brings back
CHECKPOINT_DIR_FILE = "checkpoint-dir"  # in the job dir: where the attempt's checkpoint folder is
_GANG_SUFFIX = re.compile(r"-x\d+$")


def job_prefix(name: str) -> str:
    """What every attempt of one Coop job shares in its Slurm job name: ``coop-12`` of ``coop-12-1``
    and of a gang's ``coop-12-2-x4``."""
    return _GANG_SUFFIX.sub("", name).rpartition("-")[0]


_WAITING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "STAGE_OUT", "SIGNALING", "RESIZING"}
_LOST = {  # the cluster took the node or the job away: another attempt, while retries remain
    "NODE_FAIL": "Slurm reports NODE_FAIL: the node running it failed",
    "PREEMPTED": "Slurm PREEMPTED it for other work on the cluster",
    "BOOT_FAIL": "Slurm reports BOOT_FAIL: its node failed to boot",
    "REVOKED": "Slurm REVOKED it (federation)",
}


def run_status(state: str, exit_code: int | None, signal: int | None, reason: str = "", limit: str = "") -> RunStatus:
    """Slurm's view of a job, as Coop's (pure; ``state`` as squeue/scontrol/sacct print it)."""
    state = state.split()[0].rstrip("+") if state.strip() else "PENDING"
    if state in _WAITING:
        return RunStatus("PENDING", message=f"queued in Slurm ({reason})" if reason else "queued in Slurm")
    if state in _RUNNING:
        return RunStatus("RUNNING")
    if state == "COMPLETED":
        return RunStatus("SUCCEEDED", exit_code or 0)
    if state in _LOST:
        return RunStatus("LOST", message=_LOST[state])
    if state == "CANCELLED":
        return RunStatus("STOPPED", message="cancelled in Slurm")
    if state in ("TIMEOUT", "DEADLINE"):
        what = "its time limit"
        if limit and limit not in ("UNLIMITED", "Partition_Limit"):
            what = f"its time limit of {limit}"
        if state == "DEADLINE":
            what = "its deadline"
        return RunStatus("FAILED", None, f"Slurm killed it at {what} ({state})", retry=False)
    if state == "OUT_OF_MEMORY":
        return RunStatus("FAILED", None, "Slurm killed it for using more memory than it asked for (OUT_OF_MEMORY)")
    if signal:  # FAILED by a signal: the shell's convention, 128 + signal
        return RunStatus("FAILED", 128 + signal, f"killed by signal {signal} (Slurm {state}, {reason or 'no reason'})")
    if state == "FAILED":
        return RunStatus("FAILED", exit_code, f"Slurm {state} ({reason})" if reason else f"Slurm {state}")
    return RunStatus("PENDING", message=f"Slurm state {state}")  # a state this version does not know: wait


class SlurmBackend:
    """One pool: its settings, its SSH connection, and what Coop knows of its queue."""

    name = "slurm"

    def __init__(self, pool: str, config: SlurmPoolConfig, conn: Connection, queue_ttl_s: float = 0.5) -> None:
        self.pool = pool
        self.config = config
        self.conn = conn
        self.queue_ttl_s = queue_ttl_s
        self.log_read_limit = LOG_READ_LIMIT
        self._scratch: str | None = None
        self._queue: dict[str, QueueEntry] = {}
        self._queue_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def connect_to(cls, pool: str, config: SlurmPoolConfig, **timeouts: float) -> SlurmBackend:
        target = Target(config.host, config.port, config.user, config.key, config.known_hosts)
        return cls(pool, config, Connection(target, **timeouts))

    def close(self) -> None:
        self.conn.close()

    # --- capacity -------------------------------------------------------------------------------

    def capacity(self) -> list[NodeClass]:
        """What the partition offers now (``sinfo``), as node classes."""
        out = self.conn.run(commands.sinfo(self.config.partition), retry=True).out
        return node_classes(parse_sinfo(out), self.config)

    # --- paths ----------------------------------------------------------------------------------

    def scratch(self) -> str:
        """The scratch dir as an absolute path (a relative one is under the user's home)."""
        if self._scratch is None:
            self.conn.makedirs(self.config.scratch_dir)
            self._scratch = self.conn.realpath(self.config.scratch_dir)
        return self._scratch

    def job_dir(self, ref: str) -> str:
        """The attempt's directory on the cluster; a rank's ref gives its gang's."""
        return f"{self.scratch()}/jobs/{split_ref(ref)[0]}"

    # --- the Backend protocol -------------------------------------------------------------------

    def submit(self, launch: Launch) -> None:
        if launch.nodes != gang_size(launch.ref):
            raise ValueError(f"{launch.ref}: a launch of {launch.nodes} nodes needs the gang's ref (gang_ref)")
        if self._find(launch.ref, fresh=True) is not None:  # submitted before a restart: attach
            log.info("%s is already in Slurm; re-attaching", launch.ref)
            return
        self._cancel_earlier_attempts(launch.ref)
        scratch = self.scratch()
        job_dir = self.job_dir(launch.ref)
        self.conn.makedirs(job_dir)
        archive = None
        if launch.workdir is not None:
            archive = f"{scratch}/workdirs/{launch.workdir.name}"
            if self.conn.size(archive) != launch.workdir.stat().st_size:  # content-addressed: once per hash
                self.conn.makedirs(f"{scratch}/workdirs")
                self.conn.upload(launch.workdir, archive)
        env = dict(launch.env)
        if launch.metadata.get("checkpoint") == "default":  # keep checkpoints on the cluster, across attempts
            env["COOP_CHECKPOINT_DIR"] = f"{scratch}/checkpoints/job-{launch.metadata.get('coop_job', launch.ref)}"
        self.conn.makedirs(f"{job_dir}/output")  # brought back to the store when the attempt ends
        env["COOP_OUTPUT_DIR"] = f"{job_dir}/output"
        self._place_checkpoint(launch, env.get("COOP_CHECKPOINT_DIR"), job_dir)
        script = batch_script(
            BatchJob(
                name=launch.ref,
                job_dir=job_dir,
                command=launch.command,
                env=env,
                cpus=launch.cpus,
                gpus=launch.gpus,
                gres=launch.gres,
                memory_gb=launch.memory_gb,
                time_limit_s=launch.time_limit_s,
                workdir_archive=archive,
                partition=self.config.partition,
                account=self.config.account,
                qos=self.config.qos,
                extra_options=self.config.sbatch_options,
                nodes=launch.nodes,
            )
        )
        self.conn.write(f"{job_dir}/job.sbatch", script.encode(), mode=0o700)
        try:
            job_id = parse_sbatch(self.conn.run(commands.sbatch(job_dir, "job.sbatch")).out)
        except CommandError:
            raise  # sbatch answered, and said no
        except SshError:
            # The connection broke: sbatch may have queued the job and only its reply was lost. Look for
            # it by name before calling the launch failed, or the next attempt would run it a second time.
            entry = self._find(launch.ref, fresh=True)
            if entry is None:
                raise
            job_id = entry.job_id
            log.warning("the reply to sbatch for %s was lost; Slurm has it as job %s", launch.ref, job_id)
        self._queue_at = 0.0  # the next status call looks again
        log.info("submitted %s to pool %s as Slurm job %s", launch.ref, self.pool, job_id)

    def _cancel_earlier_attempts(self, ref: str) -> None:
        """Cancel what an earlier attempt of the same Coop job left in the queue: a submission whose
        reply never came, while the connection stayed down, runs on unseen. Coop starts an attempt only
        once the one before has ended, so anything still queued under its name is a stray."""
        prefix = job_prefix(ref)
        strays = [
            name for name, entry in self._queue.items()
            if name != ref and job_prefix(name) == prefix and entry.state in _WAITING | _RUNNING
        ]  # fmt: skip
        for name in strays:
            log.warning("cancelling Slurm job %s of an earlier attempt before starting %s", name, ref)
            self.stop(name)

    def status(self, ref: str) -> RunStatus:
        """The Slurm job's state: a gang's is its one job's (a rank's ref gives its gang's)."""
        ref = split_ref(ref)[0]
        entry = self._find(ref) or self._find(ref, fresh=True)
        if entry is None:
            record = self._sacct(ref)
            if record is None:
                return self._from_exit_status(ref)
            return run_status(record.state, record.exit_code, record.signal, record.reason)
        if entry.state in _WAITING or entry.state in _RUNNING:
            return run_status(entry.state, None, None, entry.reason)
        record = self._scontrol(entry.job_id) or self._sacct(ref)
        if record is None:
            return run_status(entry.state, None, None, entry.reason)
        return run_status(record.state, record.exit_code, record.signal, record.reason, record.time_limit)

    def _from_exit_status(self, ref: str) -> RunStatus:
        """A job Slurm no longer lists (no accounting, ended more than ``MinJobAge`` ago): the exit
        code its script left in the job directory, if it got that far."""
        raw = self.conn.read(f"{self.job_dir(ref)}/{EXIT_STATUS}", 0, 64).decode("ascii", "replace").strip()
        if not raw.isdigit():
            return RunStatus("MISSING", message=f"Slurm on {self.pool} has no job named {ref}")
        code = int(raw)
        if code == 0:
            return RunStatus("SUCCEEDED", 0, "exited 0 (from its exit-status file; Slurm no longer lists it)")
        return RunStatus("FAILED", code, f"exited {code} (from its exit-status file; Slurm no longer lists it)")

    def stop(self, ref: str) -> None:
        """scancel by name: a gang's one job, every rank (a rank's ref stops its whole gang)."""
        ref = split_ref(ref)[0]
        result = self.conn.run(commands.scancel(self.config.user, ref), check=False)
        if result.rc != 0:
            log.warning("scancel %s on %s: %s", ref, self.pool, result.err.strip())
        self._queue_at = 0.0

    def read_logs(self, ref: str, offset: int) -> LogRead:
        """The job's output file from ``offset`` on, at most ``log_read_limit`` bytes (``more`` when
        that many came). Read by SFTP over the pool's one connection: the file is opened by its path
        and read from the offset, so only what is new crosses the network, and no shell sees anything
        (nothing to quote). A file not there yet (the job waits in the queue) reads as nothing.

        A gang's rank ``k`` (``rank_ref``) reads ``rank-<k>.log``; the gang's own ref reads rank 0's,
        which also holds the batch shell's lines (an unpack error, srun's word on which rank failed)."""
        name, rank = split_ref(ref)
        if rank is None and gang_size(name) > 1:
            rank = 0
        file = OUTPUT if rank is None else RANK_LOG.format(rank=rank)
        data = self.conn.read(f"{self.job_dir(name)}/{file}", offset, self.log_read_limit)
        return LogRead(data, offset + len(data), more=len(data) >= self.log_read_limit)

    def fetch_files(self, ref: str, dest: Path) -> bool:
        """What the job left in ``<job dir>/output`` (its ``$COOP_OUTPUT_DIR``) and in its checkpoint
        folder (named in ``<job dir>/checkpoint-dir`` at submit), by SFTP: for a gang, what every rank
        left there, the folders being on the filesystem the nodes share. (Where the login node saw only
        rank 0's node's disk, only rank 0's files would come back; but a gang's other ranks do not run
        there at all: they cannot reach the job directory, and exit 97 saying so.)"""
        copied = self.conn.download_tree(f"{self.job_dir(ref)}/output", dest / "output")
        folder = self.conn.read(f"{self.job_dir(ref)}/{CHECKPOINT_DIR_FILE}").decode()
        if folder:
            copied += self.conn.download_tree(folder, dest / "checkpoint")
        log.info("%s: %d output and checkpoint files copied back from the cluster", ref, copied)
        return True

    def _place_checkpoint(self, launch: Launch, folder: str | None, job_dir: str) -> None:
        """Put the job's last checkpoint from the store into its checkpoint folder on the cluster,
        unless the folder already holds that very set (``<folder>.coop-set`` names the set last put
        there): then what is there is as new or newer (the attempt that ran there wrote it)."""
        if not folder:
            return
        self.conn.write(f"{job_dir}/{CHECKPOINT_DIR_FILE}", folder.encode())
        if launch.checkpoint is None or launch.checkpoint_set is None:
            return
        marker = f"{folder.rstrip('/')}.coop-set"
        if self.conn.read(marker).decode() == str(launch.checkpoint_set):
            return
        self.conn.makedirs(folder)
        placed = self.conn.sync_tree(launch.checkpoint, folder)
        self.conn.write(marker, str(launch.checkpoint_set).encode())
        log.info("%s: checkpoint set %s placed in %s (%d files)", launch.ref, launch.checkpoint_set, folder, placed)

    # --- lookups --------------------------------------------------------------------------------

    def _find(self, ref: str, fresh: bool = False) -> QueueEntry | None:
        """The user's jobs as squeue lists them, shared by every status call for ``queue_ttl_s``."""
        with self._lock:
            if fresh or time.monotonic() - self._queue_at > self.queue_ttl_s:
                out = self.conn.run(commands.squeue(self.config.user), retry=True).out
                queue: dict[str, QueueEntry] = {}
                for e in parse_squeue(out):
                    old = queue.get(e.name)
                    if old is None or int(e.job_id.split("_")[0]) > int(old.job_id.split("_")[0]):
                        queue[e.name] = e
                self._queue, self._queue_at = queue, time.monotonic()
            return self._queue.get(ref)

    def _scontrol(self, job_id: str) -> JobRecord | None:
        result = self.conn.run(commands.scontrol_job(job_id), check=False, retry=True)
        return parse_scontrol_job(result.out) if result.rc == 0 else None

    def _sacct(self, ref: str) -> JobRecord | None:
        """From accounting, for jobs squeue has forgotten; None where the site has no accounting."""
        try:
            records = parse_sacct(self.conn.run(commands.sacct(self.config.user, ref), retry=True).out)
        except CommandError as exc:
            log.debug("sacct on %s: %s", self.pool, exc)
            return None
        return max(records, key=lambda r: int(r.job_id.split("_")[0])) if records else None
