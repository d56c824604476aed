"""preemptions(): owner first, then reclaim by balance, never thrashing."""

from __future__ import annotations

import copy
import random

import pytest

from coop.scheduler.feasibility import gpu_matches
from coop.scheduler.model import JobView, MemberView, NodeView, Policy, Preemption, RunningView, service_band
from coop.scheduler.preemption import preemptions
from tests.scheduler import NOW, job, member, node, running

MIN = 60.0
LAB_A, LAB_B, LAB_C = 1, 2, 3
MEMBERS = [member(LAB_A, balance=12.0, name="lab-a"), member(LAB_B, balance=-3.5, name="lab-b"),
           member(LAB_C, balance=-8.0, name="lab-c")]  # fmt: skip


DEFAULT = Policy()


def plan(
    run: list[RunningView],
    pending: list[JobView],
    nodes: list[NodeView],
    members: list[MemberView] = MEMBERS,
    policy: Policy = DEFAULT,
) -> list[Preemption]:
    return preemptions(run, pending, nodes, members, policy, NOW)


def victims(result: list[Preemption]) -> list[int]:
    return [p.job_id for p in result]


# --- owner first ----------------------------------------------------------------------------------


def test_owner_reclaim_preempts_every_guest_and_spares_the_donor() -> None:
    donor = node(
        1, "RTX4090", count=4, member_id=LAB_A, reclaim=True, reclaim_reason="a GPU process Coop did not start"
    )
    run = [running(10, LAB_A, 1, (0,)), running(11, LAB_B, 1, (1,), preemptible=False, ran_s=5),
           running(12, LAB_C, 1, (2, 3))]  # fmt: skip
    why = "preempted: node node-1 is reclaimed by its owner (a GPU process Coop did not start)"
    assert plan(run, [], [donor]) == [Preemption(11, 1, why, "owner"), Preemption(12, 1, why, "owner")]


def test_no_owner_preemption_without_the_reclaim_flag() -> None:
    nodes = [node(1, "RTX4090", member_id=LAB_A, paused=True), node(2, "RTX4090", member_id=LAB_A)]
    assert plan([running(11, LAB_B, 1), running(12, LAB_B, 2)], [], nodes) == []


def test_the_owners_waiting_job_takes_its_own_node_back_from_the_fewest_youngest_guests() -> None:
    mine = node(1, "RTX4090", count=4, member_id=LAB_A, busy=(0, 1, 2, 3))
    other = node(2, "RTX4090", count=2, member_id=LAB_B, busy=(0, 1))
    run = [running(10, LAB_A, 1, (0,)), running(11, LAB_B, 1, (1,), ran_s=60),
           running(12, LAB_C, 1, (2,), ran_s=30, preemptible=False), running(13, LAB_C, 1, (3,), ran_s=7200),
           running(14, LAB_C, 2, (0, 1), ran_s=5)]  # fmt: skip
    result = plan(run, [job(1, member_id=LAB_A, gpus=2)], [mine, other])
    why = "preempted: lab-a needs its own node node-1 for its job 1"
    # at once, on its own node only; preemptible guests before the one that is not, youngest first
    assert result == [Preemption(11, 1, why, "owner", for_job_id=1), Preemption(13, 1, why, "owner", for_job_id=1)]


def test_the_owner_takes_nothing_when_its_job_fits_now_or_its_node_cannot_hold_it() -> None:
    mine = node(1, "RTX4090", count=2, member_id=LAB_A, busy=(0, 1))
    run = [running(11, LAB_B, 1, (0,)), running(12, LAB_C, 1, (1,))]
    free = node(2, "RTX4090", count=2, member_id=LAB_B)
    assert plan(run, [job(1, member_id=LAB_A)], [mine, free]) == []  # it goes on node 2 now
    assert plan(run, [job(1, member_id=LAB_A, gpus=4)], [mine]) == []  # node 1 never holds 4 GPUs
    assert plan(run, [job(1, member_id=LAB_A, gpu="A100")], [mine]) == []  # nor an A100
    assert plan(run, [job(1, member_id=LAB_A)], [mine], policy=Policy(fair_share=False)) == []  # FIFO baseline


def test_a_guest_already_stopping_makes_the_room_without_a_new_victim() -> None:
    mine = node(1, "RTX4090", count=2, member_id=LAB_A, busy=(0, 1))
    stopping = RunningView(11, LAB_B, 1, 1, True, NOW - 60, (0,), 1, stopping=True)
    run = [stopping, running(12, LAB_C, 1, (1,), ran_s=5)]
    assert plan(run, [job(1, member_id=LAB_A)], [mine]) == []
    assert victims(plan(run, [job(1, member_id=LAB_A, gpus=2)], [mine])) == [12]


def test_owner_first_room_is_held_for_one_job_and_not_reclaimed_again() -> None:
    mine = node(1, "RTX4090", count=2, member_id=LAB_A, busy=(0, 1))
    run = [running(11, LAB_B, 1, (0,)), running(12, LAB_C, 1, (1,))]
    waiting = [job(1, member_id=LAB_A, age_s=3600), job(2, member_id=LAB_A, age_s=3500)]
    result = plan(run, waiting, [mine])
    assert [(p.job_id, p.for_job_id) for p in result] == [(11, 1), (12, 2)]


# --- reclaim by balance ---------------------------------------------------------------------------


def _full_node(id: int = 1, count: int = 1, model: str = "RTX4090") -> NodeView:
    return node(id, model, count=count, busy=tuple(range(count)), member_id=99)


def test_positive_balance_reclaims_from_negative_balance() -> None:
    result = plan(
        [running(20, LAB_B, 1, ran_s=20 * MIN)], [job(1, member_id=LAB_A, age_s=11 * MIN + 5)], [_full_node()]
    )
    assert result == [
        Preemption(20, 1, "reclaimed by lab-a (balance +12.0) from lab-b (balance -3.5) after lab-a waited 11 min",
                   "reclaim", for_job_id=1)
    ]  # fmt: skip


def test_reclaim_waits_for_the_wait_threshold_and_the_victims_min_runtime() -> None:
    nodes = [_full_node()]
    assert plan([running(20, LAB_B, 1)], [job(1, member_id=LAB_A, age_s=9 * MIN)], nodes) == []
    assert plan([running(20, LAB_B, 1, ran_s=9 * MIN)], [job(1, member_id=LAB_A, age_s=3600)], nodes) == []
    quick = Policy(reclaim_wait_s=60, min_runtime_s=60)
    assert victims(plan([running(20, LAB_B, 1, ran_s=2 * MIN)], [job(1, member_id=LAB_A, age_s=2 * MIN)], nodes,
                        policy=quick)) == [20]  # fmt: skip


def test_only_preemptible_jobs_of_negative_balance_members_by_positive_balance_members() -> None:
    nodes, waiting = [_full_node()], [job(1, member_id=LAB_A, age_s=3600)]
    assert plan([running(20, LAB_B, 1, preemptible=False)], waiting, nodes) == []
    even = [member(LAB_A, balance=12.0), member(LAB_B, balance=0.0)]
    assert plan([running(20, LAB_B, 1)], waiting, nodes, members=even) == []
    broke = [member(LAB_A, balance=0.0), member(LAB_B, balance=-3.5)]
    assert plan([running(20, LAB_B, 1)], waiting, nodes, members=broke) == []


def test_no_reclaim_when_the_job_fits_now_or_never_would() -> None:
    nodes = [_full_node(), node(2, "RTX3060")]
    run = [running(20, LAB_B, 1)]
    assert plan(run, [job(1, member_id=LAB_A, age_s=3600)], nodes) == []  # the free 3060 will take it
    assert victims(plan(run, [job(1, member_id=LAB_A, age_s=3600, gpu_memory="24GB")], nodes)) == [20]
    assert plan(run, [job(1, member_id=LAB_A, age_s=3600, gpu_memory="40GB")], nodes) == []  # a 4090 won't do
    assert plan(run, [job(1, member_id=LAB_A, age_s=3600, gpus=2)], nodes) == []  # one GPU freed is not two


def test_reclaim_frees_enough_gpus_with_as_few_victims_as_possible() -> None:
    nodes = [_full_node(1, count=2), _full_node(2, count=4)]
    run = [running(20, LAB_B, 1, (0,)), running(21, LAB_B, 1, (1,)),
           running(22, LAB_C, 2, (0, 1, 2)), running(23, LAB_B, 2, (3,), preemptible=False)]  # fmt: skip
    waiting = [job(1, member_id=LAB_A, age_s=3600, gpus=2)]
    assert victims(plan(run, waiting, nodes)) == [22]  # one victim on node 2 beats two on node 1
    assert victims(plan(run[:2] + run[3:], waiting, nodes)) == [20, 21]
    assert plan([running(20, LAB_B, 1, (0,)), running(21, LAB_B, 1, (1,), preemptible=False)], waiting, nodes[:1]) == []


def test_victim_choice_is_most_negative_balance_then_youngest() -> None:
    nodes = [_full_node(1, count=3)]
    waiting = [job(1, member_id=LAB_A, age_s=3600)]
    run = [running(20, LAB_B, 1, (0,), ran_s=20 * MIN), running(21, LAB_C, 1, (1,), ran_s=3 * 3600),
           running(22, LAB_C, 1, (2,), ran_s=2 * 3600)]  # fmt: skip
    assert victims(plan(run, waiting, nodes)) == [22]  # lab-c is deeper in debt; 22 is its younger job
    assert victims(plan(run[::-1], waiting, nodes)) == [22]


def test_a_victim_is_never_preempted_twice() -> None:
    donor = node(1, "RTX4090", busy=(0,), member_id=99, reclaim=True)
    run = [running(20, LAB_B, 1)]
    waiting = [job(1, member_id=LAB_A, age_s=3600), job(2, member_id=LAB_A, age_s=3000)]
    assert [(p.job_id, p.kind) for p in plan(run, waiting, [donor])] == [(20, "owner")]
    result = plan(run, waiting, [_full_node()])
    assert [(p.job_id, p.for_job_id) for p in result] == [(20, 1)]  # the older job gets the room


def test_the_donors_own_job_on_its_own_node_is_not_reclaimed() -> None:
    own = node(1, "RTX4090", busy=(0,), member_id=LAB_B)
    assert plan([running(20, LAB_B, 1)], [job(1, member_id=LAB_A, age_s=3600)], [own]) == []


def test_no_reclaim_for_a_member_at_its_cap_and_richest_member_first() -> None:
    capped = [member(LAB_A, balance=12.0, cap=2, in_use=2), member(LAB_B, balance=-3.5)]
    assert plan([running(20, LAB_B, 1)], [job(1, member_id=LAB_A, age_s=3600)], [_full_node()], members=capped) == []
    richer = [*MEMBERS, member(4, balance=30.0, name="lab-d")]
    waiting = [job(1, member_id=LAB_A, age_s=7200), job(2, member_id=4, age_s=3600)]
    result = plan([running(20, LAB_B, 1)], waiting, [_full_node()], members=richer)
    assert [(p.job_id, p.for_job_id) for p in result] == [(20, 2)]
    assert result[0].reason.startswith("reclaimed by lab-d (balance +30.0) from lab-b")


def test_victims_without_gpu_indices_are_counted_conservatively() -> None:
    mixed = node(1, "RTX3060", "RTX4090", busy=(0, 1), member_id=99)
    vague = RunningView(20, LAB_B, 1, 1, True, NOW - 3600)  # which GPU it holds is unknown
    waiting = [job(1, member_id=LAB_A, age_s=3600, gpu_memory="24GB")]
    assert plan([vague], waiting, [mixed]) == []  # it might hold the 3060
    exact = RunningView(20, LAB_B, 1, 1, True, NOW - 3600, gpu_indices=(1,))
    assert victims(plan([exact], waiting, [mixed])) == [20]
    assert victims(plan([vague], waiting, [_full_node()])) == [20]  # one GPU node: no doubt


def test_inputs_are_not_mutated_and_output_is_deterministic() -> None:
    nodes = [_full_node(1, count=2), _full_node(2, count=2), node(3, "A100", busy=(0,), reclaim=True)]
    run = [running(20, LAB_B, 1, (0,)), running(21, LAB_C, 1, (1,)), running(22, LAB_C, 2, (0, 1)),
           running(23, LAB_B, 3, (0,))]  # fmt: skip
    waiting = [job(1, member_id=LAB_A, age_s=3600), job(2, member_id=LAB_A, age_s=3600, gpus=2)]
    before = copy.deepcopy(nodes)
    first = plan(run, waiting, nodes)
    assert nodes == before
    assert [(p.job_id, p.kind, p.for_job_id) for p in first] == [
        (23, "owner", None),
        (21, "reclaim", 1),
        (22, "reclaim", 2),
    ]
    assert plan(run[::-1], waiting[::-1], nodes[::-1], members=MEMBERS[::-1]) == first


# --- seeded random invariants ---------------------------------------------------------------------


def _random_case(seed: int) -> tuple[list[RunningView], list[JobView], list[NodeView], list[MemberView]]:
    rnd = random.Random(seed)
    balances = rnd.sample([15.0, 3.0, 0.0, -1.0, -5.0, -20.0], 5)
    members = [member(m, balance=b, cap=rnd.choice([None, None, 4]), in_use=rnd.randint(0, 3), name=f"lab-{m}")
               for m, b in enumerate(balances)]  # fmt: skip
    nodes, run = [], []
    job_ids = iter(range(1000, 2000))
    for i in range(rnd.randint(1, 12)):
        if rnd.random() < 0.2:
            n = node(i, *rnd.choices(["RTX3060", "RTX4090", "A100"], k=rnd.choice([2, 3])), member_id=rnd.randrange(5))
        else:
            n = node(i, rnd.choice(["RTX3060", "RTX4090", "A100"]), count=rnd.choice([1, 2, 4]),
                     member_id=rnd.randrange(5))  # fmt: skip
        n.reclaim, n.paused = rnd.random() < 0.1, rnd.random() < 0.05
        gpus = list(range(len(n.gpus)))
        rnd.shuffle(gpus)
        while gpus and rnd.random() < 0.95:  # fill it with running attempts of 1-2 GPUs
            held = tuple(sorted(gpus.pop() for _ in range(min(len(gpus), rnd.choice([1, 1, 2])))))
            n.free_gpus -= set(held)
            n.free_cpus -= 1
            run.append(running(next(job_ids), rnd.randrange(5), i, held, ran_s=rnd.choice([60.0, 3600.0]),
                               preemptible=rnd.random() < 0.8))  # fmt: skip
        nodes.append(n)
    pending = [job(j, member_id=rnd.randrange(5), age_s=rnd.choice([60.0, 7200.0, 7200.0]),
                   gpus=rnd.choice([1, 1, 2, 4]), gpu_memory=rnd.choice(["8GB", "24GB", "40GB"]))
               for j in range(rnd.randint(0, 12))]  # fmt: skip
    return run, pending, nodes, members


@pytest.mark.parametrize("seed", range(60))
def test_random_preemptions_keep_every_invariant(seed: int) -> None:
    run, pending, nodes, members = _random_case(seed)
    result = plan(run, pending, nodes, members)
    by_run, by_node = {r.job_id: r for r in run}, {n.id: n for n in nodes}
    by_job, by_member = {j.id: j for j in pending}, {m.id: m for m in members}
    assert len({p.job_id for p in result}) == len(result)  # nobody twice
    claims: dict[int, list[RunningView]] = {}
    for p in result:
        r, n = by_run[p.job_id], by_node[p.node_id]
        if p.kind == "service":  # a job that ran longer makes way, once per service level it passed
            claimant = by_job[p.for_job_id]  # type: ignore[index]
            levels = DEFAULT.service_levels_gpu_h
            assert r.preemptible and NOW - r.started_at >= DEFAULT.min_runtime_s
            assert service_band(r.attained(NOW), levels) > max(service_band(claimant.attained_gpu_s, levels), 0)
            assert r.member_id == claimant.member_id or r.member_id != n.member_id
            claims.setdefault(claimant.id, []).append(r)
            continue
        assert r.node_id == n.id and r.member_id != n.member_id  # never the owner on its own node
        if p.kind == "owner" and p.for_job_id is None:
            assert n.reclaim
            continue
        if p.kind == "owner":  # the donor's own waiting job takes its node back
            assert n.schedulable and by_job[p.for_job_id].member_id == n.member_id
            claims.setdefault(p.for_job_id, []).append(r)
            continue
        assert p.for_job_id is not None and n.schedulable and r.preemptible
        assert by_member[r.member_id].balance < 0 and NOW - r.started_at >= DEFAULT.min_runtime_s
        claimant = by_job[p.for_job_id]
        assert by_member[claimant.member_id].balance > 0 and NOW - claimant.submitted_at > DEFAULT.reclaim_wait_s
        claims.setdefault(claimant.id, []).append(r)
    for job_id, victims in claims.items():
        assert len({v.node_id for v in victims}) == 1
        n = by_node[victims[0].node_id]
        freed = n.free_gpus | {i for v in victims for i in v.gpu_indices}
        assert (
            sum(1 for i in freed if gpu_matches(by_job[job_id].resources, n.gpus[i])) >= by_job[job_id].resources.gpus
        )
    assert plan(run[::-1], pending[::-1], nodes[::-1], members[::-1]) == result


def test_the_owner_takes_back_its_smallest_node_that_makes_room() -> None:
    # one guest to stop either way: the one-GPU node goes back first and the two-GPU node stays whole
    wide = node(1, "RTX4090", count=2, member_id=LAB_A, busy=(0, 1))
    small = node(2, "RTX4090", member_id=LAB_A, busy=(0,))
    run = [running(11, LAB_B, 1, (0, 1)), running(12, LAB_C, 2, (0,))]
    assert victims(plan(run, [job(1, member_id=LAB_A)], [wide, small])) == [12]
