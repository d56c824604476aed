"""The artifact store's blobs in an S3-compatible bucket, for a coordinator whose disk should not hold them.

Uploads are still staged on the coordinator's own disk, exactly as in ``BlobStore``: a resumable upload
appends at any byte offset and says how far it got, and S3 cannot do that (a multipart upload's parts
must be at least 5 MiB, all but the last, so a resume at an arbitrary offset maps onto no part). Only a
finished upload whose bytes hash to the SHA-256 announced goes to the bucket, under
``<prefix>/blobs/ab/<sha256>``, with boto3's managed transfer (multipart for big files); so the bucket
holds only whole, verified blobs, and a blob already there is not sent again.

Credentials and region come from boto3's usual places (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``; us-east-1 when none is set); ``endpoint_url`` (the caller passes
``COOP_STORE_ENDPOINT_URL``) names an S3-compatible server other than AWS.
The calls block on disk and network: routes run them in worker threads, never on the event loop.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from coop.server.services.errors import Conflict, HashMismatch, Invalid, NotFound
from coop.server.store import CHUNK, BlobStore, _check_sha256, _missing

MiB = 1 << 20
PART = 8 * MiB  # multipart past this size, in parts this big (S3: >= 5 MiB; s3transfer grows it past 10,000)
_NOT_THERE = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore(BlobStore):
    """Blobs in the bucket of ``url`` (``s3://bucket/optional/prefix``), uploads staged under
    ``staging_root/uploads/<id>``. ``max_bytes``: the largest blob an upload may make. ``client``: a
    boto3 S3 client to use instead of one made from the environment."""

    def __init__(
        self,
        url: str,
        staging_root: Path,
        max_bytes: int,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        super().__init__(staging_root, max_bytes)
        self.bucket, self.prefix = _parse_url(url)
        self.url = url
        self._client = client if client is not None else _client(endpoint_url)
        self._transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)

    # --- uploads ---------------------------------------------------------------------------------

    def finish(self, upload_id: str, sha256: str) -> int:
        """Make the upload the blob ``sha256`` in the bucket, checking that its bytes hash to it first;
        returns its size. Appends to the upload are refused while it is being finished."""
        _check_sha256(sha256)
        path = self._staging(upload_id)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below, after the upload)
        except FileNotFoundError:
            raise NotFound(f"no upload {upload_id}", field="upload", fix="begin the upload again") from None
        with f:
            try:  # the bytes hashed must be the bytes sent: no append in between
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict(
                    f"upload {upload_id} is being appended to or finished",
                    field="upload",
                    fix="wait for that to end",
                ) from None
            digest, size = self._digest(upload_id, f)
            if digest != sha256:
                path.unlink(missing_ok=True)
                raise HashMismatch(
                    f"upload {upload_id} hashes to {digest}, not {sha256}",
                    field="sha256",
                    fix="send the file again from the start: some of its bytes were not the file's",
                )
            if not self.has(sha256):
                key = self._key(sha256)
                self._client.upload_file(str(path), self.bucket, key, Config=self._transfer)
                if not _same_file(path, f):  # dropped (abort, sweep) and begun anew while it was sent
                    self._client.delete_object(Bucket=self.bucket, Key=key)
                    raise Conflict(
                        f"upload {upload_id} was dropped while it was being finished",
                        field="upload",
                        fix="send the file again from the start",
                    )
            path.unlink(missing_ok=True)
        return size

    # --- blobs -----------------------------------------------------------------------------------

    def has(self, sha256: str) -> bool:
        _check_sha256(sha256)
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except ClientError as e:
            if _not_there(e):
                return False
            raise
        return True

    def size(self, sha256: str) -> int:
        _check_sha256(sha256)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except ClientError as e:
            if _not_there(e):
                raise _missing(sha256) from None
            raise
        return int(head["ContentLength"])

    def read(self, sha256: str, offset: int = 0) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on, a chunk at a time, by one ranged GET."""
        _check_sha256(sha256)
        if offset < 0:
            raise Invalid(f"offset {offset} is negative", field="offset", fix="give an offset of 0 or more")
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(sha256)}
        if offset:  # no Range at 0: S3 answers 416 to "bytes=0-" on an empty object
            args["Range"] = f"bytes={offset}-"
        try:
            body = self._client.get_object(**args)["Body"]
        except ClientError as e:
            if _not_there(e):
                raise _missing(sha256) from None
            if _code(e) == "InvalidRange":  # at or past the end, as a file read there gives nothing
                self.size(sha256)  # NotFound if it is gone after all
                return iter(())
            raise
        return _body_chunks(body)

    def delete(self, sha256: str) -> None:
        _check_sha256(sha256)
        self._client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def usage(self) -> int:
        """Bytes held by blobs in the bucket (uploads in progress not counted)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key_prefix())
        return sum(obj["Size"] for page in pages for obj in page.get("Contents", ()))

    # --- keys ------------------------------------------------------------------------------------

    def _key_prefix(self) -> str:
        return f"{self.prefix}/blobs/" if self.prefix else "blobs/"

    def _key(self, sha256: str) -> str:
        return f"{self._key_prefix()}{sha256[:2]}/{sha256}"


def _parse_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ValueError(f"{url!r} is not an S3 URL: give s3://bucket or s3://bucket/prefix")
    return parsed.netloc, parsed.path.strip("/")


def _client(endpoint_url: str | None) -> Any:
    session = boto3.session.Session()
    config = Config(
        retries={"mode": "standard"},
        # S3-compatible servers other than AWS often refuse the CRC checksums boto3 sends by default
        **({"request_checksum_calculation": "when_required"} if endpoint_url else {}),
    )
    return session.client(
        "s3", region_name=session.region_name or "us-east-1", endpoint_url=endpoint_url or None, config=config
    )


def _same_file(path: Path, f: IO[bytes]) -> bool:
    """Whether ``path`` still names the open file ``f`` (the inode cannot be reused while ``f`` is open)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino, st.st_size) == (held.st_dev, held.st_ino, held.st_size)


def _body_chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _not_there(e: ClientError) -> bool:
    return _code(e) in _NOT_THERE
