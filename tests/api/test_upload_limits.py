"""Workdir caps: a gzip bomb or a million entries is refused without freezing the API, and what a
launch unpacks obeys the same caps and never stays on the coordinator's disk."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from coop.server.backends import Launch
from coop.server.backends.ray import RayBackend
from coop.server.backends.slurm.script import EXIT_STATUS, BatchJob, batch_script
from coop.server.services import scheduling, workdirs
from coop.server.services.errors import DomainError, InvalidWorkdir, TooLarge
from tests.api.helpers import job_spec, node
from tests.api.test_workdirs import targz
from tests.conftest import Coordinator, free_port, loopless_coordinator, wait_for

_BLOCK = 1 << 24  # 16 MiB of zeros per gzip member


@functools.cache
def _zeros_member() -> bytes:
    return gzip.compress(bytes(_BLOCK), compresslevel=9)


def zeros_bomb(size: int) -> bytes:
    """A tar.gz of one member of ``size`` zero bytes, about 1/1000 of that compressed, built in
    milliseconds: gzip readers join concatenated members, so one compressed block is repeated."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    full, rest = divmod(size, _BLOCK)
    tail = bytes(rest + (-size) % tarfile.BLOCKSIZE + 2 * tarfile.BLOCKSIZE)  # padding, end of archive
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT)) + _zeros_member() * full + gzip.compress(tail)


def put(coordinator: Coordinator, token: str, data: bytes, timeout: float = 60) -> httpx.Response:
    sha = hashlib.sha256(data).hexdigest()
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.put(f"{coordinator.url}/v1/workdirs/{sha}", content=data, headers=headers, timeout=timeout)


def assert_nothing_stored(coordinator: Coordinator, data: bytes) -> None:
    assert not workdirs.exists(coordinator.settings, hashlib.sha256(data).hexdigest())
    assert not list(coordinator.settings.workdir_dir.glob("*.part"))


# --- over HTTP ----------------------------------------------------------------------------------


def test_a_gzip_bomb_is_413_and_nothing_is_stored(coordinator: Coordinator) -> None:
    _, token = coordinator.new_member("alice")
    bomb = zeros_bomb(1 << 30)  # 1 GiB of zeros in about 1 MB; the default cap is 10 x 64 MB
    assert len(bomb) < 2 << 20
    resp = put(coordinator, token, bomb)
    assert resp.status_code == 413, resp.text
    error = resp.json()["errors"][0]
    assert error["field"] == "workdir" and "expands beyond 640 MB" in error["message"]
    assert "COOP_MAX_WORKDIR_EXPANDED_MB" in error["fix"]
    assert_nothing_stored(coordinator, bomb)


def test_more_entries_than_the_cap_is_413(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    _, token = coordinator.new_member("alice")
    monkeypatch.setattr(coordinator.settings, "max_workdir_entries", 20)
    many = targz({f"f{i}.txt": b"" for i in range(21)})
    resp = put(coordinator, token, many)
    assert resp.status_code == 413, resp.text
    error = resp.json()["errors"][0]
    assert error["field"] == "workdir" and "more than 20 files" in error["message"]
    assert "COOP_MAX_WORKDIR_ENTRIES" in error["fix"]
    assert_nothing_stored(coordinator, many)
    assert put(coordinator, token, targz({f"f{i}.txt": b"" for i in range(20)})).status_code == 201


def test_health_answers_while_a_bomb_is_being_checked(tmp_path: Path) -> None:
    """The check runs in a worker thread: the event loop serves everything else meanwhile. A bomb
    under the expanded cap takes the whole time cap to read, and is then refused (422)."""
    with loopless_coordinator(
        tmp_path, max_workdir_mb=16, max_workdir_expanded_mb=1e6, max_workdir_check_s=2
    ) as coordinator:
        _, token = coordinator.new_member("alice")
        bomb = zeros_bomb(6 << 30)  # 6 GiB: far more than 2 s of decompression
        result: list[httpx.Response] = []
        upload = threading.Thread(target=lambda: result.append(put(coordinator, token, bomb)))
        upload.start()
        parts = coordinator.settings.workdir_dir
        wait_for(lambda: any(p.stat().st_size == len(bomb) for p in parts.glob("*.part")), what="the body on disk")
        answered = []
        while upload.is_alive():
            t0 = time.monotonic()
            assert httpx.get(f"{coordinator.url}/v1/health", timeout=1.0).status_code == 200
            answered.append(time.monotonic() - t0)
        upload.join()
        assert len(answered) >= 3, "health should answer many times during a check of about 2 s"
        resp = result[0]
        assert resp.status_code == 422, resp.text
        error = resp.json()["errors"][0]
        assert error["field"] == "workdir" and "longer than 2 s" in error["message"]
        assert "COOP_MAX_WORKDIR_CHECK_S" in error["fix"]
        assert_nothing_stored(coordinator, bomb)


# --- the check and the extraction, on crafted archives -------------------------------------------


def _archive(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "w.tar.gz"
    path.write_bytes(data)
    return path


def _refused(fn: object, *args: object) -> DomainError:
    with pytest.raises(DomainError) as err:
        fn(*args)  # type: ignore[operator]
    return err.value


def test_extract_unpacks_a_workdir_keeping_modes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in [("run.sh", b"echo hi\n", 0o755), ("src/a.py", b"a = 1\n", 0o644)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    target = workdirs.extract(_archive(tmp_path, buf.getvalue()), tmp_path / "out", workdirs.Limits(1 << 20, 10, 10))
    assert (target / "src/a.py").read_bytes() == b"a = 1\n"
    assert os.access(target / "run.sh", os.X_OK)


def test_extract_past_the_expanded_cap_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """The first member fits and is written; the second passes the cap: all of it goes."""
    archive = _archive(tmp_path, targz({"a.bin": bytes(600_000), "b.bin": bytes(600_000)}))
    limits = workdirs.Limits(expanded_bytes=1 << 20, entries=10, seconds=10)
    err = _refused(workdirs.extract, archive, tmp_path / "out", limits)
    assert isinstance(err, TooLarge) and "expands beyond 1 MB" in err.message
    assert not (tmp_path / "out").exists()
    err = _refused(workdirs.extract, _archive(tmp_path, zeros_bomb(1 << 30)), tmp_path / "out", limits)
    assert isinstance(err, TooLarge) and not (tmp_path / "out").exists()


def test_bytes_are_counted_as_decompressed_not_only_as_declared(tmp_path: Path) -> None:
    """3,000 empty files declare 0 bytes but are 1.5 MB of headers once decompressed."""
    archive = _archive(tmp_path, targz({f"{i}": b"" for i in range(3000)}))
    err = _refused(workdirs.check_archive, archive, workdirs.Limits(expanded_bytes=1 << 20, entries=10**6, seconds=10))
    assert isinstance(err, TooLarge) and "expands beyond" in err.message


def test_time_cap_and_oversized_headers_are_422(tmp_path: Path) -> None:
    archive = _archive(tmp_path, targz({"a.txt": b"a"}))
    err = _refused(workdirs.extract, archive, tmp_path / "out", workdirs.Limits(1 << 20, 10, seconds=1e-9))
    assert isinstance(err, InvalidWorkdir) and "took longer than" in err.message and not (tmp_path / "out").exists()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("a.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("b.txt")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    err = _refused(workdirs.check_archive, _archive(tmp_path, buf.getvalue()), workdirs.Limits(1 << 30, 10, 10))
    assert isinstance(err, InvalidWorkdir) and "header" in err.message


def test_links_out_of_the_workdir_are_refused(tmp_path: Path) -> None:
    for kind, link in [(tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "/etc/passwd"), (tarfile.LNKTYPE, "../x")]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("link")
            info.type, info.linkname = kind, link
            tar.addfile(info)
        limits = workdirs.Limits(1 << 20, 10, 10)
        err = _refused(workdirs.extract, _archive(tmp_path, buf.getvalue()), tmp_path / "out", limits)
        assert isinstance(err, InvalidWorkdir) and err.field == "workdir"
        assert not (tmp_path / "out").exists()


# --- launches: what is unpacked goes ------------------------------------------------------------


def _launch(archive: Path) -> Launch:
    return Launch(ref="coop-1-1", command="true", env={}, workdir=archive, node_resource="coop_node_1", gpus=0,
                  cpus=1, grace_s=1)  # fmt: skip


def test_ray_launch_removes_what_it_unpacked_even_when_submit_fails(tmp_path: Path) -> None:
    """A Ray head that cannot be reached fails the submission: the unpacked dir is gone all the same,
    as is one a killed coordinator left behind an hour ago."""
    cache = tmp_path / "unpacked"
    stale = cache / "left-behind"
    (stale / "workdir").mkdir(parents=True)
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    backend = RayBackend(f"http://127.0.0.1:{free_port()}", cache_dir=cache)
    with pytest.raises(ConnectionError):
        backend.submit(_launch(_archive(tmp_path, targz({"train.py": b"print(1)\n"}))))
    assert list(cache.iterdir()) == []
    backend.workdir_limits = workdirs.Limits(expanded_bytes=1 << 20, entries=10, seconds=10)
    with pytest.raises(TooLarge, match="expands beyond"):
        backend.submit(_launch(_archive(tmp_path, zeros_bomb(1 << 30))))
    assert list(cache.iterdir()) == []


def test_slurm_script_removes_the_unpacked_workdir_when_the_job_ends(tmp_path: Path) -> None:
    archive = _archive(tmp_path, targz({"run.sh": b"echo from-the-workdir; touch made-here; exit 3\n"}))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    script = batch_script(BatchJob(name="coop-1-1", job_dir=str(job_dir), command="bash run.sh", env={}, cpus=1,
                                   workdir_archive=str(archive)))  # fmt: skip
    (job_dir / "job.sbatch").write_text(script)
    done = subprocess.run(["bash", str(job_dir / "job.sbatch")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 3 and done.stdout == "from-the-workdir\n", done.stderr
    assert (job_dir / EXIT_STATUS).read_text() == "3\n"
    assert not (job_dir / "work").exists()
    archive.write_bytes(b"not a tarball")
    done = subprocess.run(["bash", str(job_dir / "job.sbatch")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 98 and "cannot unpack the workdir" in done.stderr
    assert not (job_dir / "work").exists()


def test_a_stored_workdir_the_caps_now_refuse_fails_its_job_at_launch(tmp_path: Path) -> None:
    """Caps lowered after the upload: the launch refuses to unpack it, and the job fails with the
    reason at once (another try would only be refused again), without Ray ever being asked."""
    with loopless_coordinator(tmp_path / "coop") as c:
        alice, token = c.new_member("alice")
        c.agent("alice").register_node(node("box", gpus=1))
        archive = zeros_bomb(8 << 20)  # 8 MiB once unpacked: fine under the default caps
        assert put(c, token, archive).status_code == 201
        job = alice.submit(job_spec("big", gpus=1), workdir_sha256=hashlib.sha256(archive).hexdigest())
        small = workdirs.Limits(expanded_bytes=1 << 20, entries=10, seconds=10)
        backend = RayBackend(f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "unpacked", workdir_limits=small)
        with Session(c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, c.settings, backend)
        done = c.admin.job(job["id"])
        assert done["state"] == "FAILED", done["events"]
        assert "its workdir cannot be unpacked" in (done["reason"] or "") and "expands beyond" in done["reason"]
        assert done["attempts_detail"][0]["state"] == "FAILED"
