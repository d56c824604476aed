"""``coop admin backup`` and ``coop admin restore``: the coordinator's database (the ledger, members,
tokens' hashes, nodes, jobs and their history), copied consistently while the coordinator runs.

Both are local commands, run on the coordinator's host with its ``COOP_DATA_DIR`` /
``COOP_DATABASE_URL`` (as ``coop admin bootstrap`` is), not API calls:

- a restore cannot go through the coordinator it replaces, and a backup made through the API would
  send the whole ledger and every token hash to whoever holds an admin token, from anywhere;
  reading the database already takes the coordinator's host and its database credentials, which is
  who should make backups (a root cron job, a systemd timer);
- the copy is the database's own: SQLite's online backup API (one consistent snapshot, pages copied
  while the coordinator keeps writing), or ``pg_dump --format=custom`` for PostgreSQL (one
  transaction's snapshot, restored with ``pg_restore``).

A backup is written 0600 (it holds token hashes and everyone's ledger) and atomically (a crash leaves
no half-written file under the final name). The counts it prints are read from the same snapshot.
What ``COOP_DATA_DIR`` holds besides SQLite (workdirs, job logs, the artifact store) is files: back
them up with your usual file backup (docs/deploy.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coop.cli import output
from coop.cli.output import UserError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_MAGIC = b"PGDMP"
# what a backup is summed up by: enough to see at a glance that it holds the cooperative
COUNTS = {
    "members": "SELECT count(*) FROM member",
    "jobs": "SELECT count(*) FROM job",
    "attempts": "SELECT count(*) FROM attempt",
    "ledger_entries": "SELECT count(*) FROM ledgerentry",
    "ledger_sum": "SELECT coalesce(sum(amount), 0) FROM ledgerentry",
}
WHERE_FIX = "run this on the coordinator's host with its COOP_DATA_DIR / COOP_DATABASE_URL (as the coordinator's user)"


def _settings_url() -> URL:
    from pydantic import ValidationError
    from sqlalchemy import make_url

    from coop.server.config import load_settings

    try:
        return make_url(load_settings().resolved_database_url)
    except (ValidationError, ValueError) as exc:
        raise UserError(f"cannot read the coordinator's settings: {exc}", fix=WHERE_FIX) from None


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise UserError(f"{_shown(url)} is not a database file", fix=WHERE_FIX)
    return Path(url.database)


def _counts(conn: Connection | sqlite3.Connection) -> dict[str, float]:
    from sqlalchemy import text

    found: dict[str, float] = {}
    for name, sql in COUNTS.items():
        row = conn.execute(sql).fetchone() if isinstance(conn, sqlite3.Connection) else conn.execute(text(sql)).first()
        value = row[0] if row else 0
        found[name] = round(float(value), 6) if name == "ledger_sum" else int(value)
    return found


def _target(out: Path, url: URL) -> Path:
    """``out`` itself, or a dated file in it when it is a folder."""
    if out.is_dir():
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        suffix = "db" if url.get_backend_name() == "sqlite" else "dump"
        out = out / f"coop-{stamp}.{suffix}"
    return out


@contextlib.contextmanager
def _private_tmp(final: Path, force: bool) -> Iterator[Path]:
    """A 0600 temporary file beside ``final``, renamed onto it when the block succeeds."""
    if final.exists() and not force:
        raise UserError(f"{final} exists; nothing was written", field="OUT", fix="name a new file, or add --force")
    if not final.parent.is_dir():
        raise UserError(f"{final.parent} is not a folder", field="OUT", fix="create it first, or name another file")
    tmp = final.with_name(f".{final.name}.partial")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        os.chmod(tmp, 0o600)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


# --- SQLite --------------------------------------------------------------------------------------


def _backup_sqlite(url: URL, final: Path, force: bool) -> dict[str, float]:
    source = _sqlite_path(url)
    if not source.exists():
        raise UserError(f"no database at {source}", fix=WHERE_FIX)
    with _private_tmp(final, force) as tmp:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # all pages in one step: one consistent snapshot, the coordinator writing on
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            dst.commit()
            check = dst.execute("PRAGMA integrity_check").fetchone()
            if not check or check[0] != "ok":
                raise UserError(f"the copy of {source} fails SQLite's integrity check: {check}")
            counts = _counts(dst)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"cannot back up {source}: {exc}", fix=WHERE_FIX) from None
        finally:
            src.close()
            dst.close()
    return counts


def _restore_sqlite(backup: Path, url: URL, force: bool) -> dict[str, float]:
    target = _sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    dst = sqlite3.connect(target, timeout=30)
    try:
        if not force and _has_tables_sqlite(dst):
            raise _not_empty(_shown(url))
        src.backup(dst)  # through SQLite's own locking: the -wal of an old file is handled, not left stale
        return _counts(dst)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot restore {backup} into {target}: {exc}") from None
    finally:
        src.close()
        dst.close()


def _has_tables_sqlite(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'member'").fetchone() is not None


# --- PostgreSQL ----------------------------------------------------------------------------------


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI for pg_dump and pg_restore, and their environment: the password goes in
    PGPASSWORD, never on a command line that ``ps`` shows."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UserError(
            f"{name} is not installed: a PostgreSQL backup is {name}'s",
            fix="install the PostgreSQL client tools of the server's major version or newer "
            "(Debian: apt-get install postgresql-client)",
        )
    return found


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"{what} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _backup_postgres(url: URL, final: Path, force: bool) -> dict[str, float]:
    """pg_dump in the snapshot the counts are read in (``--snapshot``): they describe the file."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from coop.server import db

    pg_dump = _tool("pg_dump")
    uri, env = _libpq(url)
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        with (
            _private_tmp(final, force) as tmp,
            engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        ):
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            counts = _counts(conn)
            args = [pg_dump, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}"]
            _run([*args, f"--file={tmp}", f"--dbname={uri}"], env, "pg_dump")
            conn.rollback()
    except SQLAlchemyError as exc:
        raise UserError(f"cannot read {_shown(url)}: {exc.__class__.__name__}: {exc.args[0]}", fix=WHERE_FIX) from None
    finally:
        engine.dispose()
    return counts


def _restore_postgres(backup: Path, url: URL, force: bool) -> dict[str, float]:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from coop.server import db

    pg_restore = _tool("pg_restore")
    uri, env = _libpq(url)
    engine = db.make_engine(url.render_as_string(hide_password=False))
    try:
        if inspect(engine).has_table("member") and not force:
            raise _not_empty(_shown(url))
        # --clean drops what is there first; one transaction: a failed restore changes nothing
        args = [pg_restore, "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"]
        _run([*args, "--clean", "--if-exists", f"--dbname={uri}", str(backup)], env, "pg_restore")
        with engine.connect() as conn:
            return _counts(conn)
    except SQLAlchemyError as exc:
        raise UserError(f"cannot use {_shown(url)}: {exc.__class__.__name__}: {exc.args[0]}", fix=WHERE_FIX) from None
    finally:
        engine.dispose()


def _not_empty(where: str) -> UserError:
    return UserError(
        f"{where} already holds a cooperative; nothing was restored",
        fix="restore into a new database (or an empty COOP_DATA_DIR), or add --force to replace it "
        "once the coordinator is stopped",
    )


# --- the commands --------------------------------------------------------------------------------


def _report(action: str, path: Path, url: URL, counts: dict[str, float], as_json: bool) -> None:
    info: dict[str, Any] = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "database": _shown(url),
        "format": "sqlite" if url.get_backend_name() == "sqlite" else "pg_dump-custom",
        **counts,
    }
    if as_json:
        output.print_json(info)
        return
    output.say(
        f"{action} {_shown(url)} {'to' if action == 'Backed up' else 'from'} {path} ({info['bytes']:,} bytes, "
        f"{info['format']}): {counts['members']} members, {counts['jobs']} jobs, {counts['attempts']} attempts, "
        f"{counts['ledger_entries']} ledger entries summing to {counts['ledger_sum']:g}"
    )


def backup(
    out: Annotated[
        Path, typer.Argument(help="The backup file, or a folder for a dated one (coop-YYYYMMDDTHHMMSSZ.db|.dump).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Back up the coordinator's database, while it runs (run on its host, with its settings).

    SQLite: its online backup API; PostgreSQL: pg_dump's custom format. Restore: 'coop admin restore'."""
    url = _settings_url()
    final = _target(out.expanduser(), url)
    if url.get_backend_name() == "sqlite":
        counts = _backup_sqlite(url, final, force)
    elif url.get_backend_name() == "postgresql":
        counts = _backup_postgres(url, final, force)
    else:
        raise UserError(f"cannot back up a {url.get_backend_name()} database", fix="use SQLite or PostgreSQL")
    _report("Backed up", final, url, counts, as_json)


def restore(
    backup_file: Annotated[
        Path, typer.Argument(metavar="BACKUP", exists=True, dir_okay=False, help="A file from 'coop admin backup'.")
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a database that already holds a cooperative (stop it first).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Restore a backup into the coordinator's database (run on its host, the coordinator stopped).

    The target is what COOP_DATA_DIR / COOP_DATABASE_URL name; 'coop server' then starts on it, migrating
    it if the backup is older than this Coop."""
    url = _settings_url()
    with backup_file.open("rb") as f:
        magic = f.read(len(SQLITE_MAGIC))
    backend = url.get_backend_name()
    if magic.startswith(SQLITE_MAGIC) and backend == "sqlite":
        counts = _restore_sqlite(backup_file, url, force)
    elif magic.startswith(PG_MAGIC) and backend == "postgresql":
        counts = _restore_postgres(backup_file, url, force)
    else:
        kind = (
            "a SQLite backup"
            if magic.startswith(SQLITE_MAGIC)
            else "a pg_dump backup"
            if magic.startswith(PG_MAGIC)
            else "not a file 'coop admin backup' wrote"
        )
        raise UserError(
            f"{backup_file} is {kind}, and the coordinator's database is {_shown(url)}",
            field="BACKUP",
            fix="restore a SQLite backup with COOP_DATA_DIR (no COOP_DATABASE_URL) and a pg_dump one with a "
            "postgresql COOP_DATABASE_URL; moving between the two is not what these commands do",
        )
    _report("Restored", backup_file, url, counts, as_json)


def register(app: typer.Typer) -> None:
    """``coop admin backup`` and ``coop admin restore``."""
    app.command("backup")(backup)
    app.command("restore")(restore)
