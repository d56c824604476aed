"""place(): constraints, best fit, order, caps, backfill, reasons; then seeded random invariants."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from coop.scheduler.feasibility import gpu_matches, nominal_gb, tier_matches
from coop.scheduler.model import CycleResult, JobView, MemberView, NodeView, Policy
from coop.scheduler.placement import describe, place
from tests.scheduler import CARDS, NOW, job, member, node

FAIR, FIFO = Policy(), Policy(fair_share=False)


def run(
    jobs: list[JobView], nodes: list[NodeView], members: Sequence[MemberView] = (), policy: Policy = FAIR
) -> CycleResult:
    return place(jobs, nodes, list(members), policy, NOW)


def where(result: CycleResult) -> dict[int, int]:
    return {p.job_id: p.node_id for p in result.placements}


def order(result: CycleResult) -> list[int]:
    return [p.job_id for p in result.placements]


# --- hard constraints -----------------------------------------------------------------------------


def test_24gb_request_never_on_a_12gb_card() -> None:
    small, big = node(1, "RTX3060"), node(2, "RTX4090")
    assert where(run([job(1, gpu_memory="24GB")], [small, big])) == {1: 2}
    result = run([job(1, gpu_memory="24GB")], [small, node(2, "RTX4090", busy=(0,))])
    assert result.placements == []
    assert result.waiting[1] == "waiting: no node has 1 GPU of 24 GB+ free; 1 node matches but is busy"


def test_two_gpu_job_only_where_two_matching_gpus_are_free() -> None:
    nodes = [node(1, "RTX4090", count=4, busy=(0, 1, 2)), node(2, "RTX3060", count=2), node(3, "RTX4090", count=2)]
    result = run([job(1, gpus=2, gpu_memory="24GB")], nodes)
    assert result.placements[0].node_id == 3 and result.placements[0].gpu_indices == (0, 1)


def test_mixed_machine_gives_the_matching_card() -> None:
    mixed = node(1, "RTX3060", "RTX4090", "RTX3060")
    result = run([job(1, gpu="RTX4090"), job(2, gpu_memory="8GB", age_s=1)], [mixed])
    by_job = {p.job_id: p.gpu_indices for p in result.placements}
    assert by_job == {1: (1,), 2: (0,)}  # the 8 GB job takes a 12 GB card, not the 24 GB one


def test_model_allow_list_and_compute_capability() -> None:
    nodes = [node(1, "RTX3090"), node(2, "RTX4090"), node(3, "A100"), node(4, "H100")]
    jobs = [job(1, gpu=["A100", "nvidia h100 80gb hbm3"], age_s=3), job(2, compute_capability="8.9+", age_s=2),
            job(3, gpu_memory="24GB..24GB", compute_capability="8.0..8.6", age_s=1)]  # fmt: skip
    assert where(run(jobs, nodes)) == {1: 3, 2: 2, 3: 1}  # job 2 best-fits the 24 GB 8.9 card, not the H100


def test_cpus_ram_and_tier() -> None:
    nodes = [node(1, "RTX4090", cpus=4, memory_gb=16), node(2, "RTX4090", cpus=32, memory_gb=128),
             node(3, "A100", tier="hpc")]  # fmt: skip
    assert where(run([job(1, cpus=8)], nodes)) == {1: 2}
    assert where(run([job(1, memory="64GB")], nodes)) == {1: 2}
    assert where(run([job(1, tier="hpc")], nodes)) == {1: 3}
    assert where(run([job(1, tier="consumer", gpu="A100")], nodes)) == {}


def test_free_cpus_and_ram_are_respected() -> None:
    busy = replace(node(1, "RTX3060", cpus=16), free_cpus=2, free_memory_gb=4.0)
    assert where(run([job(1, cpus=4)], [busy, node(2, "RTX4090")])) == {1: 2}
    assert where(run([job(1, memory="8GB")], [busy, node(2, "RTX4090")])) == {1: 2}
    assert where(run([job(1, cpus=2, memory="4GB")], [busy, node(2, "RTX4090")])) == {1: 1}


@pytest.mark.parametrize("state", ["paused", "draining", "reclaim"])
def test_unschedulable_nodes_get_nothing(state: str) -> None:
    flags: dict[str, Any] = {state: True}
    nodes = [node(1, "RTX4090", **flags), node(2, "RTX4090", online=False)]
    result = run([job(1), job(2, gpus=0)], nodes)
    assert result.placements == [] and set(result.waiting) == {1, 2}


# --- best fit -------------------------------------------------------------------------------------


def test_best_fit_prefers_the_smallest_card_that_fits() -> None:
    nodes = [node(1, "A100"), node(2, "RTX4090"), node(3, "RTX3060")]
    assert where(run([job(1, gpu_memory="8GB")], nodes)) == {1: 3}
    assert where(run([job(1, gpu_memory="16GB")], nodes)) == {1: 2}
    assert where(run([job(1, gpu_memory="40GB")], nodes)) == {1: 1}


def test_best_fit_leaves_the_large_node_free() -> None:
    nodes = [node(1, "RTX4090", count=4), node(2, "RTX4090", count=2), node(3, "RTX4090")]
    assert where(run([job(1)], nodes)) == {1: 3}
    assert where(run([job(1, gpus=2)], nodes)) == {1: 2}
    # two 1-GPU jobs and a 4-GPU job: the small ones must not break up the 4-GPU node
    result = run([job(1, age_s=3), job(2, age_s=2), job(3, gpus=4, age_s=1)], nodes)
    assert where(result) == {1: 3, 2: 2, 3: 1}


def test_best_fit_fills_a_partly_used_node_first() -> None:
    # one free GPU left on a busy 4-GPU node beats opening a fresh 2-GPU node (nothing left over)
    nodes = [node(1, "RTX4090", count=4, busy=(0, 1, 2)), node(2, "RTX4090", count=2)]
    result = run([job(1)], nodes)
    assert result.placements[0].node_id == 1 and result.placements[0].gpu_indices == (3,)


def test_best_fit_ties_break_on_the_smaller_node_then_the_lower_id() -> None:
    nodes = [node(5, "RTX4090", cpus=64), node(3, "RTX4090", cpus=16), node(4, "RTX3090", cpus=16)]
    assert where(run([job(1)], nodes)) == {1: 3}
    assert where(run([job(1)], [node(9, "RTX4090"), node(8, "RTX3090")])) == {1: 8}


def test_best_fit_ties_then_go_to_the_fastest_card() -> None:
    # equal memory and node size: the faster card ends the job sooner, within one class or across
    def fast(id: int, model: str, tflops: float) -> NodeView:
        return replace(node(id, model), tflops_per_gpu=tflops)

    assert where(run([job(1)], [fast(1, "RTX4090", 150.0), fast(2, "RTX4090", 165.0)])) == {1: 2}
    assert where(run([job(1)], [fast(1, "RTX3090", 71.0), fast(2, "RTX4090", 165.0)])) == {1: 2}
    # a smaller card still goes first, however fast the bigger one is
    assert where(run([job(1)], [fast(1, "RTX3060", 25.0), fast(2, "RTX4090", 165.0)])) == {1: 1}
    # a donor's own job, owner first, by the same rule
    mine = [replace(n, member_id=1) for n in (fast(1, "RTX3090", 71.0), fast(2, "RTX4090", 165.0))]
    assert where(place([job(1, member_id=1)], mine, [member(1)], Policy(), NOW)) == {1: 2}


def test_cpu_only_job_prefers_cpu_only_then_fewest_gpus_and_takes_no_gpu() -> None:
    nodes = [node(1, "RTX4090", count=4), node(2, "RTX4090"), node(3, count=0)]
    result = run([job(1, gpus=0, cpus=4)], nodes)
    assert result.placements[0].node_id == 3 and result.placements[0].gpu_indices == ()
    assert where(run([job(1, gpus=0, cpus=4)], nodes[:2])) == {1: 2}
    # a CPU job never uses up GPUs: both GPU jobs still fit on the one-GPU node... and the 4-GPU one
    assert where(run([job(1, gpus=0, age_s=2), job(2, age_s=1)], nodes[1:2])) == {1: 2, 2: 2}


def test_cpu_only_job_waits_when_cpus_are_gone() -> None:
    full = replace(node(1, count=0, cpus=8), free_cpus=2)
    result = run([job(1, gpus=0, cpus=4, age_s=2), job(2, gpus=0, cpus=2, age_s=1)], [full])
    assert where(result) == {2: 1}
    assert result.waiting[1] == "waiting: no node has 4 CPUs free; 1 node matches but is busy"


# --- order ----------------------------------------------------------------------------------------


def test_fair_share_lets_the_member_with_less_usage_go_first_fifo_does_not() -> None:
    members = [member(1, usage=100.0), member(2, usage=1.0)]
    jobs = [job(1, member_id=1, age_s=100), job(2, member_id=2, age_s=1)]
    nodes = [node(1, "RTX4090")]
    assert order(run(jobs, nodes, members)) == [2]
    assert order(run(jobs, nodes, members, FIFO)) == [1]


def test_share_divides_usage_and_running_gpus_count() -> None:
    nodes = [node(1, "RTX4090")]
    jobs = [job(1, member_id=1, age_s=100), job(2, member_id=2, age_s=1)]
    assert order(run(jobs, nodes, [member(1, usage=30, share=4), member(2, usage=10)])) == [1]  # 7.5 < 10
    assert order(run(jobs, nodes, [member(1, in_use=3), member(2, usage=2)])) == [2]  # 3 held GPU-hours > 2
    assert order(run(jobs, nodes, [member(1, in_use=3), member(2, usage=2)], Policy(running_weight_hours=0.5))) == [1]


def test_two_equal_members_interleave_within_one_cycle() -> None:
    jobs = [job(i, member_id=1, age_s=100 - i) for i in range(1, 5)] + [job(i, member_id=2) for i in range(5, 9)]
    nodes = [node(n, "RTX4090") for n in range(1, 5)]
    result = run(jobs, nodes, [member(1), member(2)])
    assert order(result) == [1, 5, 2, 6]
    assert order(run(jobs, nodes, [member(1), member(2)], FIFO)) == [1, 2, 3, 4]


def test_job_priority_then_age_within_a_member() -> None:
    jobs = [job(1, age_s=300, priority="low"), job(2, age_s=200), job(3, age_s=100, priority="high"), job(4, age_s=250)]
    assert order(run(jobs, [node(1, "RTX4090", count=4)])) == [3, 4, 2, 1]
    assert order(run(jobs, [node(1, "RTX4090", count=4)], policy=FIFO)) == [1, 4, 2, 3]  # FIFO: submit time only


def test_shortest_declared_limit_first_within_a_member_but_never_ahead_of_another_member() -> None:
    """Within a member: priority, then the shortest max_runtime (jobs without one last), then age.
    Members still take turns by usage: lab 2's short job does not jump lab 1's turn."""
    jobs = [
        job(1, age_s=500),  # no limit: after every job with one
        job(2, age_s=400, max_runtime_s=7200),
        job(3, age_s=300, max_runtime_s=600),
        job(4, age_s=200, max_runtime_s=600),  # same limit as 3: the older goes first
        job(5, age_s=100, max_runtime_s=86400, priority="high"),  # priority still comes first
    ]
    assert order(run(jobs, [node(1, "RTX4090", count=5)])) == [5, 3, 4, 2, 1]
    assert order(run(jobs, [node(1, "RTX4090", count=5)], policy=FIFO)) == [1, 2, 3, 4, 5]
    two = [job(1, member_id=1, age_s=50, max_runtime_s=3600), job(2, member_id=2, age_s=10, max_runtime_s=60)]
    members = [member(1), member(2, usage=5.0)]
    assert order(run(two, [node(1, "RTX4090")], members)) == [1]  # lab 1 has used less: its turn


def test_backfill_a_job_that_cannot_go_does_not_block_smaller_ones() -> None:
    jobs = [job(1, gpus=4, age_s=10), job(2, gpus=2, age_s=5), job(3, age_s=1)]
    result = run(jobs, [node(1, "RTX4090", count=4, busy=(0, 1)), node(2, "RTX4090")])
    assert where(result) == {2: 1, 3: 2}
    assert result.waiting[1] == "waiting: no node has 4 GPUs free; 1 node matches but is busy"


# --- caps -----------------------------------------------------------------------------------------


def test_member_gpu_cap_counts_running_and_this_cycle() -> None:
    nodes = [node(1, "RTX4090", count=8)]
    result = run([job(i, age_s=10 - i) for i in range(1, 5)], nodes, [member(1, cap=4, in_use=2)])
    assert order(result) == [1, 2]
    assert result.waiting == {3: "waiting: member at its GPU cap (4 of 4 in use)",
                              4: "waiting: member at its GPU cap (4 of 4 in use)"}  # fmt: skip


def test_cap_lets_a_smaller_job_through_and_cpu_jobs_ignore_it() -> None:
    jobs = [job(1, gpus=2, age_s=3), job(2, age_s=2), job(3, gpus=0, age_s=1)]
    result = run(jobs, [node(1, "RTX4090", count=4)], [member(1, cap=4, in_use=3)])
    assert set(where(result)) == {2, 3}
    assert result.waiting[1] == "waiting: member at its GPU cap (3 of 4 in use, this job needs 2)"
    over = run([job(1, gpus=8)], [node(1, "RTX4090", count=8)], [member(1, cap=4)])
    assert over.waiting[1] == "waiting: the job needs 8 GPUs but its member's GPU cap is 4"


# --- reasons --------------------------------------------------------------------------------------


def test_waiting_reasons_name_busy_paused_and_offline_nodes() -> None:
    nodes = [node(1, "RTX4090", count=2, busy=(0,)), node(2, "RTX4090", count=2, paused=True),
             node(3, "RTX3090", count=2, paused=True), node(4, "RTX4090", count=2, online=False),
             node(5, "RTX4090", count=2, draining=True), node(6, "RTX4090", count=2, reclaim=True),
             node(7, "RTX3060", count=2)]  # fmt: skip
    reason = run([job(1, gpus=2, gpu_memory="24GB")], nodes).waiting[1]
    assert reason == (
        "waiting: no node has 2 GPUs of 24 GB+ free; 1 node matches but is busy; "
        "2 matching nodes are paused; 1 matching node is in use by its owner; "
        "1 matching node is draining; 1 matching node is offline"
    )
    paused_only = run([job(1, gpus=2, gpu_memory="24GB")], nodes[1:3]).waiting[1]
    assert paused_only == "waiting: no node has 2 GPUs of 24 GB+ free; 2 matching nodes are paused"


def test_waiting_reason_for_a_job_nothing_registered_can_run() -> None:
    result = run([job(1, gpu="H100"), job(2, gpus=3)], [node(1, "RTX4090", count=2)])
    assert result.waiting[1] == "waiting: no registered GPU is a H100"
    assert result.waiting[2] == "waiting: 3 GPUs requested but the largest node has 2"
    assert run([job(1)], []).waiting[1] == "waiting: no node is registered yet"


def test_describe() -> None:
    assert describe(job(1, gpus=2, gpu=["RTX4090", "A100"], gpu_memory="16GB..48GB", compute_capability="8.0",
                        cpus=8, memory="64GB").resources) == (
        "2 GPUs (RTX4090 or A100) of 16..48 GB with compute capability 8+, 8 CPUs and 64 GB RAM"
    )  # fmt: skip
    assert describe(job(1, gpus=0).resources) == "1 CPU"


# --- purity and determinism -----------------------------------------------------------------------


def test_inputs_are_not_mutated_and_output_is_deterministic() -> None:
    nodes = [node(i, m, count=c) for i, (m, c) in enumerate([("RTX4090", 2), ("A100", 4), ("RTX3060", 1)] * 3)]
    jobs = [job(i, member_id=i % 3, gpus=i % 3, age_s=i) for i in range(20)]
    members = [member(0), member(1, usage=5), member(2, cap=3)]
    before = copy.deepcopy(nodes)
    first = run(jobs, nodes, members)
    assert nodes == before
    assert run(jobs, nodes, members) == first
    rnd = random.Random(3)
    shuffled_jobs, shuffled_nodes = jobs[:], nodes[:]
    rnd.shuffle(shuffled_jobs)
    rnd.shuffle(shuffled_nodes)
    assert run(shuffled_jobs, shuffled_nodes, members[::-1]) == first


# --- seeded random invariants ---------------------------------------------------------------------


def _random_case(seed: int) -> tuple[list[JobView], list[NodeView], list[MemberView]]:
    rnd = random.Random(seed)
    models = list(CARDS)
    nodes = []
    for i in range(rnd.randint(1, 25)):
        count = rnd.choice([0, 1, 1, 2, 4, 8])
        cpus = rnd.choice([4, 8, 32])
        if count > 1 and rnd.random() < 0.15:
            n = node(i, *rnd.choices(models, k=count), cpus=cpus, memory_gb=cpus * 4.0)
        else:
            n = node(i, rnd.choice(models), count=count, cpus=cpus, memory_gb=cpus * 4.0,
                     tier=rnd.choice(["consumer", "consumer", "hpc"]))  # fmt: skip
        n.free_gpus = {g for g in n.free_gpus if rnd.random() < 0.7}
        n.free_cpus = rnd.randint(0, cpus)
        n.free_memory_gb = rnd.uniform(0, n.memory_gb)
        n.online, n.paused = rnd.random() > 0.1, rnd.random() < 0.1
        nodes.append(n)
    members = [member(m, share=rnd.choice([0.5, 1, 2]), cap=rnd.choice([None, 2, 6]), in_use=rnd.randint(0, 2),
                      usage=rnd.uniform(0, 20)) for m in range(4)]  # fmt: skip
    jobs = []
    for j in range(rnd.randint(1, 60)):
        res: dict[str, Any] = {"gpus": rnd.choice([0, 1, 1, 1, 2, 4, 8]), "cpus": rnd.choice([1, 2, 4, 16])}
        if res["gpus"]:
            if rnd.random() < 0.5:
                res["gpu_memory"] = rnd.choice(["8GB", "16GB+", "24GB", "40GB..80GB", "12GB..24GB"])
            if rnd.random() < 0.2:
                res["gpu"] = rnd.sample(models, rnd.randint(1, 2))
            if rnd.random() < 0.2:
                res["compute_capability"] = rnd.choice(["8.0", "8.9+", "8.0..8.6"])
        if rnd.random() < 0.3:
            res["memory"] = rnd.choice(["8GB", "32GB", "100GB"])
        if rnd.random() < 0.2:
            res["tier"] = rnd.choice(["consumer", "hpc"])
        jobs.append(job(j, member_id=rnd.randrange(5), priority=rnd.choice(["low", "normal", "high"]),
                        age_s=rnd.uniform(0, 1000), **res))  # fmt: skip
    return jobs, nodes, members


def _fits_now(j: JobView, n: NodeView) -> bool:
    res = j.resources
    if not n.schedulable or not tier_matches(res, n) or n.free_cpus < res.cpus:  # type: ignore[arg-type]
        return False
    if n.free_memory_gb + 1e-9 < (res.memory_gb or 0.0):
        return False
    return sum(1 for i in n.free_gpus if gpu_matches(res, n.gpus[i])) >= res.gpus


def _best_fit_rank(j: JobView, n: NodeView) -> tuple[object, ...]:
    """The documented rule, written out slowly: leftover matching GPUs, spare memory, node size, id."""
    res = j.resources
    size = (len(n.gpus), n.cpus, n.memory_gb)
    if not res.gpus:
        return (size, n.id)
    free = sorted((nominal_gb(n.gpus[i].memory_gb), i) for i in n.free_gpus if gpu_matches(res, n.gpus[i]))
    spare = sum(m for m, _ in free[: res.gpus]) / res.gpus
    return (len(free) - res.gpus, spare, size, n.id)


@pytest.mark.parametrize("seed", range(60))
def test_random_pools_keep_every_invariant(seed: int) -> None:
    jobs, nodes, members = _random_case(seed)
    result = run(jobs, nodes, members)
    by_job, by_node, by_member = {j.id: j for j in jobs}, {n.id: n for n in nodes}, {m.id: m for m in members}
    assert sorted([p.job_id for p in result.placements] + list(result.waiting)) == sorted(by_job)
    assert all(r.startswith("waiting: ") for r in result.waiting.values())
    state = copy.deepcopy(by_node)  # replay the placements in order against the documented rules
    held = {m.id: m.gpus_in_use for m in members}
    for p in result.placements:
        j, n = by_job[p.job_id], state[p.node_id]
        assert _fits_now(j, n), (p, j.resources)
        feasible = [m for m in state.values() if _fits_now(j, m)]
        assert min(feasible, key=lambda m: _best_fit_rank(j, m)).id == n.id
        assert len(p.gpu_indices) == len(set(p.gpu_indices)) == j.resources.gpus
        assert set(p.gpu_indices) <= n.free_gpus  # never a GPU twice, never a busy one
        assert all(gpu_matches(j.resources, n.gpus[i]) for i in p.gpu_indices)
        n.free_gpus -= set(p.gpu_indices)
        n.free_cpus -= j.resources.cpus
        n.free_memory_gb -= j.resources.memory_gb or 0.0
        held[j.member_id] = held.get(j.member_id, 0) + j.resources.gpus
        cap = by_member[j.member_id].gpu_cap if j.member_id in by_member else None
        assert cap is None or held[j.member_id] <= cap
    for job_id, reason in result.waiting.items():  # backfill: nothing left waiting could go now
        if "GPU cap" not in reason:
            assert not any(_fits_now(by_job[job_id], n) for n in state.values()), reason
    shuffled = jobs[::-1]
    assert run(shuffled, nodes[::-1], members) == result


def test_equal_usage_the_member_with_the_higher_balance_goes_first() -> None:
    from coop.scheduler.feasibility import GpuShape
    from coop.scheduler.model import JobView, MemberView, NodeView, Policy
    from coop.scheduler.placement import place
    from coop.spec import Resources

    node = NodeView(
        id=1,
        name="n",
        member_id=9,
        tier="consumer",
        cpus=8,
        memory_gb=64,
        gpus=(GpuShape("RTX4090", 24, 8.9),),
        free_gpus={0},
        free_cpus=8,
        free_memory_gb=64,
    )
    res = Resources(gpus=1)
    jobs = [
        JobView(id=1, member_id=1, resources=res, priority="normal", submitted_at=1.0, preemptible=True),
        JobView(id=2, member_id=2, resources=res, priority="normal", submitted_at=2.0, preemptible=True),
    ]
    for rich, expected in ((1, 1), (2, 2)):
        members = [
            MemberView(
                id=m, share=1, gpu_cap=None, gpus_in_use=0, usage_gpu_hours=0, balance=100.0 if m == rich else 0.0
            )
            for m in (1, 2)
        ]
        result = place(jobs, [node], members, Policy(), now=10.0)
        assert [p.job_id for p in result.placements] == [expected]


def test_a_donors_job_goes_on_its_own_free_node_before_anyones_turn() -> None:
    mine, spare = node(1, "RTX4090", member_id=1), node(2, "RTX4090", count=2, member_id=3)
    members = [member(1, usage=500.0), member(2, usage=0.0)]  # member 2 goes first by fair share
    jobs = [job(10, member_id=2, age_s=60), job(11, member_id=1), job(12, member_id=2, age_s=30)]
    placed = {p.job_id: p.node_id for p in place(jobs, [mine, spare], members, Policy(), NOW).placements}
    assert placed == {11: 1, 10: 2, 12: 2}  # best fit alone would put job 10 on node 1
    fifo = {p.job_id: p.node_id for p in place(jobs, [mine, spare], members, Policy(fair_share=False), NOW).placements}
    assert fifo == {10: 1, 12: 2, 11: 2}


def test_a_donors_own_job_takes_its_smallest_node_that_fits_keeping_the_wide_one_for_wide_jobs() -> None:
    # node 1 (two GPUs, one busy) and node 2 (one GPU) both leave no GPU over: the smaller node goes
    # first, so the two-GPU node can come free whole for the donor's two-GPU jobs
    wide, small = node(1, "RTX4090", count=2, member_id=1, busy=(0,)), node(2, "RTX4090", member_id=1)
    result = place([job(10, member_id=1)], [wide, small], [member(1)], Policy(), NOW)
    assert where(result) == {10: 2}


def test_an_unapproved_node_takes_nothing_and_the_reason_says_it_awaits_approval() -> None:
    waiting, approved = node(1, "RTX4090", count=2, approved=False), node(2, "RTX3060", count=2)
    result = run([job(1, gpu_memory="24GB"), job(2, gpus=0, cpus=1)], [waiting, approved])
    assert where(result) == {2: 2}  # even a CPU job that fits the unapproved node goes elsewhere
    assert result.waiting[1] == (
        "waiting: no node has 1 GPU of 24 GB+ free; "
        "1 matching node awaits an admin's approval (coop admin node approve ID)"
    )
    assert where(run([job(1, gpu_memory="24GB")], [replace(waiting, approved=True), approved])) == {1: 1}
