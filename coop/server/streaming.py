"""Moving blob bytes between HTTP and the artifact store without holding them: a request body
flows chunk by chunk into a store call running in a worker thread, and a blob flows out from the
offset a ``Range`` header asks for (so a download resumes where it stopped)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Request
from fastapi.responses import StreamingResponse

from coop.server.errors import ApiError
from coop.server.store import BlobStore

_RANGE = re.compile(r"^bytes=(\d{1,15})-(\d{1,15})?$")


async def into(request: Request, write: Callable[[str, int, Iterator[bytes]], int], upload: str, offset: int) -> int:
    """Run ``write(upload, offset, chunks)`` in a worker thread, ``chunks`` being the request body as
    it arrives. The thread pulls each chunk from the event loop: only one is in memory at a time."""
    stream = request.stream().__aiter__()

    async def pull() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:
        while (chunk := anyio.from_thread.run(pull)) is not None:
            if chunk:
                yield chunk

    return await anyio.to_thread.run_sync(write, upload, offset, chunks())


def blob(request: Request, store: BlobStore, sha256: str) -> StreamingResponse:
    """The blob (200), or its bytes from a ``Range: bytes=N-[M]`` on (206, resumable downloads)."""
    size = store.size(sha256)
    start, end = 0, size - 1
    asked = request.headers.get("range")
    if asked:
        found = _RANGE.match(asked.strip())
        if found is None or int(found[1]) > size or (found[2] is not None and int(found[2]) < int(found[1])):
            raise ApiError(
                416, "bad_range", f"cannot serve {asked!r} of {size} bytes", field="Range",
                fix=f"ask for 'bytes=N-' with N at most {size}",
            )  # fmt: skip
        start = int(found[1])
        end = min(end, int(found[2])) if found[2] is not None else end
    headers = {"accept-ranges": "bytes", "content-length": str(max(0, end - start + 1)), "x-sha256": sha256}
    if asked:
        headers["content-range"] = f"bytes {start}-{end}/{size}" if start < size else f"bytes */{size}"
    return StreamingResponse(
        _limited(store.read(sha256, start), end - start + 1),
        status_code=206 if asked else 200,
        media_type="application/octet-stream",
        headers=headers,
    )


def _limited(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """At most ``count`` bytes of ``chunks`` (Starlette iterates a sync iterator in a worker thread)."""
    try:
        for chunk in chunks:
            if count <= 0:
                return
            yield chunk[:count]
            count -= len(chunk)
    finally:
        close: Any = getattr(chunks, "close", None)
        if close is not None:
            close()
