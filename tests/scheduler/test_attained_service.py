"""Least attained service (a member's queue by the GPU-hours its jobs have run, and service
preemption) and holds for wide jobs that waited long: pure policy, hand-checkable cases."""

from __future__ import annotations

from dataclasses import replace

from coop.scheduler.model import NodeView, Policy, RunningView
from coop.scheduler.placement import expected_end, place
from coop.scheduler.preemption import preemptions
from tests.scheduler import NOW, job, member, node, running

H = 3600.0
COOP = Policy()
ME, OTHER, DONOR = 1, 2, 100


def served(job_id: int, gpu_h: float, **kw: object) -> object:
    return replace(job(job_id, **kw), attained_gpu_s=gpu_h * H)  # type: ignore[arg-type]


def ran(job_id: int, member_id: int, node_id: int, hours: float, before_h: float = 0.0, stops: int = 0,
        **kw: object) -> RunningView:  # fmt: skip
    """A running attempt that checkpointed 10 minutes ago (unless it started since)."""
    r = running(job_id, member_id, node_id, ran_s=hours * H, **kw)  # type: ignore[arg-type]
    return replace(r, attained_gpu_s=before_h * H, service_stops=stops, checkpoint_at=NOW - 600)


# --- queue order ----------------------------------------------------------------------------------


def test_a_members_new_job_goes_before_its_job_that_already_ran_for_hours() -> None:
    old = served(1, 10.0, age_s=5 * H)  # submitted first, but preempted after 10 GPU-hours
    new = job(2, age_s=60)
    result = place([old, new], [node(1, "RTX4090")], [member(ME)], COOP, NOW)
    assert [p.job_id for p in result.placements] == [2]
    fifo = place([old, new], [node(1, "RTX4090")], [member(ME)], Policy(fair_share=False), NOW)
    assert [p.job_id for p in fifo.placements] == [1]  # the baseline keeps submit order


def test_jobs_within_one_service_level_keep_submit_order() -> None:
    older, newer = served(1, 0.5, age_s=2 * H), job(2, age_s=60)  # both below the first level (1 GPU-hour)
    result = place([newer, older], [node(1, "RTX4090")], [member(ME)], COOP, NOW)
    assert [p.job_id for p in result.placements] == [1]


# --- service preemption ---------------------------------------------------------------------------


def test_a_job_that_ran_hours_makes_way_for_the_same_members_new_job() -> None:
    long = ran(11, ME, 1, hours=2.0)  # 2 GPU-hours: past the first level
    result = preemptions([long], [job(1, age_s=60)], [node(1, "RTX4090", member_id=DONOR, busy=(0,))],
                         [member(ME, in_use=1)], COOP, NOW)  # fmt: skip
    assert [(p.job_id, p.kind, p.for_job_id) for p in result] == [(11, "service", 1)]
    assert "run 2.0 GPU-hours" in result[0].reason and "least attained service first" in result[0].reason


def test_service_preemption_respects_min_runtime_levels_passed_and_preemptibility() -> None:
    full = [node(1, "RTX4090", member_id=DONOR, busy=(0,))]
    me = [member(ME, in_use=1)]
    pending = [job(1, age_s=60)]

    def stopped(r: RunningView) -> list[int]:
        return [p.job_id for p in preemptions([r], pending, full, me, COOP, NOW)]

    assert stopped(ran(11, ME, 1, hours=0.1, before_h=5.0)) == []  # this attempt ran under min_runtime
    assert stopped(ran(11, ME, 1, hours=2.0, stops=1)) == []  # already stopped once for its one level
    assert stopped(ran(11, ME, 1, hours=9.0, stops=1)) == [11]  # past a second level: once more
    assert stopped(ran(11, ME, 1, hours=2.0, preemptible=False)) == []
    assert stopped(replace(ran(11, ME, 1, hours=2.0), max_runtime_s=4 * H)) == []  # its declared limit placed it
    assert stopped(ran(11, ME, 1, hours=0.5)) == []  # same band as the waiting job: no gain
    assert stopped(replace(ran(11, ME, 1, hours=2.0), checkpoint_at=None)) == []  # would lose 2 hours of work
    assert stopped(replace(ran(11, ME, 1, hours=2.0), checkpoint_at=NOW - 1700)) == [11]  # under 30 minutes
    assert preemptions([ran(11, ME, 1, hours=2.0)], pending, full, me, Policy(service_preemption=False), NOW) == []


def test_another_members_job_makes_way_only_where_fair_share_allows() -> None:
    full = [node(1, "RTX4090", member_id=DONOR, busy=(0,))]
    long = ran(11, OTHER, 1, hours=3.0)
    behind = [member(ME, usage=1.0), member(OTHER, in_use=1, usage=50.0)]  # ME has used far less
    ahead = [member(ME, usage=80.0), member(OTHER, in_use=1, usage=1.0)]
    assert [p.job_id for p in preemptions([long], [job(1)], full, behind, COOP, NOW)] == [11]
    assert preemptions([long], [job(1)], full, ahead, COOP, NOW) == []


def test_an_owners_job_on_its_own_node_makes_way_only_for_the_owners_jobs() -> None:
    own = [node(1, "RTX4090", member_id=OTHER, busy=(0,))]
    long = ran(11, OTHER, 1, hours=3.0)
    members = [member(ME), member(OTHER, in_use=1, usage=50.0)]
    assert preemptions([long], [job(1, member_id=ME)], own, members, COOP, NOW) == []
    result = preemptions([long], [job(2, member_id=OTHER)], own, members, COOP, NOW)
    assert [(p.job_id, p.for_job_id) for p in result] == [(11, 2)]


def test_the_victim_that_loses_least_since_its_checkpoint_goes() -> None:
    nodes = [node(1, "RTX4090", member_id=DONOR, busy=(0,)), node(2, "RTX4090", member_id=DONOR, busy=(0,))]
    fresh = replace(ran(11, ME, 1, hours=3.0), checkpoint_at=NOW - 60)  # checkpointed a minute ago
    stale = ran(12, ME, 2, hours=3.0)  # checkpointed 10 minutes ago
    result = preemptions([stale, fresh], [job(1)], nodes, [member(ME, in_use=2)], COOP, NOW)
    assert [p.job_id for p in result] == [11]


# --- holds for wide jobs --------------------------------------------------------------------------


def two_nodes() -> list[NodeView]:
    """Two 2-GPU nodes of ME, one GPU busy on each."""
    return [node(i, "RTX4090", count=2, busy=(0,), member_id=ME) for i in (1, 2)]


RUN = [running(21, OTHER, 1, (0,), ran_s=1 * H), running(22, OTHER, 2, (0,), ran_s=3 * H)]
BOTH = [member(ME), member(OTHER)]


def test_a_wide_job_that_waited_long_holds_its_members_node_that_frees_soonest() -> None:
    wide = job(1, gpus=2, age_s=2 * H)
    narrow = [job(2, age_s=60), job(3, member_id=OTHER, age_s=30, preemptible=False)]
    result = place([wide, *narrow], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert [(h.job_id, h.node_id) for h in result.holds] == [(1, 1)]  # node 1's job is younger: ends sooner
    assert result.holds[0].until == expected_end(RUN[0], NOW) == NOW + 1 * H
    assert len(result.placements) == 1 and result.placements[0].node_id == 2  # node 1's free GPU stays held
    assert "holds 2 GPUs on node node-1" in result.waiting[1] and "about 1.0 h" in result.waiting[1]
    # a job whose declared limit ends before the node frees uses the held GPU first
    short = job(4, member_id=OTHER, age_s=10, max_runtime_s=1800, preemptible=False)
    result = place([wide, *narrow, short], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert sorted((p.job_id, p.node_id) for p in result.placements) == [(2, 2), (4, 1)]
    # so may the member's own preemptible job: it makes way as soon as that lets the wide job start
    guest = replace(narrow[1], preemptible=True)
    result = place([wide, *narrow[:1], guest], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert [(p.job_id, p.node_id) for p in result.placements] == [(2, 2)]  # not another member's
    result = place([wide, job(5, age_s=50), *narrow], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert sorted((p.job_id, p.node_id) for p in result.placements) == [(2, 2), (5, 1)]


def test_what_stands_on_a_held_node_makes_way_once_that_lets_the_wide_job_start() -> None:
    held = [node(1, "RTX4090", count=2, busy=(0, 1), member_id=ME)]
    guest = running(21, OTHER, 1, (0,), ran_s=4 * H, preemptible=False)  # a guest goes whatever its kind
    mine = replace(running(23, ME, 1, (1,), ran_s=60), submitted_at=NOW - 120)  # took the held GPU meanwhile
    wide = job(1, gpus=2, age_s=3 * H)
    result = preemptions([guest, mine], [wide], held, BOTH, COOP, NOW, held={1: 1})
    assert sorted((p.job_id, p.kind, p.for_job_id) for p in result) == [(21, "owner", 1), (23, "owner", 1)]
    assert "waited 3.0 h for 2 GPUs and takes its own node node-1" in result[0].reason
    pinned = replace(mine, preemptible=False)  # the member's own job that cannot be stopped: wait for it
    assert preemptions([guest, pinned], [wide], held, BOTH, COOP, NOW, held={1: 1}) == []
    older = replace(mine, submitted_at=NOW - 4 * H)  # the member's older job keeps its place: no swapping
    assert preemptions([guest, older], [wide], held, BOTH, COOP, NOW, held={1: 1}) == []
    again = replace(mine, attained_gpu_s=600.0)  # it made way once already: not again
    assert preemptions([guest, again], [wide], held, BOTH, COOP, NOW, held={1: 1}) == []


def test_no_hold_before_the_wait_nor_on_another_members_node_and_a_hold_stays_on_its_node() -> None:
    fresh = job(1, gpus=2, age_s=600)
    result = place([fresh, job(2), job(3)], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert result.holds == [] and len(result.placements) == 2
    guest = job(1, member_id=OTHER, gpus=2, age_s=2 * H)  # the nodes are ME's: a guest holds none
    result = place([guest, job(2), job(3)], two_nodes(), BOTH, COOP, NOW, running=RUN)
    assert result.holds == [] and len(result.placements) == 2
    wide = job(1, gpus=2, age_s=2 * H)
    kept = place([wide, job(2)], two_nodes(), BOTH, COOP, NOW, running=RUN, holds={1: 2})
    assert [(h.job_id, h.node_id) for h in kept.holds] == [(1, 2)]
    assert [(p.job_id, p.node_id) for p in kept.placements] == [(2, 1)]
    fifo = Policy(fair_share=False, wide_hold_after_s=float("inf"))
    result = place([wide, job(2), job(3)], two_nodes(), BOTH, fifo, NOW, running=RUN)
    assert result.holds == [] and len(result.placements) == 2


def test_service_preemption_leaves_a_node_held_for_a_wide_job_alone() -> None:
    nodes = [node(1, "RTX4090", member_id=DONOR, busy=(0,))]
    long = ran(11, ME, 1, hours=2.0)
    me = [member(ME, in_use=1)]
    assert [p.job_id for p in preemptions([long], [job(1)], nodes, me, COOP, NOW)] == [11]
    assert preemptions([long], [job(1)], nodes, me, COOP, NOW, held={1: 7}) == []
