"""Hand-checkable replays: every completion time below is worked out by hand from the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from coop.sim.engine import Options, replay
from coop.sim.inputs import read_jobs, read_members, read_nodes
from coop.sim.report import simulate
from tests.sim.helpers import JOBS_HEADER, NODES_HEADER, jct, run, write

H = 3600.0


def test_fifo_queue_and_run_time_scaled_by_node_speed(tmp_path: Path) -> None:
    # one 2-GPU node at 100 TFLOP/s, one 1-GPU node at 50 TFLOP/s (jobs there take twice as long)
    nodes = ["fast,a,2,A100,80,100,", "slow,b,1,RTX3090,24,50,"]
    jobs = ["0,3600,2,a,big,true", "0,1800,1,b,half,true", "100,600,1,b,short,true", "200,1200,2,a,late,true"]
    out = run(tmp_path, jobs, nodes, policy="fifo")
    # big takes both fast GPUs; half goes to the slow card (1800 s -> 3600 s); short and late wait.
    # At 3600 both nodes free up: short (1 GPU) best-fits the slow card (no GPU left over) and runs
    # 3600..4800; late takes the fast node 3600..4800.
    assert jct(out) == {"big": 3600, "half": 3600, "short": 4700, "late": 4600}
    assert out.outcome[1].first_start == 0 and out.outcome[3].first_start == 3600
    assert out.busy_gpu_s == 2 * 3600 + 3600 + 1200 + 2 * 1200


def test_owner_taking_its_machine_back_preempts_the_guest(tmp_path: Path) -> None:
    nodes = ["box,a,1,RTX4090,24,100,1000-2000"]
    out = run(tmp_path, ["0,3600,1,b,guest,true"], nodes, policy="fifo")
    # runs 0..1000, stopped when the owner takes the box, restarts from scratch at 2000
    assert jct(out) == {"guest": 2000 + 3600}
    assert out.preemptions == {"owner": 1}
    assert out.lost_gpu_s == {"owner": 1000}
    assert out.outcome[1].attempts == 2


def test_a_checkpointing_guest_keeps_its_work_up_to_the_last_checkpoint(tmp_path: Path) -> None:
    nodes = ["box,a,1,RTX4090,24,50,1000-2000"]  # half speed: the 3600 s job needs 7200 s here
    out = run(tmp_path, ["0,3600,1,b,guest,true"], nodes, policy="fifo", checkpoint_s=300)
    # 0..1000 at half speed: checkpoints at 300, 600, 900 keep 900 s of run time = 450 s of the job;
    # from 2000 the remaining 3150 s of work take 6300 s here
    assert jct(out) == {"guest": 2000 + 6300}
    assert out.lost_gpu_s == {"owner": 100}  # the 100 s since the last checkpoint
    assert out.outcome[1].attempts == 2


def test_owner_first_under_coop_not_under_fifo(tmp_path: Path) -> None:
    nodes = ["box,a,1,RTX4090,24,100,"]
    jobs = ["0,3600,1,b,guest,true", "100,600,1,a,owner,true"]
    coop = run(tmp_path, jobs, nodes, policy="coop")
    # the donor's job takes its own box at once; the guest restarts when it ends
    assert jct(coop) == {"guest": 700 + 3600, "owner": 600}
    assert coop.preemptions == {"owner": 1} and coop.lost_gpu_s == {"owner": 100}
    fifo = run(tmp_path, jobs, nodes, policy="fifo")
    assert jct(fifo) == {"guest": 3600, "owner": 3500 + 600}
    assert fifo.preemptions == {}


def test_reclaim_by_balance_after_the_wait(tmp_path: Path) -> None:
    # c donates nothing and fills both nodes; e earns from c on its RTX3090 and then needs the A100
    nodes = ["x,d,1,A100,80,100,", "y,e,1,RTX3090,24,100,"]
    jobs_file = write(tmp_path, "jobs.csv", "submit_time,duration,gpus,member,name,gpu_model",
                      ["0,36000,1,c,c1,", "0,36000,1,c,c2,", "1000,600,1,e,e1,A100"])  # fmt: skip
    nodes_file = write(tmp_path, "nodes.csv", NODES_HEADER, nodes)
    out = simulate(read_jobs(jobs_file), read_nodes(nodes_file), Options(policy="coop"), timing=False)[1]
    times = jct(out)
    # e1 waits the reclaim wait (600 s), then c's job on the A100 (balance < 0, ran 1600 s) is stopped
    assert times["e1"] == pytest.approx(600 + 600, abs=1e-3)
    assert out.preemptions == {"reclaim": 1}
    assert out.lost_gpu_s["reclaim"] == pytest.approx(1600, abs=1e-3)
    fifo = simulate(read_jobs(jobs_file), read_nodes(nodes_file), Options(policy="fifo"), timing=False)[1]
    assert fifo.preemptions == {} and jct(fifo)["e1"] == 36000 - 1000 + 600  # no reclaim in the baseline


def test_ledger_credits_follow_the_ledger_rules(tmp_path: Path) -> None:
    nodes = ["n1,a,1,RTX4090,24,100,", "n2,b,2,RTX3090,24,50,"]
    jobs = ["0,3600,1,a,a1,true", "0,3600,1,a,a2,true", "0,3600,1,b,b1,true", "100,1800,2,b,b2,true"]
    out = run(tmp_path, jobs, nodes)
    # a2 runs 2 h on b's 50 TFLOP/s card: a spends 1 credit, b earns it; a's n1 idles 2 h after a1
    # (3600..10800) at 0.25 x 1 credit/h = 0.5; b's own jobs on its own node cost nothing
    assert out.balance["a"] == pytest.approx(-0.5)
    assert out.balance["b"] == pytest.approx(1.0)
    # a1: 1 h x 100 TFLOP/s; a2 and b1: 2 h x 50; b2: 1 h x 2 x 50 (one credit each)
    assert out.used_credits == pytest.approx({"a": 1.0 + 1.0, "b": 1.0 + 1.0})


def _fairness(tmp_path: Path, policy: str) -> dict[str, dict[str, float]]:
    nodes = write(tmp_path, "nodes.csv", NODES_HEADER, ["A,a,1,RTX4090,24,100,", "B,b,1,RTX4090,24,100,"])
    rows = [f"0,3600,1,a,a{i},true" for i in range(1, 5)] + [f"0,3600,1,b,b{i},true" for i in range(1, 3)]
    jobs = write(tmp_path, "jobs.csv", JOBS_HEADER, rows)
    report, _ = simulate(read_jobs(jobs), read_nodes(nodes), Options(policy=policy), timing=False)
    return report["members"]


def test_share_ratio_and_sharing_incentive_by_hand(tmp_path: Path) -> None:
    # a asks for 4 GPU-hours, b for 2, each gives one GPU. Shares count over the share window, 0..2 h:
    # on one 2-GPU machine in submit order a1 a2 start at 0, a3 a4 at 1 h, b1 b2 at 2 h
    coop = _fairness(tmp_path, "coop")
    # owner first: a runs on A at 0, 1, 2 h and its 4th job on B at 2 h; b runs on B at 0 and 1 h.
    # Until 2 h each used its own GPU: 2 credit-hours of 4, for half the capacity.
    assert coop["a"]["share_ratio"] == pytest.approx(1.0) and coop["b"]["share_ratio"] == pytest.approx(1.0)
    assert coop["a"]["demand_exceeds_contribution"] and not coop["b"]["demand_exceeds_contribution"]
    assert coop["a"]["used_credit_gpu_hours_all"] == pytest.approx(4.0)
    assert coop["a"]["jct_pool_s"] == pytest.approx((1 + 2 + 3 + 3) / 4 * H)
    assert coop["a"]["jct_alone_s"] == pytest.approx((1 + 2 + 3 + 4) / 4 * H)
    assert coop["a"]["sharing_incentive"] == pytest.approx(2.5 / 2.25)
    assert coop["b"]["sharing_incentive"] == pytest.approx(1.0)  # never slower than alone
    assert coop["a"]["balance"] == pytest.approx(-1.0) and coop["b"]["balance"] == pytest.approx(1.0)
    # FIFO: a's four jobs come first and hold both GPUs until 2 h, when b's start: a used it all,
    # and b is slower in the pool than alone
    fifo = _fairness(tmp_path, "fifo")
    assert fifo["a"]["share_ratio"] == pytest.approx(2.0) and fifo["b"]["share_ratio"] == 0
    assert fifo["b"]["jct_pool_s"] == pytest.approx(3 * H) and fifo["b"]["jct_alone_s"] == pytest.approx(1.5 * H)
    assert fifo["b"]["sharing_incentive"] == pytest.approx(0.5)
    assert fifo["a"]["sharing_incentive"] == pytest.approx(2.5 / 1.5)


def test_jobs_only_the_pool_can_run_are_counted_apart_from_the_incentive(tmp_path: Path) -> None:
    rows = ["0,3600,1,b,bees,true", "0,3600,2,a,wide,true", "0,3600,1,a,narrow,true"]  # a's ids differ alone
    jobs = write(tmp_path, "jobs.csv", JOBS_HEADER, rows)
    nodes = write(tmp_path, "nodes.csv", NODES_HEADER, ["small,a,1,RTX4090,24,100,", "big,b,2,RTX4090,24,100,"])
    members = simulate(read_jobs(jobs), read_nodes(nodes), Options(policy="coop"))[0]["members"]
    # a's 2-GPU job runs on b's node; alone, on a's 1-GPU node, it never could
    assert members["a"]["pool_only_done"] == 1 and members["a"]["jobs_alone"] == 1
    assert members["a"]["sharing_incentive"] == pytest.approx(1.0)  # its 1-GPU job: own node either way
    assert members["b"]["pool_only_done"] == 0 and members["b"]["jobs_alone"] == 1


def test_jobs_no_node_can_run_are_refused_like_at_submit(tmp_path: Path) -> None:
    # 4 GPUs where the widest node has 2: a gang of 2 nodes of 2, and the cluster has only one node
    out = run(tmp_path, ["0,60,4,a,too-big,true", "0,60,1,a,fits,true"], ["n,a,2,RTX4090,24,100,"])
    assert out.refused == {1: "asks 4 GPUs; the largest job this cluster can make is 2 GPUs (1 node of 2)"}
    assert out.refused_reason == {1: "nodes"}
    assert jct(out)["fits"] == 60


def test_gpu_caps_and_shares_from_the_members_file(tmp_path: Path) -> None:
    two = write(tmp_path, "two.csv", NODES_HEADER, ["n1,d,1,RTX4090,24,100,", "n2,d,1,RTX4090,24,100,"])
    jobs = write(tmp_path, "jobs.csv", JOBS_HEADER, ["0,3600,1,a,a1,true", "0,3600,1,a,a2,true", "0,3600,1,b,b1,true"])
    assert jct(replay(read_jobs(jobs), read_nodes(two), Options(policy="fifo")))["b1"] == 2 * H
    capped = write(tmp_path, "members.csv", "member,share,gpu_cap", ["a,1,1", "b,1,"])
    out = replay(read_jobs(jobs), read_nodes(two), Options(policy="fifo"), read_members(capped))
    assert jct(out) == {"a1": H, "a2": 2 * H, "b1": H}  # a holds one GPU at a time: b1 goes first

    one = write(tmp_path, "one.csv", NODES_HEADER, ["n1,d,1,RTX4090,24,100,"])
    rows = [f"0,3600,1,{m},{m}{i},true" for m in "ab" for i in (1, 2, 3)]
    jobs = write(tmp_path, "jobs.csv", JOBS_HEADER, rows)
    # equal shares: members alternate (usage decays a little, so at a tie the older usage counts less)
    out = replay(read_jobs(jobs), read_nodes(one), Options(policy="coop"))
    assert jct(out) == {"a1": H, "b1": 2 * H, "a2": 3 * H, "b2": 4 * H, "a3": 5 * H, "b3": 6 * H}
    weighted = write(tmp_path, "members.csv", "member,share", ["a,1", "b,3"])
    out = replay(read_jobs(jobs), read_nodes(one), Options(policy="coop"), read_members(weighted))
    # b's usage counts a third: after a1 and b1, b runs twice before a's next turn
    assert jct(out) == {"a1": H, "b1": 2 * H, "b2": 3 * H, "b3": 4 * H, "a2": 5 * H, "a3": 6 * H}


def test_declared_limits_order_a_members_own_queue_and_a_run_past_its_limit_fails(tmp_path: Path) -> None:
    header = JOBS_HEADER + ",max_runtime"
    jobs = [
        "0,1000,1,b,first,true,2000",  # holds the box until 1000 while the others queue
        "10,3600,1,b,open,true,",  # no limit: last among b's jobs under Coop
        "20,600,1,b,short,true,1200",
        "30,600,1,b,tight,true,300",  # declares 300 s but needs 600 s: fails at its limit
    ]
    nodes = write(tmp_path, "nodes.csv", NODES_HEADER, ["box,a,1,RTX4090,24,100,"])
    job_file = write(tmp_path, "jobs.csv", header, jobs)

    def outcome(policy: str) -> tuple[dict[str, float], list[str]]:
        out = replay(read_jobs(job_file), read_nodes(nodes), Options(policy=policy))
        failed = [j.name for j in out.jobs if out.outcome[j.id].failed]
        assert simulate(read_jobs(job_file), read_nodes(nodes), Options(policy=policy))[0]["failed"] == 1
        return jct(out), failed

    # Coop: at 1000 the shortest limit goes first: tight 1000..1300 (stopped at its limit), short
    # 1300..1900, open 1900..5500
    assert outcome("coop") == ({"first": 1000, "tight": 1270, "short": 1880, "open": 5490}, ["tight"])
    # FIFO: submit order, limits only enforced: open 1000..4600, short 4600..5200, tight 5200..5500
    assert outcome("fifo") == ({"first": 1000, "open": 4590, "short": 5180, "tight": 5470}, ["tight"])
