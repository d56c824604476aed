"""The Slurm parsers, state mapping, node classes and batch script, on output captured from a real Slurm."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from coop.cli.output import UserError
from coop.cli.pools import parse_gpu_info, parse_gres_map
from coop.server.backends.slurm.backend import run_status
from coop.server.backends.slurm.capacity import node_classes
from coop.server.backends.slurm.config import SlurmPoolConfig
from coop.server.backends.slurm.parse import (
    Gres,
    SlurmOutputError,
    node_usable,
    parse_gres,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_job,
    parse_sinfo,
    parse_squeue,
)
from coop.server.backends.slurm.script import EXIT_STATUS, BatchJob, batch_script, time_limit
from tests.conftest import wait_for

DATA = Path(__file__).parent.parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def config(**overrides: object) -> SlurmPoolConfig:
    fields: dict[str, object] = {
        "host": "login.example.org",
        "user": "coop",
        "key": "/etc/coop/ssh/key",
        "known_hosts": "/etc/coop/ssh/known_hosts",
        "partition": "debug",
        "gres_map": {"RTX4090": "gpu:rtx4090"},
    }
    return SlurmPoolConfig.model_validate(fields | overrides)


# --- sinfo and node classes ---------------------------------------------------------------------


def test_sinfo_reads_each_node_and_its_state() -> None:
    (idle,) = parse_sinfo(read("sinfo-idle.txt"))
    assert (idle.name, idle.cpus, idle.memory_mb, idle.partition) == ("vm", 2, 20053, "debug")
    assert idle.gres == (Gres("gpu", "rtx4090", 2),) and idle.state == "idle" and idle.usable
    (busy,) = parse_sinfo(read("sinfo-mixed.txt"))
    assert busy.state == "allocated" and busy.usable  # busy nodes still take queued work
    (drained,) = parse_sinfo(read("sinfo-drained.txt"))
    assert drained.state == "drained" and not drained.usable


@pytest.mark.parametrize(
    ("state", "usable"),
    [("idle", True), ("mixed", True), ("allocated", True), ("completing", True), ("idle~", True),
     ("mixed-", True), ("idle*", False), ("down", False), ("down*", False), ("drained", False),
     ("draining", False), ("mixed+drain", False), ("fail", False), ("maint", False), ("", False)],
)  # fmt: skip
def test_node_states(state: str, usable: bool) -> None:
    assert node_usable(state) is usable


def test_gres_forms_sites_print() -> None:
    assert parse_gres("(null)") == ()
    assert parse_gres("gpu:a100:4(S:0-1),shard:8") == (Gres("gpu", "a100", 4), Gres("shard", None, 8))
    assert parse_gres("gpu:4") == (Gres("gpu", None, 4),)
    assert parse_gres("gpu:nvidia_a100-sxm4-80gb:8(S:0-1),gpu:v100:2(IDX:0,1)") == (
        Gres("gpu", "nvidia_a100-sxm4-80gb", 8),
        Gres("gpu", "v100", 2),
    )
    assert parse_gres("mps:100K") == (Gres("mps", None, 100 * 1024),)


def test_sinfo_refuses_output_it_does_not_understand() -> None:
    with pytest.raises(SlurmOutputError, match="expected 7 fields"):
        parse_sinfo("vm 2 20053 gpu:rtx4090:2 idle\n")


def test_node_classes_from_the_real_sinfo() -> None:
    (cls,) = node_classes(parse_sinfo(read("sinfo-idle.txt")), config())
    assert (cls.name, cls.model, cls.gres) == ("RTX4090x2-2cpu-19.6gb", "RTX4090", "gpu:rtx4090")
    assert (cls.gpus, cls.cpus) == (2, 2)
    assert (cls.gpu_memory_gb, cls.compute_capability, cls.nodes, cls.usable) == (24, 8.9, 1, 1)
    (drained,) = node_classes(parse_sinfo(read("sinfo-drained.txt")), config())
    assert (drained.nodes, drained.usable) == (1, 0)
    (cpu_only,) = node_classes(parse_sinfo(read("sinfo-idle.txt")), config(gres_map={}))
    assert (cpu_only.name, cpu_only.gpus, cpu_only.model) == ("cpu-2cpu-19.6gb", 0, None)  # unmapped GPUs not offered
    assert node_classes(parse_sinfo(read("sinfo-idle.txt")), config(partition="other")) == []


def test_node_classes_group_nodes_by_shape() -> None:
    line = "\x1f".join
    text = "\n".join(
        [
            line(["a1", "64", "512000", "gpu:a100:4(S:0-1)", "idle", "0/64/0/64", "gpu"]),
            line(["a2", "64", "512000", "gpu:a100:4(S:0-1)", "down*", "0/0/64/64", "gpu"]),
            line(["b1", "32", "256000", "gpu:4", "mixed", "8/24/0/32", "gpu"]),
        ]
    )
    cfg = config(partition="gpu", gres_map={"A100": "gpu:a100", "V100": "gpu"}, gpu_info={"A100": {"memory_gb": 80,
                 "compute_capability": 8.0, "tflops": 250}})  # fmt: skip
    a100, v100 = node_classes(parse_sinfo(text), cfg)
    assert (a100.name, a100.nodes, a100.usable, a100.gpu_memory_gb, a100.tflops_per_gpu) == (
        "A100x4-64cpu-500gb",
        2,
        1,
        80,
        250,
    )
    assert (v100.model, v100.gres, v100.gpus, v100.gpu_memory_gb) == ("V100", "gpu", 4, 32)  # untyped GRES, catalog


# --- squeue, scontrol, sacct, sbatch ------------------------------------------------------------


def test_squeue_lists_every_state_slurm_remembers() -> None:
    jobs = parse_squeue(read("squeue-all.txt"))
    assert {j.name: j.state for j in jobs} == {
        "coop-1-1": "COMPLETED", "coop-2-1": "FAILED", "coop-3-1": "COMPLETED", "coop-4-1": "FAILED",
        "coop-5-1": "CANCELLED", "coop-6-1": "PENDING", "coop-7-1": "RUNNING", "coop-8-1": "RUNNING",
    }  # fmt: skip
    assert next(j for j in jobs if j.name == "coop-6-1").reason == "JobHeldUser"
    assert parse_squeue(read("squeue-by-name.txt"))[0].job_id == "1"
    assert parse_squeue(read("squeue-none.txt")) == []
    assert parse_squeue(read("squeue-node-fail.txt"))[0].state == "NODE_FAIL"


@pytest.mark.parametrize(
    ("name", "state", "code", "signal", "reason"),
    [("completed", "COMPLETED", 0, 0, "None"), ("failed", "FAILED", 3, 0, "NonZeroExitCode"),
     ("signal", "FAILED", 0, 9, "JobLaunchFailure"), ("cancelled", "CANCELLED", 0, 15, "None"),
     ("pending", "PENDING", 0, 0, "JobHeldUser"), ("running", "RUNNING", 0, 0, "None"),
     ("timeout", "TIMEOUT", 0, 15, "TimeLimit"), ("node-fail", "NODE_FAIL", 0, 0, "NodeDown")],
)  # fmt: skip
def test_scontrol_show_job(name: str, state: str, code: int, signal: int, reason: str) -> None:
    record = parse_scontrol_job(read(f"scontrol-{name}.txt"))
    assert record is not None
    assert (record.state, record.exit_code, record.signal, record.reason) == (state, code, signal, reason)
    assert record.name.startswith("coop-")
    assert parse_scontrol_job("") is None


def test_sacct_records() -> None:
    records = {r.name: r for r in parse_sacct(read("sacct.txt"))}
    assert records["coop-2-1"].state == "FAILED" and records["coop-2-1"].exit_code == 3
    assert records["coop-5-1"].state == "CANCELLED"  # printed "CANCELLED by 1001"
    assert records["coop-8-1"].state == "TIMEOUT"
    assert records["coop-4-1"].signal == 9
    assert [r.job_id for r in parse_sacct(read("sacct-by-name.txt"))] == ["2"]
    assert parse_sacct(read("sacct-node-fail.txt"))[0].state == "NODE_FAIL"
    assert parse_sacct(read("sacct-none.txt")) == []


def test_sbatch_parsable() -> None:
    assert parse_sbatch(read("sbatch.txt")) == "10"
    assert parse_sbatch("4242;cluster-a\n") == "4242"
    with pytest.raises(SlurmOutputError):
        parse_sbatch("sbatch: error: Batch job submission failed: Invalid account\n")


# --- Slurm's outcome as Coop's ------------------------------------------------------------------


def status_of(name: str):  # type: ignore[no-untyped-def]
    record = parse_scontrol_job(read(f"scontrol-{name}.txt"))
    assert record is not None
    return run_status(record.state, record.exit_code, record.signal, record.reason, record.time_limit)


def test_slurm_outcomes_map_to_coop_states() -> None:
    assert status_of("completed").state == "SUCCEEDED"
    failed = status_of("failed")
    assert (failed.state, failed.exit_code, failed.retry) == ("FAILED", 3, True)
    killed = status_of("signal")
    assert (killed.state, killed.exit_code) == ("FAILED", 137) and "signal 9" in killed.message
    assert status_of("cancelled").state == "STOPPED"
    assert status_of("pending").state == "PENDING" and "JobHeldUser" in status_of("pending").message
    assert status_of("running").state == "RUNNING"
    timeout = status_of("timeout")
    assert (timeout.state, timeout.retry) == ("FAILED", False)  # another attempt would hit the same limit
    assert "time limit of 00:01:00" in timeout.message and "TIMEOUT" in timeout.message
    assert status_of("node-fail").state == "LOST"  # another attempt while retries remain
    assert run_status("PREEMPTED", 0, 0).state == "LOST"
    assert run_status("OUT_OF_MEMORY", 0, 0).state == "FAILED"


# --- the batch script ---------------------------------------------------------------------------

NASTY = "it's \"quoted\" $(touch PWNED) `touch PWNED2`; exit 3 \\ \n second line $HOME '"


def test_batch_script_passes_every_value_exactly(tmp_path: Path) -> None:
    """Run the generated script with bash (the #SBATCH lines are comments to it)."""
    run = 'printf "[%s]\\n" "$NASTY" "$EMPTY"\necho \'literal $(echo no) `echo no`\'\necho "sum $((6*7))"'
    script = batch_script(
        BatchJob(name="coop-1-1", job_dir=str(tmp_path), command=run, env={"NASTY": NASTY, "EMPTY": ""}, cpus=1)
    )
    (tmp_path / "job.sbatch").write_text(script)
    done = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"[{NASTY}]\n[]\nliteral $(echo no) `echo no`\nsum 42\n"
    assert not list(tmp_path.rglob("PWNED*"))


@pytest.mark.parametrize("code", [0, 3])
def test_batch_script_keeps_the_exit_code_beside_the_log(tmp_path: Path, code: int) -> None:
    """Without accounting Slurm forgets a finished job after MinJobAge; the file it leaves does not."""
    script = batch_script(BatchJob(name="coop-1-1", job_dir=str(tmp_path), command=f"exit {code}", env={}, cpus=1))
    (tmp_path / "job.sbatch").write_text(script)
    done = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, timeout=30)
    assert done.returncode == code  # Slurm still sees the command's own exit code
    assert (tmp_path / EXIT_STATUS).read_text() == f"{code}\n"


def test_batch_script_passes_sigterm_on_and_waits_for_the_command_to_save(tmp_path: Path) -> None:
    """Coop's stop (scancel) and Slurm's time limit send SIGTERM: the command must get it and the time
    to write its checkpoint, though it runs as a child of the batch shell."""
    command = (f"trap 'sleep 0.5; echo saved > {tmp_path}/saved; exit 143' TERM; "
               f"touch {tmp_path}/started; while :; do sleep 0.1; done")  # fmt: skip
    script = batch_script(BatchJob(name="coop-1-1", job_dir=str(tmp_path), command=command, env={}, cpus=1))
    (tmp_path / "job.sbatch").write_text(script)
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sbatch")])
    wait_for(lambda: (tmp_path / "started").exists(), timeout=10, what="the command to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 143
    assert (tmp_path / "saved").read_text() == "saved\n"
    assert (tmp_path / EXIT_STATUS).read_text() == "143\n"


def test_batch_script_directives() -> None:
    job = BatchJob(name="coop-7-2", job_dir="/scratch/coop/jobs/coop-7-2", command="python train.py", env={}, cpus=4,
                   gpus=2, gres="gpu:a100", memory_gb=32, time_limit_s=90, partition="gpu", account="proj-42",
                   qos="normal", extra_options=["--constraint=a100_80"])  # fmt: skip
    script = batch_script(replace(job, workdir_archive="/scratch/w/abc.tar.gz"))
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=coop-7-2", "#SBATCH --output=output.log", "#SBATCH --open-mode=append",
        "#SBATCH --no-requeue", "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=4", "#SBATCH --partition=gpu",
        "#SBATCH --account=proj-42", "#SBATCH --qos=normal", "#SBATCH --gres=gpu:a100:2", "#SBATCH --mem=32768M",
        "#SBATCH --time=2", "#SBATCH --constraint=a100_80",
    ]  # fmt: skip
    assert "tar -xzf /scratch/w/abc.tar.gz -C work" in script
    assert time_limit(60) == "1" and time_limit(1) == "1" and time_limit(3601) == "61"


def test_batch_script_refuses_unsafe_directives_and_names() -> None:
    with pytest.raises(ValueError, match="#SBATCH"):
        batch_script(BatchJob(name="coop-1-1", job_dir="/x", command="true", env={}, cpus=1, partition="a b"))
    with pytest.raises(ValueError, match="job name"):
        batch_script(BatchJob(name="x\nrm -rf ~", job_dir="/x", command="true", env={}, cpus=1))
    with pytest.raises(ValueError, match="not a shell identifier"):
        batch_script(BatchJob(name="coop-1-1", job_dir="/x", command="true", env={"A=1; rm": "v"}, cpus=1))


# --- pool settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [({"host": "-oProxyCommand=evil"}, "host", "host name"), ({"key": "keys/hpc"}, "key", "absolute path"),
     ({"partition": "gpu; rm -rf ~"}, "partition", "pattern"), ({"scratch_dir": "../../etc"}, "scratch_dir", "no '..'"),
     ({"gres_map": {"RTX4090": "gpu rtx4090"}}, "gres_map", "gpu:TYPE"),
     ({"gres_map": {"MI300X": "gpu:mi300x"}}, "", "--gpu-info MI300X=MEMORY_GB"),
     ({"sbatch_options": ["--output=/tmp/x"]}, "sbatch_options", "Coop sets --output"),
     ({"sbatch_options": ["--comment=a b"]}, "sbatch_options", "no spaces"),
     ({"gpu_info": {"A\x00": {"memory_gb": 40, "tflops": 250}}}, "gpu_info", "names no GPU model"),
     ({"gpu_info": {"A100": {"memory_gb": 40, "tflops": 1e6}}}, "gpu_info", "less than or equal")],
)  # fmt: skip
def test_pool_settings_are_checked(fields: dict[str, object], where: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        config(**fields)
    (err,) = info.value.errors()
    assert ".".join(str(p) for p in err["loc"]).startswith(where) and words in err["msg"]


def test_cli_parses_the_gres_map_and_gpu_info() -> None:
    assert parse_gres_map("RTX4090=gpu:rtx4090, A100=gpu:a100") == {"RTX4090": "gpu:rtx4090", "A100": "gpu:a100"}
    with pytest.raises(UserError, match="MODEL=GRES"):
        parse_gres_map("RTX4090:gpu")
    info = {"A100": {"memory_gb": 80, "compute_capability": 8.0, "tflops": 250}}
    assert parse_gpu_info(["A100=80GB,8.0,250"]) == info
    with pytest.raises(UserError):
        parse_gpu_info(["A100=eighty"])
