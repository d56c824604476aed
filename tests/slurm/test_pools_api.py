"""/v1/pools without a cluster: who may call it, what it refuses (and that a refusal changes nothing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coop.client import CoopClient, CoopError
from tests.conftest import Coordinator


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """A private key (mode 600) and a known_hosts with a key for [127.0.0.1]:9, where nothing listens (the
    pool refresh finds it closed: no traffic leaves the machine)."""
    private = Ed25519PrivateKey.generate()
    key = tmp_path / "hpc_key"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    os.chmod(key, 0o600)
    host = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:9 {host.decode()}\n")
    return {"key": str(key), "known_hosts": str(known_hosts)}


def body(keys: dict[str, str], name: str = "cluster-a", **slurm: Any) -> dict[str, Any]:
    fields = {"host": "127.0.0.1", "port": 9, "user": "coop", "partition": "gpu",
              "gres_map": {"A100": "gpu:a100"}, **keys}  # fmt: skip
    return {"name": name, "max_jobs": 3, "slurm": fields | slurm}


def refused(client: CoopClient, payload: dict[str, Any]) -> CoopError:
    with pytest.raises(CoopError) as info:
        client.request("POST", "/pools", json=payload)
    return info.value


def test_only_admins_manage_pools(coordinator: Coordinator, keys: dict[str, str]) -> None:
    member, _ = coordinator.new_member("alice")
    for method, path in (("POST", "/pools"), ("GET", "/pools"), ("GET", "/pools/x"), ("DELETE", "/pools/x"),
                         ("POST", "/pools/x/test")):  # fmt: skip
        with pytest.raises(CoopError) as denied:
            member.request(method, path, json=body(keys) if method == "POST" else None)
        assert denied.value.status == 403, (method, path)
    assert coordinator.admin.request("GET", "/pools") == []


def test_add_list_remove_and_add_again(coordinator: Coordinator, keys: dict[str, str]) -> None:
    coordinator.new_member("lab-hpc")
    admin = coordinator.admin
    created = admin.request("POST", "/pools", json={**body(keys), "member": "lab-hpc"})
    assert (created["name"], created["member"], created["max_jobs"]) == ("cluster-a", "lab-hpc", 3)
    assert created["state"] == "unknown"  # not asked yet
    assert created["slurm"]["key"] == keys["key"] and created["slurm"]["gres_map"] == {"A100": "gpu:a100"}
    assert [p["name"] for p in admin.request("GET", "/pools")] == ["cluster-a"]
    duplicate = refused(admin, body(keys))
    assert duplicate.status == 409 and duplicate.errors[0]["field"] == "name"
    removed = admin.request("DELETE", "/pools/cluster-a")
    assert (removed["state"], removed["enabled"]) == ("removed", False)
    assert admin.request("GET", "/pools") == []
    with pytest.raises(CoopError) as gone:
        admin.request("GET", "/pools/cluster-a")
    assert gone.value.status == 404
    again = admin.request("POST", "/pools", json={**body(keys), "max_jobs": 5})
    assert again["id"] == created["id"] and again["member"] == "admin" and again["max_jobs"] == 5


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [({"key": "relative/key"}, "slurm.key", "absolute path"),
     ({"key": "/nonexistent/key"}, "slurm.key", "cannot read the SSH key"),
     ({"known_hosts": "/nonexistent/known_hosts"}, "slurm.known_hosts", "cannot read known_hosts"),
     ({"host": "127.0.0.3"}, "slurm.known_hosts", "has no key for [127.0.0.3]:9"),
     ({"gres_map": {"MI300X": "gpu:mi300x"}}, "slurm", "--gpu-info MI300X="),
     ({"partition": "gpu'; rm -rf ~; '"}, "slurm.partition", ""),
     ({"port": 0}, "slurm.port", "")],
)  # fmt: skip
def test_bad_settings_are_refused_naming_the_field(
    coordinator: Coordinator, keys: dict[str, str], change: dict[str, Any], field: str, words: str
) -> None:
    error = refused(coordinator.admin, body(keys, **change))
    assert error.status == 422
    assert error.errors[0]["field"] == field and words in str(error) and error.errors[0]["fix"], str(error)
    assert coordinator.admin.request("GET", "/pools") == []  # nothing was stored


def test_a_key_others_can_read_is_refused(coordinator: Coordinator, keys: dict[str, str]) -> None:
    os.chmod(keys["key"], 0o644)
    error = refused(coordinator.admin, body(keys))
    assert error.errors[0]["field"] == "slurm.key" and f"chmod 600 {keys['key']}" in str(error)


def test_unknown_member_and_pool(coordinator: Coordinator, keys: dict[str, str]) -> None:
    error = refused(coordinator.admin, {**body(keys), "member": "nobody"})
    assert error.status == 404 and error.errors[0]["field"] == "member"
    with pytest.raises(CoopError) as missing:
        coordinator.admin.request("POST", "/pools/nope/test")
    assert missing.value.status == 404
