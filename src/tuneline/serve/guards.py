"""What every request passes before a handler: the body size limit (ASGI) and the API key check."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tuneline.serve.schemas import openai_error


def error_response(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error body with its HTTP status."""
    return JSONResponse(openai_error(message, type_, code, param), status_code=status, headers=headers)


def authorized(request: Request, keys: list[str]) -> bool:
    """Whether the request carries one of `keys` as `Authorization: Bearer <key>` (constant-time compare)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys)


class BodyLimit:
    """ASGI middleware: refuse (413) a request body over `limit` bytes, declared or streamed (chunked),
    without reading more than `limit` + one chunk; a body within the limit is replayed to the app."""

    def __init__(self, app: Any, limit: int, on_refuse: Any = None) -> None:
        self.app = app
        self.limit = limit
        self.on_refuse = on_refuse

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else 0
        chunks: list[bytes] = []
        more = size <= self.limit
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size = max(size, sum(len(c) for c in chunks))
            more = message.get("more_body", False) and size <= self.limit
        if size > self.limit:
            if self.on_refuse is not None and scope.get("path") == "/v1/chat/completions":
                self.on_refuse()
            message = f"request body is over {self.limit} bytes (serve.max_request_bytes)"
            response = error_response(413, message, "invalid_request_error", "request_too_large")
            await response(scope, receive, send)
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
