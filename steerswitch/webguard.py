"""Guards every steerswitch web app puts in front of its routes (the arena, API servers).

Invariants:
- A request body is read at most ``max_bytes`` (+ one chunk) before the app sees it: a larger
  body is answered 413 without being parsed, so one request cannot hold the event loop or memory.
- The Host header is parsed as RFC 3986 writes it (``[::1]:8000`` is host ``::1``) and must be
  one of the allowed names, which stops DNS rebinding of a loopback server.
- A validation error never echoes the request's input: the echo can be huge, and input holding
  NaN, infinities or lone surrogates cannot be serialised (FastAPI's own handler then answers 500).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["DEFAULT_MAX_BODY_BYTES", "BodyLimit", "HostGuard", "host_of", "install_validation_handler",
           "reject_lone_surrogates"]

DEFAULT_MAX_BODY_BYTES = 1_000_000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _plain(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: refuse (413) a request body over ``max_bytes`` before anything parses it."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body is over {self.max_bytes:,} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _plain(send, 413, too_big)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _plain(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


def host_of(header: str) -> str:
    """The host name of a Host header value: ``[::1]:8000`` -> ``::1``, ``localhost:80`` -> ``localhost``."""
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    if header.count(":") > 1:  # a bare IPv6 address (not valid in Host, but unambiguous)
        return header
    return header.split(":", 1)[0]


class HostGuard:
    """ASGI middleware: answer 400 unless the Host header names one of ``allowed`` hosts."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_of(host).lower() not in self.allowed:
                await _plain(send, 400, "Invalid host header")
                return
        await self.app(scope, receive, send)


def install_validation_handler(app: FastAPI) -> None:
    """Answer schema violations 422 with each error's location, message and type, never its input."""

    async def handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, handler)  # type: ignore[arg-type]


def reject_lone_surrogates(value: Any, where: str = "body") -> Any:
    """``value`` unchanged, or ValueError naming the first string (key or value) with a lone surrogate
    (JSON allows ``"\\ud800"``; no tokenizer or UTF-8 writer does)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: string holds a lone surrogate (not valid Unicode text)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            reject_lone_surrogates(k, where)
            reject_lone_surrogates(v, f"{where}.{k}" if isinstance(k, str) and k.isprintable() else where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            reject_lone_surrogates(v, f"{where}[{i}]")
    return value
