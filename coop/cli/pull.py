"""``coop pull``: a job's outputs, from the coordinator's artifact store to a local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from coop import transfer
from coop.cli import config, output
from coop.cli.output import UserError

app = typer.Typer()


def chosen_set(sets: list[dict[str, Any]], job: int, attempt: int | None) -> dict[str, Any]:
    """The attempt's output set (default: the latest attempt that sent any)."""
    if not sets:
        which = f"attempt {attempt} of job {job}" if attempt else f"job {job}"
        raise UserError(
            f"{which} has no outputs in the store",
            field="--attempt" if attempt else "job",
            fix="a job's outputs are what it writes under $COOP_OUTPUT_DIR; 'coop status JOB' lists them "
            "once its attempt has stopped",
        )
    return sets[-1]


def target_of(root: Path, relative: str) -> Path:
    """Where a file of the set goes: inside ``root`` (the store refuses paths that leave it; checked
    again here, for a coordinator that did not)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UserError(f"the store named a path outside the folder: {relative!r}", fix="report this to your admin")
    return target


@app.command()
def pull(
    job: Annotated[int, typer.Argument(help="Job ID, as printed by 'coop submit' and 'coop status'.")],
    to: Annotated[Path | None, typer.Option("--to", help="Folder to put them in. Default: ./job-<ID>-outputs")] = None,
    attempt: Annotated[int | None, typer.Option(min=1, help="This attempt's outputs. Default: the latest.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Download a job's outputs (what it wrote under $COOP_OUTPUT_DIR), verified by SHA-256.

    A download that was cut resumes where it stopped when run again; files already there with the
    same bytes are not fetched again."""
    root = to or Path(f"job-{job}-outputs")
    with config.client() as client:
        chosen = chosen_set(client.outputs(job, attempt), job, attempt)
        root.mkdir(parents=True, exist_ok=True)
        items = chosen["items"]
        fetched = 0
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=output.stderr(), transient=True, disable=as_json) as progress:
            task = progress.add_task(f"job {job} outputs", total=chosen["bytes"])
            for item in items:
                target = target_of(root, item["path"])
                if transfer.already_there(target, item["size"], item["sha256"]):
                    progress.advance(task, item["size"])
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fetched += transfer.download(
                    client, f"/jobs/{job}/files/{item['id']}", target, item["size"], item["sha256"],
                    progress=lambda n: progress.advance(task, n), say=output.say,
                )  # fmt: skip
    result = {"job": job, "attempt": chosen["attempt"], "to": str(root.resolve()), "files": len(items),
              "bytes": chosen["bytes"], "fetched_bytes": fetched}  # fmt: skip
    if as_json:
        output.print_json(result)
        return
    output.say(
        f"job {job}, attempt {chosen['attempt']}: {len(items)} files, {output.size(chosen['bytes'], 1000)} "
        f"in {root.resolve()} (SHA-256 checked; {output.size(fetched, 1000)} downloaded)"
    )
