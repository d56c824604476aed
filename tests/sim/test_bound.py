"""The clairvoyant reference of ``bench/sim_targets.py --bound``: what it replays is what its doc says
(one queue, shortest true run time first, no job stopped by its declared limit), so the figure it
prints is the bound it claims to be."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from coop.sim.engine import Options, replay
from coop.sim.inputs import read_jobs, read_nodes
from tests.sim.helpers import JOBS_HEADER, NODES_HEADER, write

ROOT = Path(__file__).resolve().parents[2]
OVERLOADED = ROOT / "tests/data/sim/overloaded"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_targets", ROOT / "bench/sim_targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bound_is_one_members_queue_with_limits_no_run_reaches() -> None:
    jobs, nodes = read_jobs(OVERLOADED / "jobs.csv"), read_nodes(OVERLOADED / "nodes.csv")
    one, owned = bench().bound_inputs(jobs, nodes)
    assert {j.member for j in one} == {n.member for n in owned} == {"all"}
    slowest = min(n.tflops for n in nodes)
    assert all(j.max_runtime is not None and j.max_runtime > j.duration * 100 / slowest for j in one)
    out = replay(one, owned, Options(policy="coop"))
    assert not any(o.failed for o in out.outcome.values())  # no declared limit ever stops a run
    assert all(o.finish is not None for o in out.outcome.values())


def test_the_bound_runs_the_shortest_job_first(tmp_path: Path) -> None:
    """Three jobs of three members wait for one GPU: FIFO runs them in submit order, the bound by
    their true length, whoever submitted them."""
    jobs = read_jobs(write(tmp_path, "jobs.csv", JOBS_HEADER, [
        "0,600,1,a,busy,true", "10,7200,1,b,long,true", "20,3600,1,c,middle,true", "30,60,1,a,short,true",
    ]))  # fmt: skip
    nodes = read_nodes(write(tmp_path, "nodes.csv", NODES_HEADER, ["n1,a,1,RTX4090,24,100,"]))
    one, owned = bench().bound_inputs(jobs, nodes)

    def order(out: object) -> list[str]:
        runs = out.outcome  # type: ignore[attr-defined]
        return [j.name for j in sorted(out.jobs, key=lambda j: runs[j.id].first_start)]  # type: ignore[attr-defined]

    assert order(replay(jobs, nodes, Options(policy="fifo"))) == ["busy", "long", "middle", "short"]
    assert order(replay(one, owned, Options(policy="coop"))) == ["busy", "short", "middle", "long"]
