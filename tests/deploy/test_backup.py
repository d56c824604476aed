"""``coop admin backup`` and ``restore`` (docs/deploy.md, *Backups*): a coordinator with members,
tokens, a node, jobs and ledger entries is backed up while it runs and takes writes, restored into a
fresh file or database, and a coordinator started on it has it all, old tokens included."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from coop.client import CoopClient
from tests.api.helpers import job_spec, node
from tests.conftest import POSTGRES_URL, own_postgres, require_service
from tests.deploy.conftest import Server, clean_env, coop, start_server


def _env(backend: str, folder: Path, database: str) -> dict[str, str]:
    env = clean_env(COOP_DATA_DIR=str(folder))
    if backend == "postgres":
        env["COOP_DATABASE_URL"] = own_postgres(database)
    return env


def _populate(server: Server) -> dict[str, Any]:
    """Members, tokens, an approved node, jobs in several states and ledger entries."""
    with CoopClient(server.url, server.admin_token) as admin:
        lab_a = admin.create_member("lab-a", share=2, gpu_cap=4)["token"]
        admin.create_member("lab-b")
        admin.grant("lab-a", 100, note="welcome credit")
        admin.grant("lab-b", 25.5, note="welcome credit")
        admin.grant("lab-a", -12.25, note="correction")
        agent_token = admin.create_token(kind="agent", member="lab-b")["token"]
        with CoopClient(server.url, agent_token) as agent:
            box = agent.register_node(node("box", gpus=2))["id"]
        admin.approve_node(box)
        with CoopClient(server.url, lab_a) as researcher:
            jobs = [researcher.submit(job_spec(f"job-{i}"))["id"] for i in range(3)]
            researcher.cancel(jobs[1])
        return {"lab_a_token": lab_a, "node": box, "jobs": jobs}


def _snapshot(server: Server, token: str | None = None) -> dict[str, Any]:
    """What a restore must bring back, as the API shows it."""
    with CoopClient(server.url, token or server.admin_token) as admin:
        members = sorted(admin.members(), key=lambda m: m["name"])
        return {
            "members": [(m["name"], m["share"], m["gpu_cap"]) for m in members],
            "balances": {m["name"]: admin.balance(m["name"], history=True, limit=1000) for m in members},
            "jobs": [(j["id"], j["name"], j["state"], j["member"]) for j in admin.jobs(limit=1000)],
            "nodes": [(n["id"], n["name"], n["approved"]) for n in admin.nodes()],
        }


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_backup_while_running_and_restore_into_a_fresh_coordinator(backend: str, tmp_path: Path) -> None:
    if backend == "postgres":
        require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
    source_env = _env(backend, tmp_path / "source", "coop_backup_source")
    source = start_server(tmp_path, source_env)
    try:
        made = _populate(source)
        before = _snapshot(source)
        # writes go on while the backup runs: it is one consistent snapshot of them
        stop, writes = threading.Event(), [0]

        def write() -> None:
            with CoopClient(source.url, source.admin_token) as admin:
                while not stop.is_set():
                    admin.grant("lab-b", 1, note="during the backup")
                    writes[0] += 1
                    stop.wait(0.02)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            done = coop("admin", "backup", str(tmp_path), "--json", env=source_env)
        finally:
            stop.set()
            writer.join(timeout=30)
        backup = json.loads(done.stdout)
    finally:
        source.stop()
    path = Path(backup["file"])
    assert path.parent == tmp_path and path.name.startswith("coop-")
    assert path.suffix == (".db" if backend == "sqlite" else ".dump")
    assert path.stat().st_mode & 0o777 == 0o600
    assert backup["members"] == 3 and backup["jobs"] == 3
    assert writes[0] > 0
    assert backup["ledger_entries"] >= sum(len(b["history"]) for b in before["balances"].values())

    target_env = _env(backend, tmp_path / "target", "coop_backup_target")
    restored = json.loads(coop("admin", "restore", str(path), "--json", env=target_env).stdout)
    assert {k: restored[k] for k in ("members", "jobs", "ledger_entries", "ledger_sum")} == {
        k: backup[k] for k in ("members", "jobs", "ledger_entries", "ledger_sum")
    }
    # a second restore over it is refused, naming --force
    again = coop("admin", "restore", str(path), env=target_env, check=False)
    assert again.returncode != 0 and "already holds a cooperative" in again.stderr and "--force" in again.stderr

    target = start_server(tmp_path, target_env, bootstrap=False)
    try:
        after = _snapshot(target, source.admin_token)  # the old admin token works there
        assert after["members"] == before["members"]
        assert after["jobs"] == before["jobs"]
        assert sorted(j[2] for j in after["jobs"]) == ["CANCELLED", "PENDING", "PENDING"]
        assert after["nodes"] == before["nodes"] == [(made["node"], "box", True)]
        # every ledger entry from before the backup is there, unchanged; after them only what was written
        # while it ran (the grants) and the idle credit lab-b's node earns on the ledger's own clock
        for name, balance in before["balances"].items():
            kept = {e["id"]: e for e in after["balances"][name]["history"]}
            assert [kept.get(e["id"]) for e in balance["history"]] == balance["history"]
            old = {e["id"] for e in balance["history"]}
            assert all(e["note"] == "during the backup" or e["kind"] == "idle" for i, e in kept.items() if i not in old)
            assert after["balances"][name]["balance"] == pytest.approx(sum(e["amount"] for e in kept.values()))
        assert after["balances"]["lab-a"] == before["balances"]["lab-a"]
        assert after["balances"]["lab-a"]["balance"] == pytest.approx(100 - 12.25)
        # tokens are the same: the admin's and the researcher's
        with CoopClient(target.url, made["lab_a_token"]) as researcher:
            assert researcher.me()["member"] == "lab-a"
            assert {j["id"] for j in researcher.jobs()} == set(made["jobs"])
    finally:
        target.stop()

    # --force replaces it (the coordinator stopped)
    forced = json.loads(coop("admin", "restore", str(path), "--force", "--json", env=target_env).stdout)
    assert forced["ledger_entries"] == backup["ledger_entries"]


def test_backup_refuses_to_overwrite_and_restore_refuses_the_other_backend(tmp_path: Path) -> None:
    env = clean_env(COOP_DATA_DIR=str(tmp_path / "data"))
    coop("admin", "bootstrap", env=env)
    out = tmp_path / "coop.db"
    first = coop("admin", "backup", str(out), env=env)
    assert f"to {out}" in first.stdout and "1 members" in first.stdout
    again = coop("admin", "backup", str(out), env=env, check=False)
    assert again.returncode != 0 and "exists" in again.stderr and "--force" in again.stderr
    coop("admin", "backup", str(out), "--force", env=env)

    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    bad = coop("admin", "restore", str(not_a_backup), env=clean_env(COOP_DATA_DIR=str(tmp_path / "new")), check=False)
    assert bad.returncode != 0 and "not a file 'coop admin backup' wrote" in bad.stderr
    if POSTGRES_URL:
        pg = clean_env(COOP_DATA_DIR=str(tmp_path / "pg"), COOP_DATABASE_URL=own_postgres("coop_backup_other"))
        wrong = coop("admin", "restore", str(out), env=pg, check=False)
        assert wrong.returncode != 0 and "is a SQLite backup" in wrong.stderr, wrong.stderr
    missing = coop(
        "admin", "backup", str(tmp_path / "x.db"), env=clean_env(COOP_DATA_DIR=str(tmp_path / "none")), check=False
    )
    assert missing.returncode != 0 and "no database at" in missing.stderr
