"""The HTTP server: an OpenAI-compatible chat API with an A/B canary and feedback capture.

    GET  /health                 liveness + what is served (versions, canary share, queue)
    GET  /metrics                Prometheus: requests, latency, tokens, feedback per variant
    GET  /v1/models              the model, and one pinned name per variant (`<model>@challenger`)
    POST /v1/chat/completions    routed (sticky per user) or pinned; the response names the variant
    POST /v1/feedback            thumb / rating / corrected answer on a completion's `id`

Every answered request is queued to the feedback store (never waited on). The answer's `id` is the
request id that feedback refers to; `model` is `<model>@<variant>`, and the headers
`x-tuneline-variant` / `x-tuneline-model-version` say which version answered.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from tuneline.config.serve import ServeParams
from tuneline.feedback.store import FeedbackStore, StoreError, UnknownRequest, error_summary
from tuneline.feedback.writer import ExchangeWriter
from tuneline.lm.errors import RenderError
from tuneline.serve.engine import Batcher, Overloaded
from tuneline.serve.metrics import ServerMetrics
from tuneline.serve.routing import PIN_SEPARATOR, parse_model, route, user_hash
from tuneline.serve.schemas import (
    ChatRequest,
    FeedbackRequest,
    openai_error,
    validation_message,
)
from tuneline.serve.streaming import TokenStream, chunk, cut_at_stop, safe_prefix, sse

logger = logging.getLogger(__name__)
PIN_HEADER = "x-tuneline-variant"
CANCELLED = "cancelled"  # finish_reason stored for a streamed answer whose client went away


@dataclass
class ServerState:
    """Everything a request handler needs; built by `tuneline serve` (or a test) and closed on exit."""

    models: Any  # ServedModels
    batcher: Batcher
    store: FeedbackStore
    writer: ExchangeWriter
    params: ServeParams
    api_keys: list[str] = field(default_factory=list)
    watcher: Any = None  # AliasWatcher, when the server follows the registry
    started: float = field(default_factory=time.time)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.batcher.close()
        self.writer.close()
        if hasattr(self.models, "close"):  # a remote backend's connection pool
            self.models.close()


def _error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(openai_error(message, type_, code, param), status_code=status, headers=headers)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application over a loaded `ServerState` (closed when the app shuts down)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        state.close()  # drains the generation queue and commits every queued exchange

    app = FastAPI(title="tuneline", summary="OpenAI-compatible chat API with an A/B canary",
                  lifespan=lifespan)
    app.state.tuneline = state
    params = state.params
    name = state.models.model_name

    metrics = ServerMetrics(state)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        # Deny by default: with keys configured, only the health probe is open.
        if state.api_keys and request.url.path != "/health" and not _authorized(request, state.api_keys):
            response = _error(401, "missing or invalid API key (Authorization: Bearer <key>)",
                              "invalid_request_error", "invalid_api_key")
        else:
            response = await call_next(request)
        if request.url.path == "/v1/chat/completions" and response.status_code != 200:
            metrics.refused(str(response.status_code))
        return response

    # Outermost: before anything reads the body.
    app.add_middleware(BodyLimit, limit=params.max_request_bytes, on_refuse=lambda: metrics.refused("413"))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(state.models.versions), media_type=metrics.content_type)

    @app.get("/health")
    async def health() -> Any:
        alive = state.batcher.alive
        store = state.writer.health()
        # degraded: answers go on, but the feedback store takes no rows (they are kept, see `store`)
        status = "ok" if store["state"] == "ok" else "degraded"
        body = {
            "status": status if alive else "generation thread stopped",
            "model": name,
            "versions": state.models.versions,
            "canary_share": params.canary_share if "challenger" in state.models.versions else 0.0,
            "queued": state.batcher.queued,
            "store_pending": store["backlog"],
            "store": store,
            "reloads": state.watcher.reloads if state.watcher else None,
            "registry_error": state.watcher.last_error if state.watcher else None,
            "uptime_s": round(time.time() - state.started, 1),
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        ids = [name] + [f"{name}{PIN_SEPARATOR}{v}" for v in state.models.variants]
        return {"object": "list", "data": [
            {"id": i, "object": "model", "created": int(state.started), "owned_by": "tuneline"} for i in ids
        ]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            req = ChatRequest.model_validate_json(await request.body())
            conversation = state.models.conversation(req.conversation())
        except RenderError as exc:  # the model's chat template cannot render this conversation
            return _error(400, f"{exc.reason}: {exc.detail}", "invalid_request_error", exc.reason, "messages")
        except ValidationError as exc:
            message, param = validation_message(exc)
            return _error(400, message, "invalid_request_error", "invalid_request", param)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_request", "messages")
        if req.stream and req.tools:
            return _error(400, "streaming with `tools` is not supported (a tool call is known only once the "
                          "reply is complete); send stream=false", "invalid_request_error",
                          "unsupported_parameter", "stream")
        budget = req.budget(params.default_max_tokens)
        if budget > params.max_tokens_limit:
            return _error(400, f"max_tokens {budget} is above this server's limit {params.max_tokens_limit} "
                          "(serve.max_tokens_limit)", "invalid_request_error", "max_tokens_too_large",
                          "max_tokens")
        try:
            pinned = parse_model(request.headers.get(PIN_HEADER) or req.model, name, state.models.variants)
        except ValueError as exc:
            return _error(404, str(exc), "invalid_request_error", "model_not_found", "model")
        prompt_tokens = state.models.prompt_tokens(conversation)
        if prompt_tokens > params.max_prompt_tokens:
            limit = params.max_prompt_tokens
            return _error(400, f"the prompt is {prompt_tokens} tokens; the limit is {limit} "
                          "(serve.max_prompt_tokens)", "invalid_request_error", "context_length_exceeded",
                          "messages")
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        user_id = request.headers.get(params.user_header) or req.user
        versions = state.models.versions  # one snapshot: the aliases may move while this request waits
        if pinned is not None and pinned not in versions:
            return _error(404, f"{name}{PIN_SEPARATOR}{pinned} is not served any more",
                          "invalid_request_error", "model_not_found", "model")
        choice = route(user_id=user_id, request_id=request_id, versions=versions,
                       canary_share=params.canary_share, pinned=pinned)
        sampling = req.sampling()
        stream = TokenStream() if req.stream else None
        started = time.perf_counter()
        try:
            future = state.batcher.submit(choice.variant, versions[choice.variant], conversation, budget,
                                          sampling, streamer=stream)
        except Overloaded as exc:
            return _error(503, str(exc), "server_error", "overloaded", headers={"Retry-After": "1"})

        def record(reply: dict[str, Any], text: str, finish: str) -> float:
            latency_ms = (time.perf_counter() - started) * 1000
            variant, version = reply["variant"], reply["version"]  # who really answered
            state.writer.submit({
                "request_id": request_id, "created_at": time.time(),
                "user_hash": user_hash(user_id, name) if user_id else None, "variant": variant,
                "model_name": name, "model_version": version, "pinned": choice.pinned,
                "latency_ms": latency_ms, "prompt_tokens": prompt_tokens,
                "completion_tokens": reply["new_tokens"], "finish_reason": finish,
                "messages": req.sent_messages(), "answer": text,
            })
            if finish == CANCELLED:
                metrics.requests.labels(variant, version, CANCELLED).inc()
            else:
                metrics.answered(variant, version, latency_ms / 1000, reply["new_tokens"])
            logger.info("%s %s v%s %.0f ms %d+%d tokens%s", request_id, variant, version, latency_ms,
                        prompt_tokens, reply["new_tokens"],
                        f" prompt={conversation!r} answer={text!r}" if params.log_content else "")
            return latency_ms

        def usage(reply: dict[str, Any]) -> dict[str, int]:
            return {"prompt_tokens": prompt_tokens, "completion_tokens": reply["new_tokens"],
                    "total_tokens": prompt_tokens + reply["new_tokens"]}

        routed = versions[choice.variant]
        headers = {"x-request-id": request_id, PIN_HEADER: choice.variant, "x-tuneline-model-version": routed}
        if stream is not None:
            base = {"id": request_id, "created": int(time.time()),
                    "model": f"{name}{PIN_SEPARATOR}{choice.variant}",
                    "system_fingerprint": f"{name}-v{routed}"}
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            events = _stream_events(stream, future, state.models.tokenizer, req.stops(), base, record, usage,
                                    include_usage, on_disconnect=lambda: metrics.disconnects.inc())
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            reply = await asyncio.wrap_future(future)
        except Exception as exc:
            logger.error("request %s failed in generation: %s", request_id, exc)
            return _error(500, f"generation failed: {exc.__class__.__name__}", "server_error", "generation")
        text, finish = _apply_stops(reply["text"], req.stops(), "stop" if reply["stopped"] else "length")
        latency_ms = record(reply, text, finish)
        variant, version = reply["variant"], reply["version"]
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if req.tools:  # a reply in the template's tool-call format is returned as OpenAI tool_calls
            names = {(t.get("function") or t).get("name") for t in req.tools if isinstance(t, dict)}
            content, calls = state.models.tool_calls(reply.get("raw", reply["text"]), request_id, names)
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": calls}
                finish = "tool_calls"
        payload = {
            "id": request_id, "object": "chat.completion", "created": int(time.time()),
            "model": f"{name}{PIN_SEPARATOR}{variant}", "system_fingerprint": f"{name}-v{version}",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(reply),
            "tuneline": {"variant": variant, "model_version": version, "pinned": choice.pinned,
                         "sticky": choice.sticky, "latency_ms": round(latency_ms, 1)},
        }
        return JSONResponse(payload, headers={**headers, PIN_HEADER: variant,
                                              "x-tuneline-model-version": version})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Any:
        try:
            fb = FeedbackRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = validation_message(exc)
            return _error(400, message, "invalid_request_error", "invalid_feedback", param)
        # The exchange may still be queued for the store: wait for it (not the whole queue); a stuck
        # writer answers at once.
        if not await asyncio.to_thread(state.writer.wait_for, fb.request_id, 30.0):
            stuck = state.writer.health()["last_error"] if state.writer.stuck else None
            message = f"the feedback store is failing ({stuck}); retry later" if stuck else \
                "the feedback store is behind; retry shortly"
            return _error(503, message, "server_error", "store_busy", headers={"Retry-After": "5"})
        try:
            feedback_id = await asyncio.to_thread(
                state.store.record_feedback, fb.request_id, fb.thumb_value(), fb.rating, fb.correction,
                fb.comment,
            )
        except UnknownRequest as exc:
            return _error(404, str(exc), "invalid_request_error", "unknown_request", "request_id")
        except StoreError as exc:
            return _error(400, str(exc), "invalid_request_error", "invalid_feedback")
        except SQLAlchemyError as exc:  # logged without the SQL parameters (the correction, the comment)
            logger.error("feedback on %s not stored: %s", fb.request_id, error_summary(exc))
            return _error(503, f"the feedback store failed ({type(exc).__name__}); retry later",
                          "server_error", "store_error", headers={"Retry-After": "5"})
        verdict = fb.thumb if isinstance(fb.thumb, str) else {1: "up", -1: "down"}.get(fb.thumb) \
            or ("rating" if fb.rating else "correction" if fb.correction else "comment")
        metrics.feedback.labels(verdict).inc()
        return {"object": "feedback", "id": feedback_id, "request_id": fb.request_id, "status": "recorded"}

    return app


def _authorized(request: Request, keys: list[str]) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys)


async def _stream_events(stream: TokenStream, future: Any, tokenizer: Any, stops: list[str],
                         base: dict[str, Any], record: Any, usage: Any, include_usage: bool,
                         on_disconnect: Any = None) -> Any:
    """The server-sent events of one streamed completion; see `serve/streaming.py`.

    A client that goes away (the response task is cancelled) cancels generation, and the exchange is
    stored as generated so far, with finish_reason "cancelled".
    """
    recorded = False
    try:
        yield sse(chunk(base, {"role": "assistant", "content": ""}))
        ids: list[int] = []
        sent, hit = "", False
        async for token in stream.tokens():
            if hit:
                continue  # a stop sequence was reached: the rest is generated but never sent
            ids.append(token)
            ready, hit = safe_prefix(tokenizer.decode(ids, skip_special_tokens=True), stops)
            if len(ready) > len(sent):
                yield sse(chunk(base, {"content": ready[len(sent):]}))
                sent = ready
        try:
            reply = await asyncio.wrap_future(future)
        except Exception as exc:
            recorded = True  # nothing to store
            logger.error("request %s failed in generation: %s", base["id"], exc)
            failed = f"generation failed: {exc.__class__.__name__}"
            yield sse(openai_error(failed, "server_error", "generation"))
            return
        text, finish = _apply_stops(reply["text"], stops, "stop" if reply["stopped"] else "length")
        if text.startswith(sent) and len(text) > len(sent):  # held-back characters, or a backend's one chunk
            yield sse(chunk(base, {"content": text[len(sent):]}))
        elif not text.startswith(sent):
            logger.warning("request %s: streamed text diverged from the final answer", base["id"])
        record(reply, text, finish)
        recorded = True
    finally:
        if not recorded:  # the client went away: stop generating, store what was generated
            stream.cancel()
            if on_disconnect is not None:
                on_disconnect()
            future.add_done_callback(lambda done: _record_cancelled(done, record, stops))
    yield sse(chunk(base, {}, finish))
    if include_usage:
        yield sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage(reply)})
    yield sse("[DONE]")


def _record_cancelled(done: Any, record: Any, stops: list[str]) -> None:
    """Store a cancelled stream's exchange once generation has stopped (on the generation thread)."""
    if done.cancelled() or done.exception() is not None:
        return
    reply = done.result()
    try:
        record(reply, cut_at_stop(reply["text"], stops)[0], CANCELLED)
    except StoreError as exc:  # the server is shutting down and its writer is closed
        logger.warning("a cancelled stream's exchange was not stored: %s", exc)


def _apply_stops(text: str, stops: list[str], finish: str) -> tuple[str, str]:
    """Cut the answer at the first stop sequence (OpenAI's `stop`); finish_reason is then "stop"."""
    cut, hit = cut_at_stop(text, stops)
    return cut, "stop" if hit else finish


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
            response = _error(413, f"request body is over {self.limit} bytes (serve.max_request_bytes)",
                              "invalid_request_error", "request_too_large")
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

