"""Which machine this is, whatever the node's name: the ids an agent registers with, so that a rejoin
under another ``--name`` or from a fresh state dir is the same node (docs/agent.md, "Which node a
machine is").

- ``host_id``: the machine-id (``/etc/machine-id``, else ``/var/lib/dbus/machine-id``) alone;
- ``hardware_id``: the machine-id and the UUIDs of the GPUs this agent offers, sorted (two agents
  that split one machine's GPUs are two machines; a card swapped makes another one).

Neither is the machine-id itself: systemd says it is confidential and that applications use a keyed
hash of it, so each id is HMAC-SHA256 keyed with the machine-id over a Coop-specific message (as
``sd_id128_get_machine_app_specific`` does). The coordinator stores these hex digests, which name the
machine to Coop and to nothing else; the GPU UUIDs themselves it already stores with the GPUs.

With no machine-id (macOS, a container without one), ``hardware_id`` is a plain SHA-256 of the GPU
UUIDs when every GPU has one, and there is no ``host_id``; with neither, the node is known by its
name only. ``COOP_AGENT_MACHINE_ID`` stands in for the machine-id: a VM cloned from an image that
kept its machine-id ("systemd-machine-id-setup" gives it one of its own), or ``none`` for no id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.models import GpuInfo

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
MESSAGE = b"coop node identity v1"
_MACHINE_ID = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass(frozen=True)
class Identity:
    hardware_id: str | None
    host_id: str | None
    source: str  # for the log: where the machine-id came from, or "GPU UUIDs", or "none"


def read_machine_id(files: Sequence[Path] = MACHINE_ID_FILES) -> tuple[str, str] | None:
    """(machine-id, the file it was read from); None when no file holds one (32 hex digits; an
    "uninitialized" or empty file, as a fresh image has, is none)."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if _MACHINE_ID.match(text):
            return text.lower(), str(path)
    return None


def _mac(key: str, *parts: str) -> str:
    return hmac.new(key.encode(), b"\0".join([MESSAGE, *(p.encode() for p in parts)]), hashlib.sha256).hexdigest()


def identity_of(machine_id: str | None, gpu_uuids: Iterable[str | None], source: str = "machine-id") -> Identity:
    """The ids for a machine-id (None: none known) and the UUIDs of the GPUs offered (None: a GPU
    without one)."""
    uuids = list(gpu_uuids)
    known = sorted({u.strip() for u in uuids if u and u.strip()})
    if machine_id:
        return Identity(_mac(machine_id, "hardware", *known), _mac(machine_id, "host"), source)
    if known and len(known) == len(uuids):
        digest = hashlib.sha256(b"\0".join([MESSAGE, b"gpus", *(u.encode() for u in known)])).hexdigest()
        return Identity(digest, None, "GPU UUIDs")
    return Identity(None, None, "none")


def machine_identity(gpus: Sequence[GpuInfo], override: str | None = None) -> Identity:
    """This machine's ids for the GPUs the agent offers. ``override``: COOP_AGENT_MACHINE_ID (any
    text stands in for the machine-id; "none": no ids, the node is known by its name only)."""
    if override is not None and override.strip():
        if override.strip().lower() == "none":
            return Identity(None, None, "none (COOP_AGENT_MACHINE_ID=none)")
        return identity_of(override.strip(), [g.uuid for g in gpus], "COOP_AGENT_MACHINE_ID")
    found = read_machine_id()
    if found is None:
        return identity_of(None, [g.uuid for g in gpus])
    return identity_of(found[0], [g.uuid for g in gpus], found[1])
