"""Gang jobs (``resources.nodes`` > 1) in the pure policy: all-or-nothing placement kept close, caps on
the whole gang, reasons that count fitting nodes, and a gang stopped as one."""

from __future__ import annotations

from dataclasses import replace

from coop.scheduler.decide import Snapshot, after_placements, decide
from coop.scheduler.feasibility import NodeShape, why_impossible
from coop.scheduler.model import Placement, Policy, RunningView
from coop.scheduler.placement import place
from coop.spec import Resources
from tests.scheduler import NOW, gpu, job, member, node

FAIR = Policy()


def test_a_gang_is_one_placement_on_distinct_nodes_with_the_gpus_each_asks_for() -> None:
    nodes = [node(1, "RTX4090", count=2), node(2, "RTX4090", count=2), node(3, "RTX4090", count=2)]
    result = place([job(1, gpus=2, nodes=3)], nodes, [], FAIR, NOW)
    (p,) = result.placements
    assert sorted(node_id for node_id, _ in p.parts) == [1, 2, 3]
    assert all(indices == (0, 1) for _, indices in p.parts)
    assert result.waiting == {}


def test_a_gang_never_half_starts_and_says_how_many_nodes_have_room() -> None:
    nodes = [node(1, "RTX4090"), node(2, "RTX4090", busy=(0,)), node(3, "RTX4090", busy=(0,))]
    result = place([job(1, nodes=2)], nodes, [], FAIR, NOW)
    assert result.placements == []
    assert result.waiting[1] == (
        "waiting: needs 2 nodes with 1 GPU each, free at once (started all together or not at all); "
        "1 has room now; 3 nodes match but are busy"
    )
    # the single-node job behind it still backfills the one free node
    result = place([job(1, nodes=2), job(2, age_s=-1)], nodes, [], FAIR, NOW)
    assert [(p.job_id, p.node_id) for p in result.placements] == [(2, 1)]
    assert "none has room now" in result.waiting[1]


def test_a_gang_keeps_to_one_members_nodes_and_one_network() -> None:
    nodes = [
        node(1, "RTX4090", member_id=10, network="lab-a"),
        node(2, "RTX4090", member_id=20, network="lab-b"),
        node(3, "RTX4090", member_id=20, network="lab-b"),
        node(4, "RTX4090", member_id=30, network="lab-a"),
    ]
    (p,) = place([job(1, member_id=1, nodes=2)], nodes, [], FAIR, NOW).placements
    assert {n for n, _ in p.parts} == {2, 3}  # member 20's two nodes on one network
    # without a member with two free nodes: the two nodes of one network, across members
    nodes[2] = node(3, "RTX4090", member_id=20, network="lab-b", busy=(0,))
    (p,) = place([job(1, member_id=1, nodes=2)], nodes, [], FAIR, NOW).placements
    assert {n for n, _ in p.parts} == {1, 4}


def test_the_owners_gang_goes_on_its_own_nodes_first() -> None:
    nodes = [node(1, "RTX4090", member_id=2), node(2, "RTX4090", member_id=2), node(3, "RTX4090", member_id=3)]
    members = [member(1), member(2, usage=500.0)]  # the owner is far behind in fair share
    result = place([job(1, member_id=1, nodes=2), job(2, member_id=2, nodes=2, age_s=-5)], nodes, members, FAIR, NOW)
    (p,) = result.placements
    assert p.job_id == 2 and {n for n, _ in p.parts} == {1, 2}


def test_a_pool_class_with_enough_machines_takes_the_whole_gang() -> None:
    pool = replace(node(9, "A100", count=4, tier="hpc"), pool_id=1, machines=8)
    small = replace(node(8, "A100", count=4, tier="hpc"), pool_id=2, machines=1)
    (p,) = place([job(1, gpus=4, nodes=4, gpu="A100")], [small, pool], [], FAIR, NOW).placements
    assert p.parts == ((9, (0, 1, 2, 3)),)  # Slurm picks the 4 machines
    # a pool's class never joins donated nodes to make up a gang
    donated = node(1, "A100", count=4)
    result = place([job(1, gpus=4, nodes=2, gpu="A100")], [small, donated], [], FAIR, NOW)
    assert result.placements == []


def test_the_gpu_cap_counts_the_whole_gang() -> None:
    nodes = [node(i, "RTX4090", count=2) for i in (1, 2)]
    result = place([job(1, gpus=2, nodes=2)], nodes, [member(1, cap=3)], FAIR, NOW)
    assert result.placements == []
    assert result.waiting[1] == "waiting: the job needs 4 GPUs but its member's GPU cap is 3"


def test_submit_time_refusal_names_resources_nodes() -> None:
    shapes = [NodeShape(f"n{i}", "consumer", 16, 64.0, (gpu("RTX4090"),)) for i in range(3)]
    refusal = why_impossible(Resources(gpus=1, nodes=4), shapes)
    assert refusal is not None and refusal.field == "resources.nodes"
    assert refusal.message == "4 nodes requested but only 3 registered nodes can each hold what one node needs"
    assert why_impossible(Resources(gpus=1, nodes=3), shapes) is None
    pool = NodeShape("hpc/a100", "hpc", 64, 512.0, (gpu("A100"),) * 4, machines=16)
    assert why_impossible(Resources(gpus=4, nodes=16), [*shapes, pool]) is None


def test_owner_reclaim_on_one_rank_stops_the_whole_gang_once() -> None:
    nodes = [node(1, "RTX4090", member_id=10, reclaim=True), node(2, "RTX4090", member_id=20, reclaim=True)]
    ranks = [
        RunningView(7, 1, node_id, 1, True, NOW - 3600, (0,), 1, nodes=2) for node_id in (1, 2)
    ]  # both ranks on reclaimed nodes: one stop
    snap = Snapshot([], nodes, [member(1)], ranks, FAIR, NOW)
    decisions = decide(snap)
    assert [(p.job_id, p.kind) for p in decisions.preemptions] == [(7, "owner")]


def test_a_gang_is_not_stopped_for_service_and_never_preempts_for_itself() -> None:
    nodes = [node(1, "RTX4090", busy=(0,)), node(2, "RTX4090", busy=(0,))]
    saved = NOW - 600  # a checkpoint 10 minutes ago: little is lost by a stop
    long_gang = [RunningView(7, 1, n, 1, True, NOW - 20 * 3600, (0,), 1, checkpoint_at=saved, nodes=2) for n in (1, 2)]
    fresh = job(8, member_id=1, age_s=600)
    snap = Snapshot([fresh], nodes, [member(1)], long_gang, FAIR, NOW)
    assert decide(snap).preemptions == []  # a single job would stop a lone job this long (service)
    lone = [RunningView(7, 1, 1, 1, True, NOW - 20 * 3600, (0,), 1, checkpoint_at=saved)]
    snap = Snapshot([fresh], [nodes[0]], [member(1)], lone, FAIR, NOW)
    assert [p.kind for p in decide(snap).preemptions] == ["service"]
    # a waiting gang of a member in credit does not reclaim from a member in debt
    debtor = [RunningView(9, 2, n, 1, True, NOW - 3600, (0,), 1) for n in (1, 2)]
    gang = job(10, member_id=1, nodes=2, age_s=7200)
    snap = Snapshot([gang], nodes, [member(1, balance=100.0), member(2, balance=-100.0)], debtor, FAIR, NOW)
    assert decide(snap).preemptions == []


def test_after_placements_counts_every_rank() -> None:
    nodes = [node(1, "RTX4090", count=2), node(2, "RTX4090", count=2)]
    snap = Snapshot([job(1, gpus=2, nodes=2)], nodes, [member(1)], [], FAIR, NOW)
    after = after_placements(snap, [Placement(1, 1, (0, 1), ((2, (0, 1)),))])
    assert all(n.free_gpus == set() for n in after.nodes)
    assert [(r.node_id, r.nodes) for r in after.running] == [(1, 2), (2, 2)]
    assert after.members[0].gpus_in_use == 4
    assert after.running[0].attained(NOW + 3600) == 4 * 3600.0
