"""``coop submit``, ``status``, ``logs`` and ``cancel``: a researcher's day."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from coop.cli import arrays as cli_arrays
from coop.cli import config, output, workdir
from coop.cli.output import UserError
from coop.client import CoopClient
from coop.schemas import JOB_STATES, TERMINAL_STATES
from coop.spec import JobSpec, SpecError, parse_job_yaml

app = typer.Typer()

POLL_S = 0.5
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
JobId = Annotated[int, typer.Argument(help="Job ID, as printed by 'coop submit' and 'coop status'.")]
TaskOpt = Annotated[
    int | None, typer.Option("--task", min=0, help="A job array's task, by its index (JOB: the array's id).")
]


# --- submit -------------------------------------------------------------------------------------


def load_spec(job_file: Path) -> JobSpec:
    try:
        return parse_job_yaml(job_file.read_text(encoding="utf-8"))
    except SpecError as exc:
        raise UserError(f"{job_file} is not a valid job file", errors=[e.model_dump() for e in exc.errors]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {job_file}: {exc}", fix="give the path of a job.yaml") from None


def workdir_of(spec: JobSpec, job_file: Path) -> Path | None:
    """``workdir`` is relative to the job file's folder, not to where ``coop`` runs; null: none."""
    if spec.workdir is None:
        return None
    return job_file.parent / Path(spec.workdir).expanduser()


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml to run.", exists=True, dir_okay=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream logs and wait for the end.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and pack, print the request, send nothing.")
    ] = False,
    array: Annotated[
        str | None,
        typer.Option(
            "--array",
            help="Run it as a job array: a count (100), indices (0-99, 0-99:2, 1,5,7), optionally %N: at most N "
            "at once (0-99%10). Overrides array: in job.yaml.",
        ),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Tasks of the array that may run at once.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job (or a job array: array: in job.yaml, or --array): check job.yaml, pack and upload its
    workdir once, queue it."""
    spec = cli_arrays.with_option(load_spec(job_file), array, max_parallel)
    root = workdir_of(spec, job_file)
    packed = workdir.pack_with_progress(root) if root is not None else None
    sha256 = packed.sha256 if packed else None
    spec_dict = spec.model_dump(mode="json", by_alias=True)
    request = {"spec": spec_dict, "workdir_sha256": sha256}
    if dry_run:
        _print_dry_run(request, packed, as_json)
        return
    with config.client() as client:
        if packed is not None:
            workdir.upload(client, packed)
        if spec.array is not None:
            raise typer.Exit(_submit_array(client, spec_dict, sha256, follow, as_json))
        job = client.submit(spec_dict, sha256)
        if not follow:
            if as_json:
                output.print_json(job)
            else:
                reason = f" ({job['reason']})" if job["reason"] else ""
                output.say(f"Submitted job {job['id']} ({job['name']}): {job['state']}{reason}")
                output.info(f"Watch it with 'coop status {job['id']}' or 'coop logs -f {job['id']}'")
            return
        if not as_json:
            output.info(f"Submitted job {job['id']} ({job['name']}); following it (Ctrl-C stops following)")
        raise typer.Exit(_follow_to_end(client, job["id"], as_json))


def _submit_array(client: CoopClient, spec: dict[str, Any], sha256: str | None, follow_: bool, as_json: bool) -> int:
    created = client.submit_array(spec, sha256)
    if as_json and not follow_:
        output.print_json(created)
    elif not as_json:
        cli_arrays.submitted(created)
    if not follow_:
        return 0
    try:
        code = cli_arrays.follow(client, created["id"], POLL_S)
    except KeyboardInterrupt:
        output.info(f"Stopped following; array {created['id']} keeps running. See it with: coop status {created['id']}")
        return 130
    if as_json:
        output.print_json(client.array(created["id"]))
    return code


def _print_dry_run(request: dict[str, Any], packed: workdir.Packed | None, as_json: bool) -> None:
    packing = (
        {"path": str(packed.root), "files": packed.files, "bytes": len(packed.data), "sha256": packed.sha256}
        if packed
        else None
    )
    if as_json:
        output.print_json({"request": request, "workdir": packing})
        return
    output.show(JSON.from_data(request))
    where = (
        f"workdir {packed.root}: {packed.files} files, {output.size(len(packed.data))} packed"
        if packed
        else "no workdir (workdir: null)"
    )
    output.say(f"Dry run: the request above is valid; {where}. Nothing was sent.")


# --- following ----------------------------------------------------------------------------------


class LogTail:
    """Reads a job's log from where it stopped.

    Unless pinned to one attempt, it moves on to the next attempt after a retry, so following a job
    shows every attempt's output once. ``eof`` turns true when nothing more can come.
    """

    def __init__(
        self, client: CoopClient, job_id: int, attempt: int | None = None, from_first: bool = False, rank: int = 0
    ) -> None:
        self.client, self.job_id, self.rank = client, job_id, rank
        self.pinned = attempt is not None
        self.attempt = attempt or 0
        self.from_first = from_first
        self.offset = 0
        self.eof = False

    def read(self, job: dict[str, Any]) -> str:
        if self.attempt == 0:
            self.attempt = min(job["attempts"], 1) if self.from_first else job["attempts"]
            if self.attempt == 0:  # nothing has run yet
                self.eof = job["state"] in TERMINAL_STATES
                return ""
        parts: list[str] = []
        while True:
            chunk = self.client.logs(self.job_id, self.offset, self.attempt, self.rank)
            parts.append(chunk["data"])
            self.offset = chunk["next_offset"]
            if not chunk["eof"]:
                if chunk["data"]:
                    continue  # more may be waiting beyond one chunk
                return "".join(parts)
            # This attempt is over: the job ended, or a retry began (perhaps after `job` was read).
            if not self.pinned and self.client.job(self.job_id)["attempts"] > self.attempt:
                self.attempt, self.offset = self.attempt + 1, 0
                parts.append(f"--- attempt {self.attempt} ---\n")
                continue
            self.eof = True
            return "".join(parts)


class LogWriter:
    """Log text to stdout: as is when piped; as whole lines above the live status on a terminal."""

    def __init__(self, console: Console, live: bool) -> None:
        self.console, self.live, self.partial = console, live, ""

    def write(self, text: str) -> None:
        if not self.live:
            if text:
                typer.echo(text, nl=False)
            return
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self.live and self.partial:
            self._line(self.partial)
        self.partial = ""

    def _line(self, line: str) -> None:
        # A progress bar redraws with \r: show what the terminal would, the last redraw.
        self.console.out(next((s for s in reversed(line.split("\r")) if s), ""), highlight=False)


def retries_text(job: dict[str, Any]) -> str:
    """What the job may retry: after lost nodes, after its own failures; preemptions are free."""
    on_failure = job.get("retries_on_failure", 0)
    return f"retries: {job['retries']} if its node is lost, {on_failure} if it fails; preemptions do not count"


def status_line(job: dict[str, Any], elapsed: float) -> str:
    parts = [f"job {job['id']} {job['state']}"]
    if job["attempts"]:
        parts.append(f"attempt {job['attempts']}")  # preemptions add attempts too: no fixed total
    parts.append(output.duration(elapsed))
    if job["reason"]:
        parts.append(job["reason"])
    return " · ".join(parts)


def follow(client: CoopClient, job_id: int, logs: bool = True) -> dict[str, Any]:
    """Poll the job until it ends, streaming its logs; the final job. KeyboardInterrupt stops it."""
    console = output.stdout()
    live = console.is_terminal
    writer = LogWriter(console, live)
    tail = LogTail(client, job_id, from_first=True)
    started, last_seen = time.monotonic(), None
    with console.status("") if live else nullcontext() as status:
        try:
            while True:
                job = client.job(job_id)
                if logs:
                    writer.write(tail.read(job))
                line = status_line(job, time.monotonic() - started)
                if status is not None:
                    status.update(Text(line))
                elif (job["state"], job["attempts"]) != last_seen:
                    output.info(line)
                    last_seen = (job["state"], job["attempts"])
                if job["state"] in TERMINAL_STATES and (tail.eof or not logs):
                    return job
                time.sleep(POLL_S)
        finally:
            writer.close()


def stopped_following(job_id: int) -> typer.Exit:
    output.info(f"Stopped following; job {job_id} keeps running. Follow it again with: coop logs -f {job_id}")
    return typer.Exit(130)


def _follow_to_end(client: CoopClient, job_id: int, as_json: bool) -> int:
    """Exit status: 0 when the job succeeded, 1 otherwise."""
    try:
        job = follow(client, job_id, logs=not as_json)
    except KeyboardInterrupt:
        raise stopped_following(job_id) from None
    if as_json:
        output.print_json(job)
    if job["state"] == "SUCCEEDED":
        output.info(f"job {job_id} SUCCEEDED")
        return 0
    reason = job["reason"] or "no reason given"
    if job["exit_code"] is not None and "exit code" not in reason:
        reason += f" (exit code {job['exit_code']})"
    output.print_error(f"job {job_id} {job['state']}: {reason}")
    return 1


# --- status, logs, cancel -----------------------------------------------------------------------


def _states(values: list[str] | None) -> list[str]:
    states = [v.upper() for v in values or []]
    unknown = [s for s in states if s not in JOB_STATES]
    if unknown:
        raise UserError(
            f"unknown job state {', '.join(unknown)}", field="--state", fix=f"use one of {', '.join(JOB_STATES)}"
        )
    return states


@app.command()
def status(
    job: Annotated[int | None, typer.Argument(help="A job's ID for its details; leave out to list jobs.")] = None,
    state: Annotated[list[str] | None, typer.Option("--state", "-s", help="Only jobs in this state (repeat).")] = None,
    all_members: Annotated[bool, typer.Option("--all-members", help="Every member's jobs (admins).")] = False,
    member: Annotated[str | None, typer.Option(help="This member's jobs (admins). Default: yours.")] = None,
    task: TaskOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your member's jobs (an array as one row, with its tasks' counts), or show one job with its
    attempts and events (an array: its tasks; --task N: its task of index N)."""
    if all_members and member:
        raise UserError("--all-members and --member exclude each other", field="--member", fix="give one of them")
    if task is not None and job is None:
        raise UserError("--task needs the array's id", field="--task", fix="e.g. coop status 12 --task 7")
    states = _states(state)
    with config.client() as client:
        if job is not None:
            _show_one(client, job, task, states, as_json)
            return
        who = None if all_members else member or client.me()["member"]
        jobs = client.jobs(states, member=who, tasks=False) + client.arrays(states, member=who)
    jobs.sort(key=lambda j: j["id"], reverse=True)
    if as_json:
        output.print_json(jobs)
    elif not jobs:
        output.say("No jobs" + (f" in state {', '.join(states)}" if states else "") + ".")
    else:
        rows = [cli_arrays.array_row(j) if "counts" in j else _job_row(j) for j in jobs]
        output.show(output.table(("ID", "NAME", "KIND", "STATE", "GPUS", "MEMBER", "AGE", "REASON"), rows))


def _show_one(client: CoopClient, job_id: int, task: int | None, states: list[str], as_json: bool) -> None:
    """One job; for an array's id, the array and its tasks (in ``states``); with ``task``, that task."""
    detail = client.job(cli_arrays.task_job(client, job_id, task)["id"] if task is not None else job_id)
    if task is None and cli_arrays.head_of_array(detail):
        array, tasks = client.array(job_id), client.array_tasks(job_id, states)
        if as_json:
            output.print_json({**array, "tasks": tasks})
        else:
            output.show(cli_arrays.detail(array, tasks, bool(states)))
    elif as_json:
        output.print_json(detail)
    else:
        output.show(job_detail(detail))


def _job_row(j: dict[str, Any]) -> tuple[Any, ...]:
    return (j["id"], j["name"], j["kind"], output.state(j["state"]), gpus_of(j), j["member"],
            output.ago(j["submitted_at"]), j["reason"] or "")  # fmt: skip


def gpus_of(j: dict[str, Any]) -> str:
    """'2', or a gang's '4 nodes x 2'."""
    nodes = j.get("nodes", 1)
    return f"{nodes} nodes x {j['gpus']}" if nodes > 1 else str(j["gpus"])


def _attempt_row(a: dict[str, Any]) -> tuple[Any, ...]:
    where = f"node {a['node_id']}" if a["node_id"] else f"pool {a['pool_id']}" if a["pool_id"] else "-"
    if a.get("gang") and not a["pool_id"]:
        where = "nodes " + ", ".join(str(node_id) for node_id, _ in a["gang"])
    exit_code = "" if a["exit_code"] is None else a["exit_code"]
    return (a["number"], output.state(a["state"]), a["backend"], where, output.timestamp(a["started_at"]),
            output.timestamp(a["finished_at"]), exit_code, a["reason"] or "")  # fmt: skip


def _event_row(e: dict[str, Any]) -> tuple[Any, ...]:
    arrow = (e["from_state"] + " → ") if e["from_state"] else ""
    return output.timestamp(e["at"]), e["attempt"] or "", Text.assemble(arrow, output.state(e["to_state"])), e["reason"]


def job_detail(job: dict[str, Any]) -> Group:
    """A summary, the attempts table and the events table."""
    title = Text.assemble(
        f"Job {job['id']}  ", (job["name"], "bold"), f"  ({job['kind']})  ", output.state(job["state"])
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    exit_code = "" if job["exit_code"] is None else str(job["exit_code"])
    for key, value in (
        ("member", job["member"]), ("gpus", gpus_of(job)), ("priority", job["priority"]),
        ("preemptible", "yes" if job["preemptible"] else "no"),
        ("attempts", f"{job['attempts']} ({retries_text(job)})"),
        ("reason", job["reason"] or ""), ("exit code", exit_code),
        ("submitted", f"{output.timestamp(job['submitted_at'])} ({output.ago(job['submitted_at'])})"),
        ("started", output.timestamp(job["started_at"])), ("finished", output.timestamp(job["finished_at"])),
        ("workdir", (job.get("workdir_sha256") or "none")[:16]),
        *([("array", _array_of(job))] if job.get("array_id") is not None else []),
    ):  # fmt: skip
        facts.add_row(key, Text(str(value)))  # Text: a reason like "[Errno 2]" is not markup
    attempts = output.table(
        ("#", "STATE", "BACKEND", "WHERE", "STARTED", "FINISHED", "EXIT", "REASON"),
        [_attempt_row(a) for a in job["attempts_detail"]],
        title="Attempts",
    )
    events = output.table(
        ("TIME", "ATTEMPT", "TRANSITION", "REASON"), [_event_row(e) for e in job["events"]], title="Events"
    )
    parts: list[Any] = [title, facts, ""]
    if job["attempts_detail"]:
        parts += [attempts, ""]
    if job.get("outputs"):
        parts += [outputs_table(job["id"], job["outputs"]), ""]
    return Group(*parts, events)


def _array_of(job: dict[str, Any]) -> str:
    values = ", ".join(f"{k}={v}" for k, v in (job.get("array_values") or {}).items())
    return f"task {job['array_index']} of array {job['array_id']}" + (f" ({values})" if values else "")


OUTPUT_ROWS = 20  # files listed per job; 'coop status JOB --json' and 'coop pull' have them all


def outputs_table(job_id: int, sets: list[dict[str, Any]]) -> Table:
    rows = [(s["attempt"], f["path"], output.size(f["size"], 1000), f["sha256"][:12]) for s in sets for f in s["items"]]
    more = len(rows) - OUTPUT_ROWS
    if more > 0:
        rows = [*rows[:OUTPUT_ROWS], ("", f"... {more} more", "", "")]
    total = sum(s["bytes"] for s in sets)
    title = f"Outputs ({sum(s['files'] for s in sets)} files, {output.size(total, 1000)}: coop pull {job_id})"
    return output.table(("ATTEMPT", "FILE", "SIZE", "SHA-256"), rows, title=title)


@app.command()
def logs(
    job: JobId,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    attempt: Annotated[int | None, typer.Option(min=1, help="This attempt's log. Default: the latest.")] = None,
    rank: Annotated[int, typer.Option(min=0, help="A multi-node job's rank (its node). Default: 0.")] = 0,
    task: TaskOpt = None,
) -> None:
    """Print a job's output (stdout and stderr of its run; a multi-node job's: one rank's; a job array's:
    one task's, --task INDEX)."""
    with config.client() as client:
        target = cli_arrays.task_job(client, job, task)["id"] if task is not None else job
        tail = LogTail(client, target, attempt, rank=rank)
        writer = LogWriter(output.stdout(), live=False)
        try:
            while True:
                found = client.job(target)
                if task is None and cli_arrays.head_of_array(found):
                    raise UserError(
                        f"job {job} is a job array: its tasks each have their own output",
                        field="--task",
                        fix=f"name one by its index: coop logs {job} --task 0 (coop status {job} lists them)",
                    )
                writer.write(tail.read(found))
                if tail.eof or not follow_:
                    return
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            raise stopped_following(target) from None


@app.command()
def cancel(job: JobId, task: TaskOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a job; a running attempt is stopped. An array's id cancels every task not ended yet (--task N:
    only that one)."""
    with config.client() as client:
        target = client.job(job) if task is None else cli_arrays.task_job(client, job, task)
        if task is None and cli_arrays.head_of_array(target):
            array = client.cancel_array(job)
            if as_json:
                output.print_json(array)
            else:
                counts = cli_arrays.counts_text(array["counts"])
                output.say(f"Cancelled array {array['id']} ({array['name']}): {counts}")
            return
        cancelled = client.cancel(target["id"])
    if as_json:
        output.print_json(cancelled)
    else:
        output.say(f"Cancelled job {cancelled['id']} ({cancelled['name']})")
