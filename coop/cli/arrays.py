"""Job arrays in ``coop submit``, ``status``, ``logs`` and ``cancel`` (the commands are in ``jobs.py``).

An array's id is its first task's job id: ``coop status 12`` shows the array when job 12 is the first
task of array 12, and ``--task N`` picks one task by its index.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from coop import arrays
from coop.cli import output
from coop.cli.output import UserError
from coop.client import CoopClient
from coop.schemas import TERMINAL_STATES
from coop.spec import JobSpec, SpecError, validate_spec

TASK_ROWS = 500  # tasks shown by 'coop status ARRAY'; --state narrows them, --json has them all
STATE_ORDER = ("RUNNING", "STARTING", "PENDING", "PREEMPTED", "LOST", "SUCCEEDED", "FAILED", "CANCELLED")


def with_option(spec: JobSpec, array: str | None, max_parallel: int | None) -> JobSpec:
    """The spec with ``coop submit --array`` (Slurm's forms: 0-99, 0-99:2, 1,5,7, a count, %N for at most
    N at once) and ``--max-parallel`` applied over what job.yaml says."""
    if array is None and max_parallel is None:
        return spec
    raw = spec.model_dump(mode="json", by_alias=True)
    if array is not None:
        try:
            raw["array"], limit = arrays.parse_option(array)
        except arrays.ArrayError as exc:
            raise UserError(f"--array {array!r}: {exc.message}", field="--array", fix=exc.fix) from None
        if limit is not None:
            raw["max_parallel"] = limit
    if max_parallel is not None:
        raw["max_parallel"] = max_parallel
    try:
        return validate_spec(raw)
    except SpecError as exc:
        raise UserError("the array is not valid", errors=[e.model_dump() for e in exc.errors]) from None


def counts_text(counts: dict[str, int]) -> str:
    """'3 RUNNING, 5 PENDING, 2 SUCCEEDED' (busiest states first)."""
    ordered = sorted(counts.items(), key=lambda kv: STATE_ORDER.index(kv[0]) if kv[0] in STATE_ORDER else 99)
    return ", ".join(f"{n} {state}" for state, n in ordered if n)


def submitted(array: dict[str, Any]) -> None:
    limit = f", at most {array['max_parallel']} at once" if array["max_parallel"] else ""
    output.say(f"Submitted array {array['id']} ({array['name']}): {array['size']} tasks{limit}")
    output.info(
        f"Watch it with 'coop status {array['id']}'; one task's output with 'coop logs {array['id']} --task INDEX'"
    )


def array_row(a: dict[str, Any]) -> tuple[Any, ...]:
    """An array as one row of 'coop status': its state, and its tasks' counts by state."""
    gpus = f"{a['nodes']} nodes x {a['gpus']}" if a["nodes"] > 1 else str(a["gpus"])
    return (a["id"], f"{a['name']} [{a['size']}]", a["kind"], output.state(a["state"]), gpus, a["member"],
            output.ago(a["submitted_at"]), f"array: {counts_text(a['counts'])}")  # fmt: skip


def head_of_array(job: dict[str, Any]) -> bool:
    """Whether this job's id is its array's (the first task's)."""
    return job.get("array_id") is not None and job["array_id"] == job["id"]


def detail(array: dict[str, Any], tasks: list[dict[str, Any]], filtered: bool) -> Group:
    title = Text.assemble(
        f"Array {array['id']}  ", (array["name"], "bold"), f"  ({array['kind']})  ", output.state(array["state"])
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    limit = str(array["max_parallel"]) if array["max_parallel"] else "no limit"
    for key, value in (
        ("member", array["member"]), ("tasks", f"{array['size']}: {counts_text(array['counts'])}"),
        ("max parallel", limit), ("spec array", str(array["spec"].get("array"))),
        ("submitted", f"{output.timestamp(array['submitted_at'])} ({output.ago(array['submitted_at'])})"),
    ):  # fmt: skip
        facts.add_row(key, Text(value))
    keys = list(tasks[0]["array_values"]) if tasks and tasks[0].get("array_values") else []
    rows = [
        (t["array_index"], t["id"], output.state(t["state"]), *[t["array_values"][k] for k in keys],
         t["attempts"], t["reason"] or "")
        for t in tasks[:TASK_ROWS]
    ]  # fmt: skip
    what = "matching tasks" if filtered else "tasks"
    title_text = f"Tasks ({len(tasks)} {what}" + (f", the first {TASK_ROWS} shown" if len(tasks) > TASK_ROWS else "")
    title_text += f"; one task: coop status {array['id']} --task INDEX)"
    table = output.table(("INDEX", "JOB", "STATE", *[k.upper() for k in keys], "ATTEMPTS", "REASON"), rows, title_text)
    return Group(title, facts, "", table)


def task_job(client: CoopClient, array_id: int, index: int) -> dict[str, Any]:
    """The job of task ``index`` of array ``array_id``; a job that heads no array is said so."""
    job = client.job(array_id)
    if not head_of_array(job):
        where = f"a task of array {job['array_id']}" if job.get("array_id") else "not an array"
        raise UserError(
            f"job {array_id} is {where}",
            field="--task",
            fix=f"give --task with an array's id (coop status {job.get('array_id') or array_id}), or leave it out",
        )
    return client.array_task(array_id, index)  # type: ignore[no-any-return]


def follow(client: CoopClient, array_id: int, poll_s: float) -> int:
    """Print the tasks' counts as they change until every task ended; 0 if all succeeded, else 1."""
    last = None
    while True:
        array = client.array(array_id)
        line = f"array {array_id} {array['state']}: {counts_text(array['counts'])}"
        if line != last:
            output.info(line)
            last = line
        if all(state in TERMINAL_STATES for state in array["counts"]):
            return 0 if array["state"] == "SUCCEEDED" else 1
        time.sleep(poll_s)
