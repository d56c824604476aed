"""Gang jobs in the replay: a job wider than one node runs over several nodes at once (the policy's own
gang placement), stops as a whole, and a gang wider than the cluster is refused; checked by hand on
small traces and by invariants on random ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coop.cli.main import app
from coop.sim.engine import Options, Outcome, Simulation, largest_gang, replay
from coop.sim.inputs import SimJob, SimNode, read_jobs, read_nodes, spread
from coop.sim.report import simulate, summarise
from coop.sim.synthetic import generate
from tests.sim.helpers import JOBS_HEADER, NODES_HEADER, jct, run, write

H = 3600.0


def _spans(out: Outcome, member: str) -> list[tuple[float, float, int]]:
    return sorted((start, end, gpus) for m, start, end, _, gpus in out.spans if m == member)


def test_a_job_wider_than_any_node_runs_as_one_gang_over_several_nodes(tmp_path: Path) -> None:
    nodes = ["n1,a,4,A100,80,100,", "n2,b,4,A100,80,100,", "s,c,1,RTX4090,24,100,"]
    out = run(tmp_path, ["0,3600,8,c,gang,true", "0,600,1,c,small,true"], nodes, policy="fifo")
    # 8 GPUs where the widest node has 4: 2 nodes of 4, started together on n1 and n2
    gang = out.jobs[0]
    assert (gang.nodes, gang.per_node, gang.total_gpus) == (2, 4, 8)
    assert jct(out) == {"gang": H, "small": 600}
    assert _spans(out, "c") == [(0, 600, 1), (0, H, 4), (0, H, 4)]  # one span per rank
    assert out.busy_gpu_s == 8 * H + 600
    assert out.used_credits["c"] == pytest.approx(8 + 1 / 6)  # GPU-hours at 100 TFLOP/s, each rank's
    assert out.balance["a"] == pytest.approx(4.0) and out.balance["b"] == pytest.approx(4.0)  # each rank's donor


def test_a_gang_runs_at_the_pace_of_its_slowest_card(tmp_path: Path) -> None:
    nodes = ["fast,a,2,A100,80,100,", "slow,b,2,A100,80,50,"]
    out = run(tmp_path, ["0,3600,4,c,gang,true"], nodes)
    assert jct(out) == {"gang": 2 * H}  # the fast rank waits for the slow one


def test_the_trace_may_say_how_many_nodes_a_job_spans(tmp_path: Path) -> None:
    jobs = write(tmp_path, "jobs.csv", "submit_time,duration,gpus,member,nodes",
                 ["0,3600,12,a,3", "0,3600,4,a,2", "0,3600,3,a,", "0,3600,5,a,2"])  # fmt: skip
    nodes = write(tmp_path, "nodes.csv", NODES_HEADER, [f"n{i},b,4,A100,80,100," for i in range(1, 6)])
    read = read_jobs(jobs)
    assert [j.nodes for j in read] == [3, 2, None, 2]
    spread_jobs = [spread(j, read_nodes(nodes)) for j in read]
    # 12 on 3 nodes: 4 each; 4 on 2: 2 each (it would fit one node, but the trace says 2); 3 fits one
    # node; 5 on 2: 3 each, 6 GPUs held in all
    assert [(j.nodes, j.per_node, j.total_gpus) for j in spread_jobs] == [(3, 4, 12), (2, 2, 4), (1, 3, 3), (2, 3, 6)]
    out = replay(read, read_nodes(nodes), Options(policy="fifo"))
    assert out.refused == {}
    # 12 on 3 nodes and 4 on 2 more fill the 5 nodes (the 4-GPU gang on two half-free nodes is not
    # possible: each has 0 left), so the rest wait for the first hour
    assert {j.name: o.first_start for j in out.jobs if (o := out.outcome[j.id])} == {
        "job-1": 0,
        "job-2": 0,
        "job-3": H,
        "job-4": H,
    }


def test_a_gang_waits_for_all_its_nodes_while_narrow_jobs_backfill(tmp_path: Path) -> None:
    nodes = ["n1,a,2,A100,80,100,", "n2,b,2,A100,80,100,"]
    jobs = ["0,3600,1,c,first,true", "10,600,4,d,gang,true", "20,600,1,e,small,true"]
    out = run(tmp_path, jobs, nodes, policy="fifo")
    # the gang needs both nodes whole: never half started; the 1-GPU job behind it runs at once
    assert out.outcome[2].first_start == H and out.outcome[3].first_start == 20
    assert jct(out) == {"first": H, "gang": H - 10 + 600, "small": 600}


def test_an_owner_taking_back_one_ranks_node_stops_the_whole_gang_which_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    nodes = ["n1,a,2,A100,80,100,1000-2000", "n2,b,2,A100,80,100,"]
    jobs = ["0,3600,4,c,gang,true", "1500,100,2,d,filler,true"]
    out = run(tmp_path, jobs, nodes, policy="fifo", checkpoint_s=300)
    # at 1000 n1's owner takes it back: both ranks stop (checkpoints at 300, 600, 900 keep 900 s);
    # n2 is free meanwhile (the filler runs there 1500..1600); at 2000 the gang restarts, 2700 s to go
    assert jct(out) == {"gang": 2000 + 2700, "filler": 100}
    assert out.preemptions == {"owner": 1} and out.gang_preemptions == {"owner": 1}
    assert out.lost_gpu_s == {"owner": 100 * 4}  # 100 s since the last checkpoint, on all 4 GPUs
    assert _spans(out, "c") == [(0, 1000, 2), (0, 1000, 2), (2000, 4700, 2), (2000, 4700, 2)]
    assert out.outcome[1].attempts == 2 and out.outcome[1].preemptions == 1
    report = summarise(out, timing=False)
    assert report["gangs"] == {
        "jobs": 1, "gpus": 4, "started": 1, "completed": 1, "wait_s_mean": 0.0, "jct_s_mean": 4700.0,
        "preemptions": {"owner": 1}, "jobs_preempted": 1,
    }  # fmt: skip
    assert report["by_width"]["4"]["nodes"] == [2]


def test_gangs_wider_than_the_cluster_or_than_a_job_may_span_are_refused(tmp_path: Path) -> None:
    nodes = [f"n{i},a,1,RTX4090,24,100," for i in range(1, 66)]  # 65 one-GPU nodes
    jobs = ["0,60,64,a,widest,true", "0,60,65,a,too-many-nodes,true", "0,60,6,a,fits,true"]
    out = run(tmp_path, jobs, nodes, policy="fifo")
    # job.yaml allows 64 nodes: the coordinator refuses 65 as it reads the spec, room or not
    assert out.refused == {
        2: "asks 65 GPUs; the largest gang this cluster can make is 64 GPUs (64 nodes of 1; a job spans at most 64 "
        "nodes)"
    }
    assert out.refused_reason == {2: "nodes"}
    assert jct(out) == {"widest": 60, "fits": 120}  # 6 nodes more than the 1 left: after the widest
    nodes = ["a,a,2,RTX4090,24,100,", "b,b,2,RTX4090,24,100,", "c,c,1,RTX4090,24,100,"]
    out = run(tmp_path, ["0,60,6,a,three-nodes,true"], nodes, policy="fifo")
    # every rank of a gang has as many GPUs: 2 nodes of 2 beat 3 nodes of 1
    assert out.refused == {1: "asks 6 GPUs; the largest gang this cluster can make is 4 GPUs (2 nodes of 2)"}


def test_a_gang_no_wider_than_the_cluster_but_of_a_shape_it_cannot_hold_keeps_the_coordinators_message(
    tmp_path: Path,
) -> None:
    nodes = ["a,a,8,A100,80,300,", "b,b,8,A100,80,300,"]
    # the trace says 3 nodes of 4: 12 GPUs fit in the cluster's 16, but not on 3 machines
    path = write(tmp_path, "jobs.csv", "submit_time,duration,gpus,member,nodes", ["0,60,12,a,3", "0,60,12,a,2"])
    out = replay(read_jobs(path), read_nodes(write(tmp_path, "nodes.csv", NODES_HEADER, nodes)), Options())
    assert out.refused == {1: "3 nodes requested but only 2 registered nodes can each hold what one node needs"}
    assert out.refused_reason == {1: "nodes"} and out.outcome[2].finish is not None


def test_a_gang_is_spread_by_the_widest_node_that_meets_its_models_and_memory() -> None:
    nodes = [
        SimNode(1, "big", "a", 8, "A100", 80.0, 280.0, "consumer", ()),
        SimNode(2, "pair", "a", 2, "RTX4090", 24.0, 165.0, "consumer", ()),
    ]
    any_card = SimJob(1, "j", "a", 0.0, 60.0, 8, None, (), True)
    assert spread(any_card, nodes).nodes == 1
    assert spread(SimJob(2, "j", "a", 0.0, 60.0, 8, None, ("RTX4090",), True), nodes).nodes == 4
    assert spread(SimJob(3, "j", "a", 0.0, 60.0, 9, 40.0, (), True), nodes).nodes == 2  # 40 GB: the A100s only
    assert spread(SimJob(4, "j", "a", 0.0, 60.0, 8, None, ("H100",), True), nodes).nodes == 1  # none: refused as gpu


def test_alone_a_job_keeps_the_shape_it_has_in_the_pool(tmp_path: Path) -> None:
    rows = ["0,3600,8,a,wide,true", "0,3600,16,a,gang,true", "0,3600,1,b,other,true"]
    jobs = write(tmp_path, "jobs.csv", JOBS_HEADER, rows)
    nodes = write(tmp_path, "nodes.csv", NODES_HEADER,
                  ["a1,a,8,A100,80,100,", "a2,a,4,A100,80,100,", "b1,b,8,A100,80,100,"])  # fmt: skip
    report, out = simulate(read_jobs(jobs), read_nodes(nodes), Options(policy="fifo"), timing=False)
    assert [j.nodes for j in out.jobs] == [1, 2, 1]  # in the pool: 8 on one node, 16 over a1 and b1
    # alone, a has one 8-GPU node: its 8-GPU job runs there, the 2-node gang cannot (it would not
    # become 4 nodes of 4 on a's smaller nodes: that would be another job)
    a = report["members"]["a"]
    assert (a["jobs_alone"], a["pool_only_done"], a["jct_alone_s"]) == (1, 1, H)


class Checked(Simulation):
    """A replay that checks, after every cycle, that GPUs are neither double-booked nor lost."""

    cycles = 0
    gang_runs: set[int] = set()

    def _cycle(self, t: float) -> None:
        super()._cycle(t)
        self.cycles += 1
        held: dict[int, set[int]] = {node_id: set() for node_id in self.views}
        by_member: dict[int, int] = {}
        for job_id, attempt in self.running.items():
            job = attempt.job
            assert len(attempt.ranks) == (job.nodes or 1), "a gang runs whole or not at all"
            assert len({rank.node.id for rank in attempt.ranks}) == len(attempt.ranks), "one rank per node"
            if len(attempt.ranks) > 1:
                self.gang_runs.add(job_id)
            for rank in attempt.ranks:
                assert len(rank.indices) == job.per_node and rank.view.nodes == len(attempt.ranks)
                assert not held[rank.node.id] & set(rank.indices), "a GPU is double-booked"
                held[rank.node.id] |= set(rank.indices)
            by_member[attempt.view.member_id] = by_member.get(attempt.view.member_id, 0) + job.total_gpus
        for node_id, view in self.views.items():
            assert not view.free_gpus & held[node_id] and view.free_gpus | held[node_id] == set(range(len(view.gpus)))
        assert self.busy == sum(len(h) for h in held.values())  # GPUs conserved
        assert all(self.held[mid] == by_member.get(mid, 0) for mid in range(1, len(self.held)))
        waiting = {i for q in self.groups.values() for i in q.live}
        assert not waiting & set(self.running) and len(waiting) == self.waiting


@pytest.mark.parametrize("policy", ["coop", "fifo"])
def test_gangs_in_a_random_overloaded_trace_never_double_book_or_half_run(policy: str) -> None:
    jobs, nodes = generate(jobs=300, members=4, gpus=40, load=2.5, seed=1, offline=0.6, wide=0.08)
    sim = Checked(jobs, nodes, Options(policy=policy, checkpoint_s=600))
    out = sim.run()
    gangs = [j for j in out.jobs if (j.nodes or 1) > 1 and j.id not in out.refused]
    assert len(gangs) >= 10 and sim.cycles > 300
    assert all(out.outcome[j.id].finish is not None for j in gangs)
    assert sim.gang_runs == {j.id for j in gangs}
    assert {out.refused_reason[i] for i in out.refused} == {"nodes"}  # the widest are wider than the pool
    busy = sum(gpus * (end - start) for _, start, end, _, gpus in out.spans)
    assert busy == pytest.approx(out.busy_gpu_s)
    if policy == "coop":
        assert sum(out.gang_preemptions.values()) > 0  # owners took back nodes gang ranks ran on


def _gang_figures(report: dict[str, Any]) -> tuple[int, int]:
    return report["gangs"]["jobs"], report["gangs"]["completed"]


def test_generate_and_simulate_wide_jobs_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(app, ["simulate", "generate", "--out", str(tmp_path), "--jobs", "150", "--members", "4",
                               "--gpus", "40", "--seed", "4", "--wide", "0.1"])  # fmt: skip
    assert made.exit_code == 0, made.output
    args = ["simulate", "--trace", str(tmp_path / "jobs.csv"), "--cluster", str(tmp_path / "nodes.csv"), "--no-alone"]
    table = runner.invoke(app, [*args, "--policy", "both", "--no-timing"])
    assert table.exit_code == 0, table.output
    assert "gang jobs (over several nodes)" in table.stdout and " nodes)" in table.stdout  # e.g. "16 (2 nodes)"
    assert "each stops the whole gang" in table.stdout
    reports = json.loads(runner.invoke(app, [*args, "--policy", "both", "--json", "--no-timing"]).stdout)
    jobs, done = _gang_figures(reports["coop"])
    assert jobs > 0 and done == jobs == _gang_figures(reports["fifo"])[0]


def test_the_largest_gang_gives_every_node_as_many_gpus_on_nodes_that_meet_the_job() -> None:
    def node(i: int, gpus: int, model: str = "A100") -> SimNode:
        return SimNode(i, f"n{i}", "a", gpus, model, 80.0, 300.0, "consumer", ())

    def job(gpus: int, models: tuple[str, ...] = ()) -> SimJob:
        return SimJob(1, "j", "a", 0.0, 60.0, gpus, None, models, True)

    mixed = [node(1, 8), node(2, 8), node(3, 4), node(4, 4), node(5, 4, "RTX4090")]
    assert largest_gang(job(1), mixed) == (5, 4)  # 20 GPUs: more than 2 nodes of 8 or all 28 unevenly
    assert largest_gang(job(1, ("A100",)), mixed) == (2, 8)  # 16 beats 4 nodes of 4
    assert largest_gang(job(1, ("H100",)), mixed) == (0, 0)
    assert largest_gang(job(1), [node(i, 1) for i in range(100)]) == (64, 1)  # a job spans at most 64 nodes
