"""A job's files beyond the node that runs it, moved by its wrapper (``agent.guest``) through the
coordinator's artifact store with the attempt's own credential (the job never holds it):

- before the job starts, its last checkpoint is restored into ``$COOP_CHECKPOINT_DIR``, whichever
  node ran the attempt that wrote it, and the outputs of the earlier jobs it names (``inputs:``)
  are put under ``$COOP_INPUT_DIR``;
- while it runs, that folder is sent at most every ``COOP_CHECKPOINT_SYNC_S`` seconds, and only
  when it changed (an empty or unchanged folder costs nothing);
- when it stops (done, failed, or stopped within its grace period), the checkpoint folder once more,
  then what it wrote under ``$COOP_OUTPUT_DIR``.

Each step says what it did in the job's own log. A transfer that fails is said there too and never
changes the job's exit code: the job's result is the job's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from coop.client import CoopError, tls_verify
from coop.transfer import Changing, Sender, fingerprint

SERVER_ENV = "COOP_SERVER_URL"  # set by the agent for Ray's processes: the coordinator it talks to
SERVER_CA_ENV = "COOP_SERVER_CA"  # and the PEM of the CA its certificate is checked with, when not a public one


def say(message: str) -> None:
    print(f"coop: {message}", file=sys.stderr, flush=True)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class JobFiles:
    def __init__(
        self, sender: Sender | None, checkpoints: Path | None, outputs: Path, inputs: Path, job_id: str = "JOB"
    ) -> None:
        self.sender = sender
        self.job_id = job_id
        self.checkpoints = checkpoints
        self.outputs = outputs
        self.inputs = inputs
        self.sync_s = 300.0
        self.sent: tuple[Any, ...] | None = None  # the checkpoint folder's fingerprint when last sent
        self.sends = True  # False on a gang's ranks 1..: only rank 0 sends checkpoints and outputs

    @classmethod
    def connect(cls, job: dict[str, Any], checkpoints: Path | None, outputs: Path, inputs: Path) -> JobFiles:
        token, url = job.get("transfer_token"), os.environ.get(SERVER_ENV)
        job_id = str(job.get("env", {}).get("COOP_JOB_ID", "JOB"))
        if not token or not url:
            say(
                "this node cannot reach an artifact store (no coordinator URL or credential): outputs and "
                "checkpoints stay on this node"
            )
            return cls(None, checkpoints, outputs, inputs, job_id)
        try:
            verify = tls_verify(option=SERVER_CA_ENV, ca_pem=os.environ.get(SERVER_CA_ENV))
        except CoopError as exc:
            say(f"{exc.message}: outputs and checkpoints stay on this node")
            return cls(None, checkpoints, outputs, inputs, job_id)
        files = cls(Sender(url, str(token), say=say, verify=verify), checkpoints, outputs, inputs, job_id)
        rank = str(job.get("env", {}).get("COOP_NODE_RANK", "0"))
        if rank != "0":  # every rank restores the checkpoint and inputs; one writes back, as torch's rank 0 saves
            files.sends = False
            say(f"rank {rank} of a gang: only rank 0 sends checkpoints and outputs to the store")
        return files

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()

    def restore(self) -> bool:
        """Put the last checkpoint and the inputs in place; False when an input could not be fetched
        (the job would only fail without it)."""
        if self.sender is None:
            return True
        try:
            plan = self.sender.plan()
        except CoopError as exc:
            say(f"could not ask the coordinator for this job's last checkpoint ({exc.message}); starting without it")
            return True
        self.sync_s = float(plan["checkpoint_sync_s"])
        for given in plan.get("inputs", []):
            folder, outputs = self.inputs / given["folder"], given["outputs"]
            try:
                self.sender.restore(outputs, folder)
            except (CoopError, OSError) as exc:
                say(f"could not fetch job {given['job_id']}'s outputs into $COOP_INPUT_DIR/{given['folder']}: {exc}")
                return False
            say(
                f"input: job {given['job_id']}'s outputs (attempt {outputs['attempt']}, {outputs['files']} files, "
                f"{megabytes(outputs['bytes'])}) in $COOP_INPUT_DIR/{given['folder']}"
            )
        self._restore_checkpoint(plan["checkpoint"])
        return True

    def _restore_checkpoint(self, checkpoint: dict[str, Any] | None) -> None:
        if self.sender is None or checkpoint is None or self.checkpoints is None:
            return
        try:
            fetched = self.sender.restore(checkpoint, self.checkpoints)
        except (CoopError, OSError) as exc:
            say(f"could not restore the checkpoint of attempt {checkpoint['attempt']} ({exc}); starting without it")
            return
        say(
            f"restored the checkpoint of attempt {checkpoint['attempt']} into $COOP_CHECKPOINT_DIR: "
            f"{checkpoint['files']} files, {megabytes(checkpoint['bytes'])} ({megabytes(fetched)} fetched)"
        )
        now = fingerprint(self.checkpoints)
        if {name for name, *_ in now} == {item["path"] for item in checkpoint["items"]}:
            self.sent = now  # the store holds exactly this already

    def sync_while(self, job: subprocess.Popen[bytes]) -> None:
        """Wait for the job, sending its checkpoint folder every ``sync_s`` when it changed."""
        while True:
            try:
                job.wait(timeout=self.sync_s)
                return
            except subprocess.TimeoutExpired:
                self.send_checkpoint()

    def send_checkpoint(self) -> None:
        if self.sender is None or self.checkpoints is None or not self.sends:
            return
        now = fingerprint(self.checkpoints)
        if not now or now == self.sent:
            return
        try:
            done = self.sender.send(self.checkpoints, "checkpoint")
        except Changing:
            say("the checkpoint folder was being written; it is sent at the next sync")
            return
        except (CoopError, OSError) as exc:
            say(f"could not send the checkpoint: {exc}")
            return
        self.sent = now
        if done is not None:
            say(f"checkpoint sent to the store: {done['files']} files, {megabytes(done['bytes'])}")

    def send_back(self) -> None:
        """The job stopped: its checkpoint once more, then its outputs."""
        self.send_checkpoint()
        if self.sender is None or not self.sends:
            return
        try:
            done = self.sender.send(self.outputs, "output")
        except (CoopError, OSError, Changing) as exc:
            say(f"could not send the outputs: {exc}")
            return
        if done is None:
            say("no outputs: nothing was written under $COOP_OUTPUT_DIR")
        else:
            say(
                f"outputs sent to the store: {done['files']} files, {megabytes(done['bytes'])} "
                f"(coop pull {self.job_id})"
            )
