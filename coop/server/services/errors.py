"""What a service refuses, named for what happened, never for how HTTP says it.

Services raise these; ``coop/server/errors.py`` maps each kind to an HTTP status and error code in
one table and renders them in the API's one error shape. Each carries the message, the field at
fault ("" when none) and the fix, as a person reads them. They pickle (a workdir is checked in a
worker process) and import nothing of the web framework, so loops and the CLI can catch them too.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal: ``message`` says what is wrong, ``field`` names the input at fault, ``fix`` what to do."""

    def __init__(self, message: str, field: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.fix = fix


class NotFound(DomainError):
    """The member, user, job, node or pool named does not exist."""


class Conflict(DomainError):
    """The request contradicts what is already there: a name taken, a job that already ended."""


class Invalid(DomainError):
    """Input the service cannot use, though it has the right form (a key the coordinator cannot read)."""


class QuotaExceeded(DomainError):
    """More than the member may use at once."""


class Unsatisfiable(DomainError):
    """A job no registered node or pool could ever run."""


class UnknownWorkdir(DomainError):
    """A job names a workdir that was never uploaded."""


class HashMismatch(DomainError):
    """Uploaded bytes whose SHA-256 is not the one they were sent under."""


class InvalidWorkdir(DomainError):
    """A workdir archive refused for what it holds (not a tar.gz, a path or link leaving it, too slow to read)."""


class TooLarge(DomainError):
    """A workdir over a size cap: packed, unpacked, or in files and folders."""
