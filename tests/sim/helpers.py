"""Small CSV traces written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

from coop.sim.engine import Options, Outcome, replay
from coop.sim.inputs import read_jobs, read_nodes

JOBS_HEADER = "submit_time,duration,gpus,member,name,preemptible"
NODES_HEADER = "name,member,gpus,gpu_model,gpu_memory,tflops,offline"


def write(folder: Path, name: str, header: str, rows: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def run(folder: Path, jobs: list[str], nodes: list[str], policy: str = "coop", checkpoint_s: float = 0.0) -> Outcome:
    job_file = write(folder, "jobs.csv", JOBS_HEADER, jobs)
    node_file = write(folder, "nodes.csv", NODES_HEADER, nodes)
    return replay(read_jobs(job_file), read_nodes(node_file), Options(policy=policy, checkpoint_s=checkpoint_s))


def jct(out: Outcome) -> dict[str, float]:
    """Completion time minus submit time, by job name."""
    return {j.name: o.finish - j.submit for j in out.jobs if (o := out.outcome[j.id]).finish is not None}
