"""A guest job that tries what a hostile guest would: prints one line, PROBE {json}, of what it
could read, list and write, and every other process's command line and environment it could see."""

import contextlib
import json
import os
import sys
from pathlib import Path


def attempt(action):
    try:
        action()
        return "open"
    except OSError as exc:
        return type(exc).__name__


def read_any(path: str) -> str:
    """Whatever it can read below ``path``: the start of every file (the test looks for its canaries
    and the tokens there). An empty mount point of the sandbox shows nothing and says so."""
    found = []
    if os.path.isfile(path):
        found.append(Path(path).read_bytes()[:200].decode(errors="replace"))
    for folder, _, files in os.walk(path, onerror=lambda exc: found.append(type(exc).__name__)):
        for name in files:
            try:
                found.append(Path(folder, name).read_bytes()[:200].decode(errors="replace"))
            except OSError as exc:
                found.append(type(exc).__name__)
    return " | ".join(found) if found else ("empty" if os.path.exists(path) else "missing")


def write(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "coop-probe").write_text("written by a guest")


targets = json.loads(os.environ.get("PROBE_TARGETS", "{}"))
result = {
    "read": {path: read_any(path) for path in targets.get("read", [])},
    "write": {path: attempt(lambda path=path: write(path)) for path in targets.get("write", [])},
    "own": {
        name: attempt(lambda name=name: write(os.environ.get(name, "/nonexistent")))
        for name in ("COOP_SCRATCH_DIR", "COOP_CHECKPOINT_DIR", "TMPDIR")
    },
    "env": dict(os.environ),
    "uid": os.getuid(),
    "processes": {},
}
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        seen = {}
        for item in ("cmdline", "environ"):
            with contextlib.suppress(OSError):
                seen[item] = Path(f"/proc/{pid}/{item}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        result["processes"][pid] = seen
print("PROBE " + json.dumps(result), flush=True)
sys.exit(0)
