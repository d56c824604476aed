"""Packing workdirs: deterministic bytes, excludes, the size cap, symlinks, upload once."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from coop.cli import workdir
from coop.cli.workdir import WorkdirError, pack
from tests.cli.conftest import Cli, write_job
from tests.conftest import Coordinator


def make_tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print('train')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "src" / "pkg" / "model.py").write_text("x = 1\n")
    (root / "empty").mkdir()
    return root


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_same_tree_same_sha256(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    first = pack(root)
    os.utime(root / "train.py", (1, 1))  # times and owners do not matter, content does
    assert pack(root).sha256 == first.sha256

    copy = make_tree(tmp_path / "b")  # another path, other inode numbers and times
    assert pack(copy).sha256 == first.sha256
    (copy / "train.py").write_text("print('changed')\n")
    assert pack(copy).sha256 != first.sha256

    entries = members(first.data)
    assert list(entries) == sorted(entries, key=lambda n: n.split("/"))  # sorted, stable order
    assert {m.mtime for m in entries.values()} == {0}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in entries.values()} == {(0, 0, "", "")}
    assert entries["run.sh"].mode == 0o755 and entries["train.py"].mode == 0o644
    assert entries["empty"].isdir()
    assert first.data[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_default_excludes_and_coopignore(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    for junk in (
        ".git/HEAD",
        "__pycache__/x.cpython-311.pyc",
        ".venv/bin/python",
        "src/old.pyc",
        "data/big.bin",
        "data/keep.txt",
        "logs/run.log",
        "ckpt/model.ckpt",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk")
    (root / ".coopignore").write_text("# data stays local\ndata/*.bin\nlogs/\n\n*.ckpt\n")
    names = set(members(pack(root).data))
    assert {"train.py", "src/pkg/model.py", "data/keep.txt", ".coopignore", "ckpt"} <= names
    assert not names & {
        ".git",
        ".git/HEAD",
        "__pycache__",
        ".venv",
        "src/old.pyc",
        "data/big.bin",
        "logs",
        "logs/run.log",
        "ckpt/model.ckpt",
    }


def test_size_cap_names_the_biggest_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path)
    (root / "weights.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    monkeypatch.setenv("COOP_MAX_WORKDIR_MB", "1")
    with pytest.raises(WorkdirError) as err:
        pack(root)
    assert "weights.bin (2.0 MB)" in err.value.message and "1.0 MB" in err.value.message
    assert ".coopignore" in err.value.errors[0]["fix"]
    monkeypatch.setenv("COOP_MAX_WORKDIR_MB", "3")
    assert pack(root).files == 4


def test_size_cap_through_submit(cli: Cli, tmp_path: Path) -> None:
    cli.unreachable()
    job = write_job(tmp_path)
    (tmp_path / "dataset.bin").write_bytes(os.urandom(300 * 1024))
    cli.monkeypatch.setenv("COOP_MAX_WORKDIR_MB", "0.1")
    result = cli("submit", job, "--dry-run")
    assert result.exit_code == 1
    assert "dataset.bin" in result.stderr and "fix: " in result.stderr and "workdir" in result.stderr


def test_symlinks(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "w")
    (root / "alias.py").symlink_to("train.py")
    (root / "lib").symlink_to("src")
    entries = members(pack(root).data)
    assert entries["alias.py"].isfile() and entries["alias.py"].size == len("print('train')\n")
    assert entries["lib"].issym() and entries["lib"].linkname == "src"

    (tmp_path / "secret.txt").write_text("no")
    (root / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(WorkdirError, match="leak points to .*outside the workdir"):
        pack(root)
    (root / "leak").unlink()
    (root / "up").symlink_to("../w/src")  # inside, but the coordinator refuses '..' in links
    with pytest.raises(WorkdirError, match="up"):
        pack(root)


def test_missing_workdir(cli: Cli, tmp_path: Path) -> None:
    cli.unreachable()
    result = cli("submit", write_job(tmp_path, workdir="nowhere"), "--dry-run")
    assert result.exit_code == 1 and "is not a folder" in result.stderr and "workdir: null" in result.stderr


def test_upload_only_when_missing(coordinator: Coordinator, tmp_path: Path) -> None:
    _, token = coordinator.new_member("alice")
    packed = pack(make_tree(tmp_path))
    with workdir.CoopClient(coordinator.url, token) as client:
        assert workdir.upload(client, packed) is True
        assert workdir.upload(client, packed) is False
        assert client.has_workdir(packed.sha256)
