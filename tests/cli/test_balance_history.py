"""``coop balance --history`` against a real coordinator: the ledger summed per job and UTC day, in a
readable unit, naming the members on the other side; ``--raw`` keeps one row per accrual slice."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlmodel import Session

from coop.server.models import LedgerEntry
from tests.api.helpers import node
from tests.cli.conftest import Cli
from tests.conftest import Coordinator

SLICE_S = 5  # the ledger loop writes one entry per running job and per idle node every few seconds


def _slices(member: int, kind: str, start: datetime, n: int, amount: float, **fields: Any) -> list[LedgerEntry]:
    return [
        LedgerEntry(member_id=member, kind=kind, amount=amount, at=start + timedelta(seconds=SLICE_S * i), **fields)
        for i in range(n)
    ]


def a_week_of_ledger(c: Coordinator) -> dict[str, Any]:
    """bob's job 'train' ran on alice's node box for 100 slices two days ago and 20 yesterday; box sat
    idle for 30 slices yesterday; bob got a grant. As the ledger loop writes them (a CPU-sized rate:
    0.0001 credits per slice, what prints as 1e-04)."""
    bob, _ = c.new_member("bob")
    c.new_member("alice")
    box = c.agent("alice").register_node(node("box", gpus=1))["id"]
    job = bob.submit({"name": "train", "run": "true"})["id"]
    members = {m["name"]: m["id"] for m in c.admin.members()}
    today = datetime.combine(datetime.now(UTC).date(), time(), tzinfo=UTC)
    before, yesterday = today - timedelta(days=2, hours=-10), today - timedelta(days=1, hours=-9)
    hours = SLICE_S / 3600
    run = {"job_id": job, "node_id": box, "gpu_hours": hours}
    entries = [
        *_slices(members["bob"], "spend", before, 100, -0.0001, note=f"job {job} on box", **run),
        *_slices(members["alice"], "earn", before, 100, 0.0001, note=f"job {job} of member {members['bob']}", **run),
        *_slices(members["bob"], "spend", yesterday, 20, -0.0001, note=f"job {job} on box", **run),
        *_slices(members["alice"], "earn", yesterday, 20, 0.0001, note=f"job {job} of member {members['bob']}", **run),
        *_slices(
            members["alice"], "idle", yesterday, 30, 0.00002, node_id=box, gpu_hours=hours, note="1 idle GPUs on box"
        ),
    ]
    with Session(c.engine) as session:
        session.add_all(entries)
        session.commit()
    c.admin.grant("bob", 5, "welcome")
    return {"job": job, "before": before.date().isoformat(), "yesterday": yesterday.date().isoformat()}


def test_history_sums_each_job_per_day_and_names_the_other_member(coordinator: Coordinator, cli: Cli) -> None:
    week = a_week_of_ledger(coordinator)
    cli.use(coordinator.url, coordinator.admin_token)

    bob = cli("balance", "--member", "bob", "--history")
    assert bob.exit_code == 0, bob.output
    lines = [line.rstrip() for line in bob.stdout.splitlines()]
    header = next(line for line in lines if line.startswith("DAY (UTC)"))
    assert header.split() == ["DAY", "(UTC)", "JOB", "WHAT", "WITH", "CREDITS", "GPU", "TIME", "FROM-TO", "ENTRIES"]
    job = week["job"]
    two_days_ago = next(line for line in lines if line.startswith(week["before"]))
    assert re.search(
        rf"{job} train +spent running it +on alice's nodes \(box\) +-0\.0100 +8m20s +\S+ +100$", two_days_ago
    )
    yesterday = next(line for line in lines if line.startswith(week["yesterday"]))
    assert re.search(r"spent running it +on alice's nodes \(box\) +-0\.00200 +1m40s +\S+ +20$", yesterday)
    assert re.search(r"- +granted by an admin +welcome +\+5\.00 +- +\S+ +1$", "\n".join(lines), re.M)
    assert len([line for line in lines if re.match(r"\d{4}-\d\d-\d\d ", line)]) == 3  # not 120 slices
    assert "1 credit = 1 hour of 100 measured TFLOP/s" in bob.stdout

    alice = cli("balance", "--member", "alice", "--history")
    assert alice.exit_code == 0, alice.output
    alice_text = "\n".join(line.rstrip() for line in alice.stdout.splitlines())
    assert "MILLICREDITS" in alice.stdout and "amounts in millicredits (1/1000 of a credit)" in alice.stdout
    assert re.search(
        rf"^{week['before']} +{job} train +earned hosting it +bob's job on box +\+10\.00 +8m20s", alice.stdout, re.M
    )
    assert re.search(
        rf"^{week['yesterday']} +{job} train +earned hosting it +bob's job on box +\+2\.00 +1m40s", alice.stdout, re.M
    )
    assert re.search(
        rf"^{week['yesterday']} +- +idle donated capacity +box +\+0\.60 +2m30s +\S+ +30$", alice_text, re.M
    )
    for text in (bob.stdout, alice.stdout):
        assert not re.search(r"\de-0\d", text) and "of member" not in text  # no 1e-04, no member ids

    raw = cli("balance", "--member", "alice", "--history", "--raw")
    assert raw.exit_code == 0 and len(re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", raw.stdout, re.M)) == 150
    assert not re.search(r"\de-0\d", raw.stdout)
    assert "+0.000100" in raw.stdout and "+0.0000200" in raw.stdout


def test_history_json_has_the_sums_and_the_entries(coordinator: Coordinator, cli: Cli) -> None:
    week = a_week_of_ledger(coordinator)
    cli.use(coordinator.url, coordinator.admin_token)
    result = cli.json("balance", "--member", "alice", "--history", "--limit", "1000")
    assert len(result["history"]) == 150
    days = [(d["day"], d["kind"], d["job_id"], d["counterpart"], d["nodes"], d["entries"]) for d in result["days"]]
    assert days == [
        (week["before"], "earn", week["job"], "bob", ["box"], 100),
        (week["yesterday"], "idle", None, "box", ["box"], 30),
        (week["yesterday"], "earn", week["job"], "bob", ["box"], 20),
    ]
    assert round(sum(d["amount"] for d in result["days"]), 9) == round(result["balance"], 9) == 0.0126
    # one day back only covers today: nothing; members see their own days, not others'
    assert cli.json("balance", "--member", "alice", "--history", "--days", "1")["days"] == []
    bob_token = coordinator.admin.create_token(member="bob")["token"]
    cli.use(coordinator.url, bob_token)
    refused = cli("balance", "--member", "alice", "--history")
    assert refused.exit_code == 1 and "fix: " in refused.stderr


def test_an_empty_history_says_so(coordinator: Coordinator, cli: Cli, alice: str) -> None:
    result = cli("balance", "--history")
    assert result.exit_code == 0 and "no ledger entries in the last 30 days" in result.stdout
