"""Caps request bodies (413) so no client can make the coordinator buffer unbounded JSON.

Workdir uploads stream to disk and carry their own, larger cap.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 2 * 1024 * 1024


def _reply_413() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps(
        {
            "error": "too_large",
            "message": f"request body over {MAX_BODY // 1024} KiB",
            "errors": [
                {
                    "field": "body",
                    "message": "request body too large",
                    "fix": "send a smaller request; job specs are limited to 1 MiB",
                }
            ],
        }
    ).encode()
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


class BodyLimit:
    def __init__(self, app: ASGIApp, exempt_prefix: tuple[str, ...] = ("/v1/workdirs/", "/v1/transfer/sets/")) -> None:
        self.app = app
        self.exempt_prefix = exempt_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt_prefix):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            await self._refuse(send)
            return
        # buffer the (small) body with a bound, then replay it to the app
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > MAX_BODY:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )

    @staticmethod
    async def _refuse(send: Send) -> None:
        body, headers = _reply_413()
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
