"""Workdir upload: content-addressed, size-capped, checked."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx
import pytest

from coop.client import CoopError
from tests.api.helpers import job_spec
from tests.conftest import Coordinator


def targz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_upload_then_submit_with_the_workdir(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    data = targz({"train.py": b"print('hi')\n"})
    sha = hashlib.sha256(data).hexdigest()
    assert alice.has_workdir(sha) is False
    assert alice.upload_workdir(sha, data) == {"sha256": sha, "size": len(data)}
    assert alice.has_workdir(sha) is True
    job = alice.submit(job_spec(), workdir_sha256=sha)
    assert alice.job(job["id"])["workdir_sha256"] == sha


def test_submit_with_an_unknown_workdir_is_refused(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    with pytest.raises(CoopError) as err:
        alice.submit(job_spec(), workdir_sha256="a" * 64)
    assert err.value.status == 422 and err.value.errors[0]["field"] == "workdir_sha256"
    assert alice.jobs() == []


def test_hash_mismatch_and_garbage_are_refused(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    data = targz({"a.txt": b"a"})
    with pytest.raises(CoopError) as err:
        alice.upload_workdir("b" * 64, data)
    assert err.value.status == 422 and err.value.errors[0]["field"] == "sha256"
    junk = b"not a tarball"
    with pytest.raises(CoopError) as err:
        alice.upload_workdir(hashlib.sha256(junk).hexdigest(), junk)
    assert err.value.status == 422 and "tar.gz" in err.value.message
    assert not alice.has_workdir(hashlib.sha256(junk).hexdigest())


def test_paths_outside_the_workdir_are_refused(coordinator: Coordinator) -> None:
    alice, _ = coordinator.new_member("alice")
    data = targz({"../../etc/cron.d/evil": b"* * * * * root rm -rf /"})
    with pytest.raises(CoopError) as err:
        alice.upload_workdir(hashlib.sha256(data).hexdigest(), data)
    assert err.value.status == 422 and "outside the workdir" in err.value.message


def test_oversized_workdir_is_413(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    _, token = coordinator.new_member("alice")
    monkeypatch.setattr(coordinator.settings, "max_workdir_mb", 0.01)  # 10 KiB
    big = b"x" * 20_000
    sha = hashlib.sha256(big).hexdigest()
    headers = {"Authorization": f"Bearer {token}"}
    resp = httpx.put(f"{coordinator.url}/v1/workdirs/{sha}", content=big, headers=headers)
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["field"] == "workdir"
    # without a Content-Length (chunked), the limit still holds while streaming
    resp = httpx.put(f"{coordinator.url}/v1/workdirs/{sha}", content=iter([big[:8000], big[8000:]]), headers=headers)
    assert resp.status_code == 413
    assert not list(coordinator.settings.workdir_dir.glob("*.part"))
