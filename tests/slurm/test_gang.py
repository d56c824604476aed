"""Gang jobs on Slurm: one batch job of N nodes whose command ``srun`` runs once per node.

The first tests need no Slurm: the script's directives, and the script itself run by bash with a
stand-in ``srun`` (each rank a process, ``SLURM_NODEID`` set). The others run gangs of two nodes on
the test cluster, whose one machine is two Slurm nodes (scripts/services/slurm.sh, partition "gang").
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coop.server.backends import Launch, gang_ref, master_port, rank_ref, split_ref
from coop.server.backends.slurm import commands
from coop.server.backends.slurm.backend import SlurmBackend, job_prefix
from coop.server.backends.slurm.config import SlurmPoolConfig
from coop.server.backends.slurm.parse import parse_squeue
from coop.server.backends.slurm.script import EXIT_STATUS, BatchJob, batch_script
from coop.server.backends.slurm.ssh import Connection
from tests.conftest import wait_for
from tests.slurm.conftest import SSH_PORT, USER, SlurmCluster, start_hpc
from tests.slurm.test_parse import NASTY

# --- without Slurm ------------------------------------------------------------------------------


def test_gang_directives_ask_for_nodes_with_resources_per_node() -> None:
    job = BatchJob(name="coop-7-2-x4", job_dir="/scratch/jobs/coop-7-2-x4", command="torchrun train.py", env={},
                   cpus=8, gpus=2, gres="gpu:a100", memory_gb=64, time_limit_s=3600, partition="gpu",
                   nodes=4)  # fmt: skip
    script = batch_script(job)
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=coop-7-2-x4", "#SBATCH --output=rank-0.log", "#SBATCH --open-mode=append",
        "#SBATCH --no-requeue", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:a100:2", "#SBATCH --mem=65536M", "#SBATCH --time=60",
    ]  # fmt: skip
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert srun.startswith("srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --cpus-per-task=8 --kill-on-bad-exit=1 ")
    assert f"export MASTER_PORT={master_port('coop-7-2-x4')}" in script
    assert "export COOP_NUM_NODES=4" in script and "export COOP_GPUS_PER_NODE=2" in script


def test_a_pool_option_that_would_reshape_a_gang_is_refused() -> None:
    job = BatchJob(name="coop-7-2-x4", job_dir="/scratch/jobs/coop-7-2-x4", command="true", env={}, cpus=1, nodes=4,
                   extra_options=["--nodes=1"])  # fmt: skip
    with pytest.raises(ValueError, match="--nodes=1 would change the shape of a gang of 4 nodes"):
        batch_script(job)
    assert "#SBATCH --nodes=1" in batch_script(replace(job, name="coop-7-2", nodes=1))  # one node: the pool's say


def test_refs_name_the_gangs_job_and_rank() -> None:
    gang = gang_ref("coop-12-1", 2)
    assert split_ref(gang) == ("coop-12-1-x2", None)
    assert split_ref(rank_ref(gang, 1)) == ("coop-12-1-x2", 1)
    assert split_ref("coop-12-1") == ("coop-12-1", None)
    assert split_ref("coop-12-1-rank1") == ("coop-12-1-rank1", None)  # no gang: not a rank's ref
    assert job_prefix("coop-12-1") == job_prefix("coop-12-2-x4") == "coop-12" != job_prefix("coop-112-1-x2")


FAKE_SRUN = """#!/bin/bash
# srun for one machine: each rank a process with its SLURM_NODEID; exits with the highest rank's code
nodes=1
while [ "${1#--}" != "$1" ]; do case $1 in --nodes=*) nodes=${1#--nodes=} ;; esac; shift; done
pids=()
for ((k = 0; k < nodes; k++)); do SLURM_NODEID=$k "$@" & pids+=($!); done
worst=0
for p in "${pids[@]}"; do wait "$p"; c=$?; [ "$c" -gt "$worst" ] && worst=$c; done
exit "$worst"
"""


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    """PATH with a stand-in srun, and scontrol naming two nodes, for running a gang's script locally."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && tr , "\\n" <<< "$3"\n')
    (bin_dir / "scancel").write_text("#!/bin/bash\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "node-a,node-b", "SLURM_JOB_ID": "1"}


def run_gang_script(job_dir: Path, command: str, env: dict[str, str], fake_slurm: dict[str, str]) -> int:
    job_dir.mkdir()
    script = batch_script(BatchJob(name="coop-3-1-x2", job_dir=str(job_dir), command=command, env=env, cpus=1,
                                   nodes=2))  # fmt: skip
    (job_dir / "job.sbatch").write_text(script)
    done = subprocess.run(["bash", str(job_dir / "job.sbatch")], env=fake_slurm, capture_output=True, timeout=30)
    with (job_dir / "rank-0.log").open("ab") as log:  # where Slurm's --output would have put it
        log.write(done.stdout + done.stderr)
    return done.returncode


def test_each_rank_gets_its_environment_its_log_and_the_command(tmp_path: Path, fake_slurm: dict[str, str]) -> None:
    job_dir = tmp_path / "job"
    command = 'printf "[%s]\\n" "$NASTY"; echo "rank $COOP_NODE_RANK/$RANK of $NNODES at $MASTER_ADDR:$MASTER_PORT"'
    assert run_gang_script(job_dir, command, {"NASTY": NASTY}, fake_slurm) == 0
    port = master_port("coop-3-1-x2")
    for rank in (0, 1):
        log = (job_dir / f"rank-{rank}.log").read_text()
        assert log == f"[{NASTY}]\nrank {rank}/{rank} of 2 at node-a:{port}\n"
    assert (job_dir / EXIT_STATUS).read_text() == "0\n"
    assert not list(tmp_path.rglob("PWNED*"))


def test_the_gang_exits_with_the_code_of_the_rank_that_failed_first(tmp_path: Path, fake_slurm: dict[str, str]) -> None:
    """srun's own code is the highest rank's (here rank 0's 5, exiting after rank 1's 3): the first wins."""
    command = 'if [ "$COOP_NODE_RANK" = 1 ]; then exit 3; fi; sleep 0.5; exit 5'
    assert run_gang_script(tmp_path / "job", command, {}, fake_slurm) == 3
    assert (tmp_path / "job" / EXIT_STATUS).read_text() == "3\n"
    assert "coop: rank 1 failed first (exit 3)" in (tmp_path / "job" / "rank-0.log").read_text()


def test_a_launch_of_several_nodes_needs_the_gangs_ref() -> None:
    config = SlurmPoolConfig(host="127.0.0.1", user=USER, key="/k", known_hosts="/kh", scratch_dir="s")
    backend = SlurmBackend("p", config, conn=None)  # type: ignore[arg-type]  # refused before any connection
    launch = Launch(ref="coop-1-1", command="true", env={}, workdir=None, node_resource="", gpus=0, cpus=1,
                    grace_s=1, nodes=2)  # fmt: skip
    with pytest.raises(ValueError, match="gang_ref"):
        backend.submit(launch)


# --- on the test cluster: two Slurm nodes on one machine ----------------------------------------


@pytest.fixture
def gang_pool(testbed: SlurmCluster) -> Iterator[dict[str, Any]]:
    run_id = f"t{secrets.token_hex(4)}"
    config = SlurmPoolConfig(
        host="127.0.0.1", port=SSH_PORT, user=USER, key=testbed.key, known_hosts=testbed.known_hosts,
        partition="gang", scratch_dir=f"coop-test-{run_id}", gres_map={"RTX4090": "gpu:rtx4090"},
    )  # fmt: skip
    backend = SlurmBackend("p", config, Connection(testbed.target))
    yield {"backend": backend, "run_id": run_id}
    ours = [e.job_id for e in parse_squeue(backend.conn.run(commands.squeue(USER)).out) if e.name.startswith(run_id)]
    if ours:
        backend.conn.run("scancel " + " ".join(ours), check=False)
    backend.conn.run(f"rm -rf -- coop-test-{run_id}", check=False)
    backend.close()


def gang(ref: str, command: str, **fields: Any) -> Launch:
    defaults: dict[str, Any] = {"env": {}, "workdir": None, "node_resource": "", "gpus": 0, "cpus": 1, "grace_s": 1}
    return Launch(ref=gang_ref(ref, 2), command=command, nodes=2, **(defaults | fields))


def ended(backend: SlurmBackend, ref: str, timeout: float = 60) -> None:
    wait_for(lambda: backend.status(ref).state not in ("PENDING", "RUNNING"), timeout=timeout, interval=0.2,
             what=f"{ref} to end")  # fmt: skip


def text(backend: SlurmBackend, ref: str) -> str:
    return backend.read_logs(ref, 0).data.decode()


RENDEZVOUS = """
import os, socket, time
rank, port = int(os.environ["RANK"]), int(os.environ["MASTER_PORT"])
if rank == 0:
    with socket.create_server(("", port)) as server:
        server.settimeout(30)
        conn, _ = server.accept()
else:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = socket.create_connection((os.environ["MASTER_ADDR"], port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
with conn:
    conn.sendall(f"rank {rank}".encode())
    print("heard", conn.recv(100).decode())
"""


@pytest.mark.slurm
def test_a_gang_of_two_nodes_runs_one_rank_on_each(gang_pool: dict[str, Any], tmp_path: Path) -> None:
    backend: SlurmBackend = gang_pool["backend"]
    (shape,) = backend.capacity()  # the partition's two nodes, one shape
    assert (shape.nodes, shape.gpus, shape.gres) == (2, 2, "gpu:rtx4090")
    (tmp_path / "data.txt").write_text("from the workdir\n")
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS)  # rank 1 meets rank 0 at MASTER_ADDR:MASTER_PORT
    archive = tmp_path / f"{secrets.token_hex(8)}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("data.txt", "rendezvous.py"):
            tar.add(tmp_path / name, arcname=name)
    command = (
        'echo "rank=$COOP_NODE_RANK nodes=$COOP_NUM_NODES master=$MASTER_ADDR:$MASTER_PORT '
        'node=$SLURMD_NODENAME gpus=$COOP_GPUS_PER_NODE/$CUDA_VISIBLE_DEVICES"; cat data.txt; '
        'echo "$COOP_NODE_RANK" > "$COOP_OUTPUT_DIR/rank-$COOP_NODE_RANK.txt"; python3 rendezvous.py'
    )
    launch = gang(f"{gang_pool['run_id']}-1-1", command, workdir=archive, gpus=1, gres="gpu:rtx4090", memory_gb=0.1)
    ref = launch.ref
    backend.submit(launch)
    ended(backend, ref)
    assert backend.status(ref).state == "SUCCEEDED"
    logs = [text(backend, rank_ref(ref, k)) for k in (0, 1)]
    fields = [dict(kv.split("=", 1) for kv in log.splitlines()[0].split()) for log in logs]
    assert [f["rank"] for f in fields] == ["0", "1"] and {f["nodes"] for f in fields} == {"2"}
    host = socket.gethostname().split(".")[0]
    assert {f["master"] for f in fields} == {f"{host}:{master_port(ref)}"}  # the same rendezvous for both
    assert [f["node"] for f in fields] == [host, f"{host}-2"]  # one rank on each node
    assert all(f["gpus"].startswith("1/") and f["gpus"] != "1/" for f in fields)  # a GPU of each node's own
    assert [log.splitlines()[1:] for log in logs] == [["from the workdir", "heard rank 1"],
                                                      ["from the workdir", "heard rank 0"]]  # fmt: skip
    assert text(backend, ref) == logs[0]  # the gang's ref reads rank 0
    assert backend.fetch_files(ref, tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back" / "output").iterdir()) == ["rank-0.txt", "rank-1.txt"]


@pytest.mark.slurm
def test_one_rank_failing_fails_the_gang_and_stops_the_other(gang_pool: dict[str, Any]) -> None:
    backend: SlurmBackend = gang_pool["backend"]
    command = (
        'trap "echo rank $COOP_NODE_RANK stopped; exit 143" TERM; echo started; '
        'if [ "$COOP_NODE_RANK" = 1 ]; then sleep 1; echo failing; exit 3; fi; while :; do sleep 0.1; done'
    )
    launch = gang(f"{gang_pool['run_id']}-2-1", command)
    backend.submit(launch)
    ended(backend, launch.ref, timeout=30)  # rank 0 would loop for ever: it was stopped
    status = backend.status(launch.ref)
    assert (status.state, status.exit_code) == ("FAILED", 3)  # the failing rank's code, not the stopped one's 143
    rank0, rank1 = (text(backend, rank_ref(launch.ref, k)) for k in (0, 1))
    assert rank1 == "started\nfailing\n"
    assert rank0.startswith("started\n") and "rank 0 stopped" in rank0
    assert "coop: rank 1 failed first (exit 3)" in rank0  # the batch shell's word, in rank 0's log
    assert backend.conn.read(f"{backend.job_dir(launch.ref)}/{EXIT_STATUS}") == b"3\n"


@pytest.mark.slurm
def test_a_cancelled_gang_gives_every_rank_sigterm_and_time_to_save(gang_pool: dict[str, Any]) -> None:
    backend: SlurmBackend = gang_pool["backend"]
    command = (
        'trap "sleep 1; echo saved > ../saved-$COOP_NODE_RANK; exit 143" TERM; echo started; '
        "while :; do sleep 0.1; done"
    )
    launch = gang(f"{gang_pool['run_id']}-3-1", command)
    backend.submit(launch)
    both = [rank_ref(launch.ref, k) for k in (0, 1)]
    wait_for(lambda: all("started" in text(backend, r) for r in both), timeout=60, what="both ranks to start")
    backend.stop(rank_ref(launch.ref, 1))  # a rank's ref stops its whole gang
    ended(backend, launch.ref, timeout=30)
    assert backend.status(launch.ref).state == "STOPPED"
    job_dir = backend.job_dir(launch.ref)
    assert [backend.conn.read(f"{job_dir}/saved-{k}") for k in (0, 1)] == [b"saved\n"] * 2  # both handlers ran
    assert backend.conn.read(f"{job_dir}/{EXIT_STATUS}") == b"143\n"


@pytest.mark.slurm
def test_a_gang_job_submitted_to_the_coordinator_runs_on_a_pool_of_the_gang_partition(testbed: SlurmCluster) -> None:
    hpc, stop = start_hpc(testbed)
    try:
        added = hpc.cli(*hpc.pool_args("gangs", partition="gang"))
        assert added.exit_code == 0, added.output
        wait_for(lambda: hpc.admin.request("GET", "/pools/gangs")["state"] == "ok", timeout=30, what="pool capacity")
        client, token = hpc.member("gina")
        run = 'echo "rank $COOP_NODE_RANK of $COOP_NUM_NODES"; echo > "$COOP_OUTPUT_DIR/r$COOP_NODE_RANK"'
        spec = {"name": "gang", "run": run, "resources": {"tier": "hpc", "nodes": 2, "gpus": 1, "gpu": "RTX4090"}}
        job = client.submit(spec)
        done = hpc.wait_state(job["id"], "SUCCEEDED", timeout=60)
        (attempt,) = done["attempts_detail"]
        assert attempt["backend_ref"] == gang_ref(hpc.ref(job["id"]), 2)
        for rank in (0, 1):
            logs = hpc.cli("logs", job["id"], "--rank", rank, token=token)
            assert logs.exit_code == 0 and logs.stdout == f"rank {rank} of 2\n", logs.output
        [outputs] = done["outputs"]
        assert sorted(f["path"] for f in outputs["items"]) == ["r0", "r1"]  # both ranks' files (shared filesystem)
    finally:
        stop()
