"""Shared output for every command: tables and ``--json`` on stdout, red errors on stderr, times.

Errors are handled once, in :class:`CoopGroup`: commands just raise ``CoopError`` (the API said no),
``SpecError`` (job.yaml is wrong) or :class:`UserError` (anything else the user can fix), and the
user gets the message, the field and the fix, with exit code 1.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from coop.client import CoopError
from coop.spec import SpecError

STATE_STYLES = {
    "PENDING": "yellow", "STARTING": "cyan", "RUNNING": "bold blue", "PREEMPTED": "magenta", "LOST": "red",
    "REFUSED": "yellow", "SUCCEEDED": "green", "FAILED": "bold red", "CANCELLED": "dim",
    "online": "green", "offline": "red", "left": "dim", "retired": "dim",
}  # fmt: skip


class UserError(Exception):
    """A problem on the user's side of the wire, said the way the API says its own."""

    def __init__(
        self, message: str, field: str = "", fix: str = "", errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if errors is None:
            errors = [{"field": field, "message": message, "fix": fix}] if field or fix else []
        self.errors = errors


def describe(message: str, errors: Iterable[dict[str, str]]) -> str:
    """``error: message`` then, per field, what is wrong with it and the fix."""
    lines = [f"error: {message}"]
    for e in errors:
        field, text, fix = e.get("field") or "", e.get("message") or "", e.get("fix") or ""
        indent = "  "
        if text and text not in message:
            lines.append(f"  {field}: {text}" if field else f"  {text}")
            indent = "    "
        elif field:
            lines.append(f"  field: {field}")
        if fix:
            lines.append(f"{indent}fix: {fix}")
    return "\n".join(lines)


# The coordinator's fixes speak to API clients (GET /v1/tokens, see /docs, the Authorization header).
# A person at the CLI gets the command that does it instead: (pattern of the API's fix, the CLI's).
# "{command}" is the command that failed, e.g. "coop admin grant".
CLI_ADVICE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^send 'Authorization: Bearer <token>'.*"),
     "log in again with 'coop login --url URL --token TOKEN' (or set COOP_TOKEN); "
     "an admin gives you a token ('coop admin token create --member YOUR_MEMBER')"),
    (re.compile(r"^list your tokens with GET /v1/tokens$"), "list your tokens with 'coop admin token list'"),
    (re.compile(r"^send a finite number within the documented bounds for '([^']*)'; see /docs.*"),
     r"give a finite number within the bounds '{command} --help' gives for \1"),
    (re.compile(r"^send a value of the documented type; see /docs.*"),
     "give a value of the type '{command} --help' names"),
    (re.compile(r"^see /docs for the request schema$"), "see '{command} --help' for what it takes"),
    (re.compile(r"^(?:add the required field|remove) '([^']*)'.*"),
     r"this coop and the coordinator disagree about \1 (different versions of Coop): update coop, or ask "
     r"your admin which version the coordinator runs"),
    (re.compile(r"^PUT the archive to /v1/workdirs/<sha256> before submitting$"),
     "submit again with 'coop submit' (it uploads the workdir first); the coordinator no longer has this one"),
    (re.compile(r"^PUT the archive to /v1/workdirs/<sha256 of exactly those bytes>$"),
     "run the command again: the workdir arrived damaged"),
    (re.compile(r"^post it to /v1/arrays \(coop submit does\), or remove array: for one job$"),
     "submit it with 'coop submit job.yaml' (it sends arrays as arrays), or remove array: for one job"),
    (re.compile(r"^(.*), or post one job to /v1/jobs$"), r"\1, or submit one job: remove array: and --array"),
    (re.compile(r"^leave '(member|user)' out$"), r"leave --\1 out"),
    (re.compile(r"^send a smaller request; job specs are limited to 1 MiB$"),
     "make job.yaml smaller: a job spec is at most 1 MiB (data belongs in the workdir or inputs:)"),
    (re.compile(r"^send a JSON object with numbers of at most a few hundred digits$"),
     "write numbers of at most a few hundred digits in job.yaml"),
    (re.compile(r"^send UTF-8 text without lone surrogates.*"), "write job.yaml as UTF-8 text"),
    (re.compile(r"^a job spec nests a few levels.*send the mapping from docs/jobspec.md$"),
     "write job.yaml as docs/jobspec.md shows: a few levels of nesting"),
    (re.compile(r"^percent-encode UTF-8 text only.*"), "use names of plain UTF-8 text, without NUL characters"),
]  # fmt: skip
CLI_FIELDS = {"Authorization": "token (COOP_TOKEN or coop login)", "member": "--member", "user": "--user"}


def cli_advice(fix: str, command: str = "coop") -> str:
    """The CLI's words for one of the coordinator's fixes (unchanged when it names no API call)."""
    for pattern, advice in CLI_ADVICE:
        if pattern.search(fix):
            return pattern.sub(advice.replace("{command}", command.replace("\\", "\\\\")), fix, count=1)
    return fix


def for_cli(errors: Iterable[dict[str, str]], command: str = "coop") -> list[dict[str, str]]:
    """The coordinator's field errors with CLI fields and fixes."""
    return [
        {**e, "field": CLI_FIELDS.get(e.get("field") or "", e.get("field") or ""),
         "fix": cli_advice(e.get("fix") or "", command)}
        for e in errors
    ]  # fmt: skip


def error_text(exc: Exception, command: str = "coop") -> str:
    if isinstance(exc, CoopError):
        return describe(exc.message, for_cli(exc.errors, command))
    if isinstance(exc, UserError):
        return describe(exc.message, exc.errors)
    if isinstance(exc, SpecError):
        return describe("invalid job file", [e.model_dump() for e in exc.errors])
    return f"error: {exc}"


def print_error(text: str) -> None:
    stderr().print(Text(text, style="red"), soft_wrap=True)


class CoopGroup(TyperGroup):
    """The root command: turns the errors a user can act on into a message and exit code 1."""

    def invoke(self, ctx: Any) -> Any:
        command = self._command_of(ctx)
        try:
            return super().invoke(ctx)
        except (CoopError, SpecError, UserError) as exc:
            print_error(error_text(exc, command))
            raise typer.Exit(1) from None

    def _command_of(self, ctx: Any) -> str:
        """``coop admin grant`` for ``coop admin grant alice 5``: what the user's fix can point --help at."""
        words = [ctx.info_name or "coop"]
        args = [*getattr(ctx, "_protected_args", []), *ctx.args]
        group: Any = self
        for arg in args:
            if arg.startswith("-"):
                continue
            sub = group.get_command(ctx, arg) if hasattr(group, "get_command") else None  # typer's own click
            if sub is None:
                break
            words.append(arg)
            group = sub
        return " ".join(words)


def _width() -> int | None:
    """Full width on a terminal; wide when piped, so `coop status | grep` sees whole names."""
    return None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200


def stdout() -> Console:
    return Console(highlight=False, width=_width())


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def say(message: str | Text) -> None:
    """A command's result in words (when not --json)."""
    stdout().print(message if isinstance(message, Text) else Text(message), soft_wrap=True)


def info(message: str) -> None:
    """A remark for the person (progress, next steps) on stderr, so stdout stays data."""
    stderr().print(Text(message), soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(*columns, title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    for row in rows:
        t.add_row(*(cell if isinstance(cell, Text) else Text("" if cell is None else str(cell)) for cell in row))
    return t


def show(*renderables: Any) -> None:
    console = stdout()
    for r in renderables:
        console.print(r)


def state(value: str | None) -> Text:
    return Text(value or "", style=STATE_STYLES.get(value or "", ""))


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """3s, 4m05s, 2h07m, 3d04h: two units are enough to read at a glance."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(value: str | datetime | None, now: datetime | None = None) -> str:
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"


def timestamp(value: str | datetime | None) -> str:
    """Local wall-clock time, to the second."""
    when = parse_time(value)
    return "-" if when is None else when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def size(num_bytes: float, base: int = 1024) -> str:
    """``base`` 1000 for the store's sizes (quotas are set in GB of 10^9 bytes), 1024 for workdirs."""
    value, unit = float(num_bytes), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < base:
            break
        value, unit = value / base, bigger
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def credit_unit(amounts: Iterable[float]) -> tuple[float, str]:
    """(factor, unit) that shows these amounts with two decimals and no run of zeros: credits, or
    millicredits or microcredits for the small sums CPU-only nodes and short jobs move."""
    largest = max((abs(a) for a in amounts), default=0.0)
    if largest >= 1 or largest == 0:
        return 1.0, "credits"
    return (1000.0, "millicredits") if largest >= 0.001 else (1_000_000.0, "microcredits")


def scaled(amount: float, factor: float) -> str:
    """``amount`` in the unit of ``credit_unit``; in credits, small sums keep three significant digits."""
    return credits(amount * factor)


def clock(value: str | datetime | None) -> str:
    """Local wall-clock time of day, to the minute."""
    when = parse_time(value)
    return "-" if when is None else when.astimezone().strftime("%H:%M")


def credits(amount: float) -> str:
    """Two decimals, or three significant digits for the small sums CPU-only nodes earn, written out
    in full (+0.000118, not +1.18e-04): people compare these by eye."""
    if not amount:
        return "0.00"
    if abs(amount) >= 0.01:
        return f"{amount:+,.2f}"
    decimals = min(12, 2 - math.floor(math.log10(abs(amount))))
    return f"{amount:+.{decimals}f}"
