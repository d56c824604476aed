"""decide(): the one entry point the coordinator and the simulator share. Pure: placements, pool caps,
preemptions on the cluster as the placements leave it, reservations and their expiry."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

from coop.scheduler.decide import RESERVATION_S, PoolCap, Reservation, Snapshot, after_placements, decide
from coop.scheduler.model import Policy
from tests.scheduler import NOW, job, member, node, running


def where(decisions: object) -> dict[int, int]:
    return {p.job_id: p.node_id for p in decisions.placements}  # type: ignore[attr-defined]


def test_placements_past_a_pools_cap_wait_saying_so_and_others_still_go() -> None:
    pool_a = node(1, "A100", count=8, tier="hpc", pool_id=7)  # one node class of pool 7: 8 GPUs free
    donated = node(2, "RTX4090", count=2)
    jobs = [job(i, gpus=1, tier="any", age_s=100 - i) for i in range(1, 5)]
    snap = Snapshot(jobs, [pool_a, donated], [member(1)], [], Policy(), NOW, pools={7: PoolCap("delta", 4, free=1)})
    decisions = decide(snap)
    on_pool = [j for j, n in where(decisions).items() if n == 1]
    assert len(on_pool) == 1, "the pool had one free slot"
    capped = [j for j, why in decisions.waiting.items() if "cap" in why]
    assert capped and all(decisions.waiting[j] == "waiting: pool delta already runs its cap of 4 jobs" for j in capped)
    assert len(decisions.placements) + len(capped) == 4
    # the same jobs with room in the pool all go
    roomy = Snapshot(jobs, [pool_a, donated], [member(1)], [], Policy(), NOW, pools={7: PoolCap("delta", 4, free=4)})
    assert len(decide(roomy).placements) == 4 and not decide(roomy).waiting


def test_preemption_sees_the_cluster_as_the_placements_leave_it() -> None:
    """The donor's waiting job fits its own free node: it is placed there, and no guest is stopped for
    it. Its second job then finds no room: the guest on its other node is stopped for that one (on
    the cluster before the placements, both jobs would seem to fit the free node, and nobody would be)."""
    donor = 100
    own_free = node(1, "RTX4090", member_id=donor)
    own_busy = node(2, "RTX4090", member_id=donor, busy=(0,))
    guest = running(50, member_id=2, node_id=2)
    snap = Snapshot([job(10, member_id=donor)], [own_free, own_busy], [member(donor), member(2, in_use=1)],
                    [guest], Policy(), NOW)  # fmt: skip
    decisions = decide(snap)
    assert where(decisions) == {10: 1}
    assert decisions.preemptions == []
    # a second job of the donor finds no free room: the guest on its node is stopped for it
    two = Snapshot([job(10, member_id=donor, age_s=2), job(11, member_id=donor, age_s=1)], [own_free, own_busy],
                   [member(donor), member(2, in_use=1)], [guest], Policy(), NOW)  # fmt: skip
    decisions = decide(two)
    assert where(decisions) == {10: 1}
    assert [(p.job_id, p.node_id, p.kind, p.for_job_id) for p in decisions.preemptions] == [(50, 2, "owner", 11)]
    assert decisions.reservations == [Reservation(11, 2, NOW + RESERVATION_S)]


def test_jobs_on_a_pool_are_never_preempted() -> None:
    pooled = node(1, "A100", tier="hpc", pool_id=7, reclaim=True, reclaim_reason="the owner paused it", busy=(0,))
    donated = node(2, "RTX4090", reclaim=True, reclaim_reason="the owner paused it", busy=(0,))
    snap = Snapshot([], [pooled, donated], [member(1)], [running(1, 1, node_id=1), running(2, 1, node_id=2)],
                    Policy(), NOW, pools={7: PoolCap("delta", 4, free=3)})  # fmt: skip
    assert [p.job_id for p in decide(snap).preemptions] == [2]


def test_a_reservation_holds_until_it_expires_and_goes_once_its_job_starts() -> None:
    nodes = [node(1, "RTX4090"), node(2, "RTX3060")]
    members = [member(1, usage=0.0), member(2, usage=50.0)]
    jobs = [job(10, member_id=1), job(20, member_id=2)]
    plain = decide(Snapshot(jobs, nodes, members, [], Policy(), NOW))
    assert where(plain) == {10: 2, 20: 1}  # fair share and best fit, no reservation

    live = Reservation(20, 2, until=NOW + 1)
    held = decide(Snapshot(jobs, nodes, members, [], Policy(), NOW, [live]))
    assert where(held) == {20: 2, 10: 1}
    assert held.reservations == []  # its job started: the reservation is spent

    expired = Reservation(20, 2, until=NOW - 1)
    assert where(decide(Snapshot(jobs, nodes, members, [], Policy(), NOW, [expired]))) == {10: 2, 20: 1}

    # one whose job cannot go yet stays in force; expired ones are dropped
    full = [node(1, "RTX4090", busy=(0,)), node(2, "RTX3060", busy=(0,))]
    kept = decide(Snapshot(jobs, full, members, [], Policy(), NOW, [Reservation(20, 2), expired]))
    assert kept.reservations == [Reservation(20, 2, math.inf)]


def test_a_reclaim_reserves_the_room_it_makes_from_the_decision_on() -> None:
    policy = Policy(reclaim_wait_s=0, min_runtime_s=0)
    nodes = [node(1, "RTX4090", busy=(0,))]
    members = [member(1, balance=100.0), member(2, balance=-100.0, in_use=1)]
    snap = Snapshot([job(10, member_id=1, age_s=60)], nodes, members, [running(5, 2, node_id=1)], policy, NOW)
    decisions = decide(snap)
    assert [(p.job_id, p.kind, p.for_job_id) for p in decisions.preemptions] == [(5, "reclaim", 10)]
    assert decisions.reservations == [Reservation(10, 1, NOW + RESERVATION_S)]


def test_decide_leaves_its_snapshot_as_it_was() -> None:
    donor = 100
    nodes = [node(1, "RTX4090", count=2, member_id=donor), node(2, "RTX4090", member_id=donor, busy=(0,))]
    snap = Snapshot([job(i, member_id=donor) for i in range(1, 5)], nodes, [member(donor), member(2, in_use=1)],
                    [running(50, 2, node_id=2)], Policy(), NOW, [Reservation(3, 1)])  # fmt: skip
    before = copy.deepcopy(snap)
    decisions = decide(snap)
    assert decisions.placements and decisions.preemptions  # it did decide something
    assert snap == before


def test_the_simulators_two_halves_decide_what_one_call_does() -> None:
    """``only="placements"`` then ``only="preemptions"`` on the cluster the placements leave: the same
    placements, preemptions and reservations as one whole call."""
    donor = 100
    nodes = [node(1, "RTX4090", member_id=donor), node(2, "RTX4090", member_id=donor, busy=(0,))]
    snap = Snapshot([job(10, member_id=donor, age_s=2), job(11, member_id=donor, age_s=1)], nodes,
                    [member(donor), member(2, in_use=1)], [running(50, 2, node_id=2)], Policy(), NOW)  # fmt: skip
    whole = decide(snap)
    first = decide(replace(snap, only="placements"))
    assert first.placements == whole.placements and first.preemptions == []
    second = decide(replace(after_placements(snap, first.placements), only="preemptions"))
    assert second.placements == [] and second.preemptions == whole.preemptions
    assert second.reservations == whole.reservations
