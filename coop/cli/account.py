"""``coop login``, ``logout``, ``whoami`` and ``balance``: who you are to the coordinator, and your credit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from coop.cli import config, output
from coop.cli.output import UserError
from coop.client import CoopError

app = typer.Typer()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
TOKEN_FIX = (
    "copy the whole token (it was shown once), or ask an admin for a new one: "
    "coop admin token create --member YOUR_MEMBER"
)


def _verify(url: str, token: str, ca_file: Path | None = None) -> dict[str, str]:
    """GET /v1/me with the new credentials, so a typo is caught now and not at the first submit."""
    if not url.startswith(("http://", "https://")):
        raise UserError(
            f"{url!r} is not a coordinator URL",
            field="--url",
            fix="use the full URL, e.g. http://coop.example.org:8470",
        )
    try:
        # a new login trusts what it is given now, not a CA saved for another coordinator
        ca, option = (ca_file, "--ca-file") if ca_file else (os.environ.get("COOP_CA_FILE"), "COOP_CA_FILE")
        with config.make_client(url, token, ca, option) as client:
            me: dict[str, str] = client.me()
    except CoopError as exc:
        if exc.status == 401:
            raise UserError(
                f"the coordinator at {url} refused this token (unknown or revoked); nothing was saved",
                field="--token",
                fix=TOKEN_FIX,
            ) from None
        raise
    if me["kind"] != "user":
        raise UserError(
            "this is an agent token: it lets coop-agent register a node, not run commands",
            field="--token",
            fix="log in with your user token (coop admin member add prints one)",
        )
    return me


@app.command()
def login(
    url: Annotated[str, typer.Option(help="The coordinator, e.g. http://coop.example.org:8470.")],
    token: Annotated[str | None, typer.Option(help="Your API token; asked for (hidden) when left out.")] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM file of the CA that signed the coordinator's certificate (saved; else COOP_CA_FILE)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a token against the coordinator and save both for the next commands."""
    if token is None:
        token = typer.prompt("Token", hide_input=True, err=True)  # stdout stays clean for --json
    token = token.strip()
    url = url.strip().rstrip("/")
    if ca_file is not None:
        ca_file = ca_file.expanduser().resolve()  # the next commands may run from another folder
    me = _verify(url, token, ca_file)
    path = config.save(url, token, ca_file)
    if as_json:
        output.print_json({**me, "url": url, "config": str(path)})
        return
    output.say(f"Logged in to {url} as {me['user']} (member {me['member']}, {me['role']}); saved to {path}")


@app.command()
def logout() -> None:
    """Forget the saved URL and token."""
    path = config.config_path()
    output.say(f"Logged out: removed {path}" if config.remove() else "Not logged in: nothing to remove")
    if os.environ.get("COOP_TOKEN"):
        output.info("COOP_TOKEN is still set in this shell and keeps being used")


@app.command()
def whoami(as_json: JsonOpt = False) -> None:
    """Show the user, member and role the token belongs to."""
    with config.client() as client:
        me = client.me()
        url = client.url
    if as_json:
        output.print_json({**me, "url": url})
    else:
        output.say(f"{me['user'] or me['kind']} (member {me['member']}, {me['role']}) at {url}")


@app.command()
def balance(
    member: Annotated[str | None, typer.Option(help="Whose balance (admins: anyone). Default: your member.")] = None,
    history: Annotated[
        bool, typer.Option("--history", help="Show the ledger behind the sum, per job and day (--raw: every entry).")
    ] = False,
    raw: Annotated[bool, typer.Option("--raw", help="With --history: every entry, one per accrual slice.")] = False,
    days: Annotated[int, typer.Option(min=1, max=3660, help="With --history: the last N days (UTC).")] = 30,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="With --history --raw: the newest N entries.")] = 200,
    by_job: Annotated[bool, typer.Option("--by-job", help="Sum the ledger per job: what each cost or earned.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a member's credit: earned by donating capacity, spent by running jobs."""
    with config.client() as client:
        member = member or client.me()["member"]
        result = client.balance(member, history=history and (raw or as_json), limit=limit)
        if history and not raw:
            result["days"] = client.ledger_by_day(member, days)
        if by_job:
            result["by_job"] = client.ledger_by_job(member)
    if as_json:
        output.print_json(result)
        return
    output.say(f"{result['member']}: {output.credits(result['balance'])} credits")
    used, quota = result.get("storage_used_bytes", 0), result.get("storage_quota_bytes", 0)
    output.say(f"storage: {output.size(used, 1000)} of {output.size(quota, 1000)} (outputs and checkpoints)")
    if by_job:
        output.show(per_job_table(result["by_job"]))
    if history and raw:
        rows = [
            (
                output.timestamp(e["at"]),
                output.credits(e["amount"]),
                e["kind"],
                e["job_id"] or "",
                e["node_id"] or "",
                e["note"],
            )
            for e in result["history"] or []
        ]
        output.show(output.table(("TIME", "AMOUNT", "KIND", "JOB", "NODE", "NOTE"), rows))
    elif history:
        show_days(result["days"], days)


def show_days(rows: list[dict[str, Any]], days: int) -> None:
    """The ledger per UTC day, job and kind, in one unit readable for the sums at hand."""
    if not rows:
        output.say(f"no ledger entries in the last {days} days")
        return
    scale, unit = output.credit_unit([r["amount"] for r in rows])
    table = output.table(
        ("DAY (UTC)", "JOB", "WHAT", "WITH", unit.upper(), "GPU TIME", "FROM-TO", "ENTRIES"),
        [
            (
                r["day"],
                f"{r['job_id']} {r['job_name'] or ''}".strip() if r["job_id"] is not None else "-",
                KIND_NAMES.get(r["kind"], r["kind"]),
                _with(r),
                output.scaled(r["amount"], scale),
                output.duration(round(r["gpu_hours"] * 3600)) if r["gpu_hours"] else "-",
                f"{output.clock(r['first_at'])}-{output.clock(r['last_at'])}",
                r["entries"],
            )
            for r in rows
        ],
    )
    output.show(table)
    if unit != "credits":
        output.say(f"amounts in {unit} ({'1/1000' if scale == 1000 else '1/1000000'} of a credit); {CREDIT}")
    else:
        output.say(CREDIT)


CREDIT = "1 credit = 1 hour of 100 measured TFLOP/s; --raw lists every entry"


def _with(row: dict[str, Any]) -> str:
    """Who was on the other side: the donors its job ran on, the member whose job ran here, the node."""
    who = row.get("counterpart") or ""
    kind = row["kind"]
    if kind == "spend":
        return f"on {who}'s nodes ({', '.join(row['nodes'])})" if who else ", ".join(row["nodes"])
    if kind == "earn":
        return f"{who}'s job on {', '.join(row['nodes'])}" if who else ", ".join(row["nodes"])
    if kind == "grant":
        return row.get("note") or ""
    return who


KIND_NAMES = {
    "spend": "spent running it",
    "earn": "earned hosting it",
    "own": "own job on own node",
    "idle": "idle donated capacity",
    "grant": "granted by an admin",
}


def per_job_table(rows: list[dict[str, Any]]) -> Any:
    """One row per job and kind (``GET /members/{name}/ledger/jobs``): a job's slices summed."""
    return output.table(
        ("JOB", "NAME", "WHAT", "CREDITS", "GPU-HOURS"),
        [
            (
                r["job_id"] or "-",
                r["job_name"] or "",
                KIND_NAMES.get(r["kind"], r["kind"]),
                output.credits(r["amount"]),
                f"{r['gpu_hours']:.3g}" if r["gpu_hours"] else "-",
            )
            for r in rows
        ],
    )
