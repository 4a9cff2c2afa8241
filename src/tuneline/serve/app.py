"""The HTTP server: an OpenAI-compatible chat API with an A/B canary and feedback capture.

    GET  /health                 liveness + what is served (versions, canary share, queue)
    GET  /metrics                Prometheus: requests, latency, tokens, feedback per variant
    GET  /v1/models              the model, and one pinned name per variant (`<model>@challenger`)
    POST /v1/chat/completions    routed (sticky per user) or pinned; the response names the variant
    POST /v1/feedback            thumb / rating / corrected answer on a completion's `id`

Every answered request is queued to the feedback store (never waited on). The answer's `id` is the
request id that feedback refers to; `model` is `<model>@<variant>`, and the headers
`x-tuneline-variant` / `x-tuneline-model-version` say which version answered.

The handlers are module-level functions on one `APIRouter`; each reaches the server's state (models,
batcher, feedback store and writer, settings) and its metrics through the typed dependencies `State` and
`Metrics` (both kept on `app.state`). A step that refuses a request raises `Refusal`, which the app answers
as an OpenAI-style error. `create_app` only assembles: state, middleware (`guards`), router.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from tuneline.config.serve import ServeParams
from tuneline.feedback.store import FeedbackStore, StoreError, UnknownRequest, error_summary
from tuneline.feedback.writer import ExchangeWriter
from tuneline.lm.errors import RenderError
from tuneline.serve.engine import Batcher, Overloaded
from tuneline.serve.guards import BodyLimit, authorized, error_response
from tuneline.serve.metrics import ServerMetrics
from tuneline.serve.routing import PIN_SEPARATOR, Route, parse_model, route, user_hash
from tuneline.serve.schemas import (
    ChatRequest,
    FeedbackRequest,
    validation_message,
)
from tuneline.serve.streaming import CANCELLED, TokenStream, apply_stops, stream_events

logger = logging.getLogger(__name__)
PIN_HEADER = "x-tuneline-variant"


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


class Refusal(Exception):
    """A request refused with an OpenAI-style error: raised by a handler's step, answered by `_refused`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.response = error_response(status, message, type_, code, param, headers)


async def _refused(_request: Request, exc: Refusal) -> JSONResponse:
    return exc.response


def server_state(request: Request) -> ServerState:
    """The state `create_app` was given (models, batcher, store and writer, settings)."""
    return request.app.state.tuneline


def server_metrics(request: Request) -> ServerMetrics:
    """This server's Prometheus metrics (one registry per app)."""
    return request.app.state.metrics


State = Annotated[ServerState, Depends(server_state)]
Metrics = Annotated[ServerMetrics, Depends(server_metrics)]
router = APIRouter()


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application over a loaded `ServerState` (closed when the app shuts down)."""
    app = FastAPI(title="tuneline", summary="OpenAI-compatible chat API with an A/B canary",
                  lifespan=_lifespan)
    app.state.tuneline = state
    app.state.metrics = metrics = ServerMetrics(state)
    app.middleware("http")(_guard)
    # Outermost: before anything reads the body.
    app.add_middleware(BodyLimit, limit=state.params.max_request_bytes,
                       on_refuse=partial(metrics.refused, "413"))
    app.add_exception_handler(Refusal, _refused)
    app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.tuneline.close()  # drains the generation queue and commits every queued exchange


async def _guard(request: Request, call_next: Any) -> Any:
    """The API key check, and the count of every refused chat completion (whoever refused it)."""
    state, metrics = server_state(request), server_metrics(request)
    # Deny by default: with keys configured, only the health probe is open.
    if state.api_keys and request.url.path != "/health" and not authorized(request, state.api_keys):
        response = error_response(401, "missing or invalid API key (Authorization: Bearer <key>)",
                                  "invalid_request_error", "invalid_api_key")
    else:
        response = await call_next(request)
    if request.url.path == "/v1/chat/completions" and response.status_code != 200:
        metrics.refused(str(response.status_code))
    return response


@router.get("/metrics")
async def prometheus(state: State, metrics: Metrics) -> Response:
    """Prometheus: requests, latency, tokens, feedback per variant."""
    return Response(metrics.render(state.models.versions), media_type=metrics.content_type)


@router.get("/health")
async def health(state: State) -> Any:
    """Liveness and what is served (versions, canary share, queue, store)."""
    alive = state.batcher.alive
    store = state.writer.health()
    # degraded: answers go on, but the feedback store takes no rows (they are kept, see `store`)
    status = "ok" if store["state"] == "ok" else "degraded"
    body = {
        "status": status if alive else "generation thread stopped",
        "model": state.models.model_name,
        "versions": state.models.versions,
        "canary_share": state.params.canary_share if "challenger" in state.models.versions else 0.0,
        "queued": state.batcher.queued,
        "store_pending": store["backlog"],
        "store": store,
        "reloads": state.watcher.reloads if state.watcher else None,
        "registry_error": state.watcher.last_error if state.watcher else None,
        "uptime_s": round(time.time() - state.started, 1),
    }
    return JSONResponse(body, status_code=200 if alive else 503)


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    """The model, and one pinned name per variant (`<model>@challenger`)."""
    name = state.models.model_name
    ids = [name] + [f"{name}{PIN_SEPARATOR}{v}" for v in state.models.variants]
    return {"object": "list", "data": [
        {"id": i, "object": "model", "created": int(state.started), "owned_by": "tuneline"} for i in ids
    ]}


@router.post("/v1/chat/completions")
async def chat(request: Request, state: State, metrics: Metrics) -> Any:
    """One chat completion: checked, routed (sticky per user, or pinned), generated, recorded."""
    req, conversation = await _read_chat(request, state)
    params, name = state.params, state.models.model_name
    budget = _budget(req, params)
    pinned = _pinned(request, req, state)
    prompt_tokens = _prompt_tokens(state, conversation)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    user_id = request.headers.get(params.user_header) or req.user
    versions = state.models.versions  # one snapshot: the aliases may move while this request waits
    if pinned is not None and pinned not in versions:
        raise Refusal(404, f"{name}{PIN_SEPARATOR}{pinned} is not served any more", code="model_not_found",
                      param="model")
    choice = route(user_id=user_id, request_id=request_id, versions=versions,
                   canary_share=params.canary_share, pinned=pinned)
    sampling = req.sampling()
    stream = TokenStream() if req.stream else None
    exchange = Exchange(state, metrics, req, conversation, request_id, user_id, choice, prompt_tokens)
    try:
        future = state.batcher.submit(choice.variant, versions[choice.variant], conversation, budget,
                                      sampling, streamer=stream)
    except Overloaded as exc:
        raise Refusal(503, str(exc), "server_error", "overloaded", headers={"Retry-After": "1"}) from None
    routed = versions[choice.variant]
    headers = {"x-request-id": request_id, PIN_HEADER: choice.variant, "x-tuneline-model-version": routed}
    if stream is not None:
        return _streamed(exchange, stream, future, routed, headers)
    return await _answered(exchange, future, headers)


async def _read_chat(request: Request, state: ServerState) -> tuple[ChatRequest, Any]:
    """The request body, validated, and its conversation as the model's chat template renders it."""
    try:
        req = ChatRequest.model_validate_json(await request.body())
        return req, state.models.conversation(req.conversation())
    except RenderError as exc:  # the model's chat template cannot render this conversation
        raise Refusal(400, f"{exc.reason}: {exc.detail}", code=exc.reason, param="messages") from None
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise Refusal(400, message, code="invalid_request", param=param) from None
    except ValueError as exc:
        raise Refusal(400, str(exc), code="invalid_request", param="messages") from None


def _budget(req: ChatRequest, params: ServeParams) -> int:
    """The completion's token budget, within the server's limit (and a request this server can stream)."""
    if req.stream and req.tools:
        raise Refusal(400, "streaming with `tools` is not supported (a tool call is known only once the "
                      "reply is complete); send stream=false", code="unsupported_parameter", param="stream")
    budget = req.budget(params.default_max_tokens)
    if budget > params.max_tokens_limit:
        raise Refusal(400, f"max_tokens {budget} is above this server's limit {params.max_tokens_limit} "
                      "(serve.max_tokens_limit)", code="max_tokens_too_large", param="max_tokens")
    return budget


def _pinned(request: Request, req: ChatRequest, state: ServerState) -> str | None:
    """The variant the header or the `model` field pins, or None (routed)."""
    try:
        return parse_model(request.headers.get(PIN_HEADER) or req.model, state.models.model_name,
                           state.models.variants)
    except ValueError as exc:
        raise Refusal(404, str(exc), code="model_not_found", param="model") from None


def _prompt_tokens(state: ServerState, conversation: Any) -> int:
    prompt_tokens = state.models.prompt_tokens(conversation)
    limit = state.params.max_prompt_tokens
    if prompt_tokens > limit:
        raise Refusal(400, f"the prompt is {prompt_tokens} tokens; the limit is {limit} "
                      "(serve.max_prompt_tokens)", code="context_length_exceeded", param="messages")
    return prompt_tokens


@dataclass
class Exchange:
    """One routed chat request: what is stored and counted once its answer is known."""

    state: ServerState
    metrics: ServerMetrics
    req: ChatRequest
    conversation: Any
    request_id: str
    user_id: str | None
    choice: Route
    prompt_tokens: int
    started: float = field(default_factory=time.perf_counter)

    def record(self, reply: dict[str, Any], text: str, finish: str) -> float:
        """Queue the exchange to the feedback store, count it, log it; returns the latency in ms."""
        latency_ms = (time.perf_counter() - self.started) * 1000
        variant, version = reply["variant"], reply["version"]  # who really answered
        name = self.state.models.model_name
        self.state.writer.submit({
            "request_id": self.request_id, "created_at": time.time(),
            "user_hash": user_hash(self.user_id, name) if self.user_id else None, "variant": variant,
            "model_name": name, "model_version": version, "pinned": self.choice.pinned,
            "latency_ms": latency_ms, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": reply["new_tokens"], "finish_reason": finish,
            "messages": self.req.sent_messages(), "answer": text,
        })
        if finish == CANCELLED:
            self.metrics.requests.labels(variant, version, CANCELLED).inc()
        else:
            self.metrics.answered(variant, version, latency_ms / 1000, reply["new_tokens"])
        logger.info("%s %s v%s %.0f ms %d+%d tokens%s", self.request_id, variant, version, latency_ms,
                    self.prompt_tokens, reply["new_tokens"],
                    f" prompt={self.conversation!r} answer={text!r}" if self.state.params.log_content else "")
        return latency_ms

    def usage(self, reply: dict[str, Any]) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": reply["new_tokens"],
                "total_tokens": self.prompt_tokens + reply["new_tokens"]}


def _streamed(ex: Exchange, stream: TokenStream, future: Any, routed: str,
              headers: dict[str, str]) -> StreamingResponse:
    """The server-sent events response of a streamed request (`stream_events`)."""
    name = ex.state.models.model_name
    base = {"id": ex.request_id, "created": int(time.time()),
            "model": f"{name}{PIN_SEPARATOR}{ex.choice.variant}", "system_fingerprint": f"{name}-v{routed}"}
    include_usage = bool((ex.req.stream_options or {}).get("include_usage"))
    events = stream_events(stream, future, ex.state.models.tokenizer, ex.req.stops(), base, ex.record,
                           ex.usage, include_usage, on_disconnect=ex.metrics.disconnects.inc)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _answered(ex: Exchange, future: Any, headers: dict[str, str]) -> JSONResponse:
    """The whole answer of a request that does not stream, once generated (tool calls parsed)."""
    try:
        reply = await asyncio.wrap_future(future)
    except Exception as exc:
        logger.error("request %s failed in generation: %s", ex.request_id, exc)
        raise Refusal(500, f"generation failed: {exc.__class__.__name__}", "server_error",
                      "generation") from None
    req, name = ex.req, ex.state.models.model_name
    text, finish = apply_stops(reply["text"], req.stops(), "stop" if reply["stopped"] else "length")
    latency_ms = ex.record(reply, text, finish)
    variant, version = reply["variant"], reply["version"]
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if req.tools:  # a reply in the template's tool-call format is returned as OpenAI tool_calls
        names = {(t.get("function") or t).get("name") for t in req.tools if isinstance(t, dict)}
        content, calls = ex.state.models.tool_calls(reply.get("raw", reply["text"]), ex.request_id, names)
        if calls:
            message = {"role": "assistant", "content": content or None, "tool_calls": calls}
            finish = "tool_calls"
    payload = {
        "id": ex.request_id, "object": "chat.completion", "created": int(time.time()),
        "model": f"{name}{PIN_SEPARATOR}{variant}", "system_fingerprint": f"{name}-v{version}",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": ex.usage(reply),
        "tuneline": {"variant": variant, "model_version": version, "pinned": ex.choice.pinned,
                     "sticky": ex.choice.sticky, "latency_ms": round(latency_ms, 1)},
    }
    return JSONResponse(payload, headers={**headers, PIN_HEADER: variant,
                                          "x-tuneline-model-version": version})


@router.post("/v1/feedback")
async def feedback(request: Request, state: State, metrics: Metrics) -> Any:
    """Thumb / rating / corrected answer on a completion's `id`."""
    try:
        fb = FeedbackRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise Refusal(400, message, code="invalid_feedback", param=param) from None
    # The exchange may still be queued for the store: wait for it (not the whole queue); a stuck
    # writer answers at once.
    if not await asyncio.to_thread(state.writer.wait_for, fb.request_id, 30.0):
        stuck = state.writer.health()["last_error"] if state.writer.stuck else None
        message = f"the feedback store is failing ({stuck}); retry later" if stuck else \
            "the feedback store is behind; retry shortly"
        raise Refusal(503, message, "server_error", "store_busy", headers={"Retry-After": "5"})
    try:
        feedback_id = await asyncio.to_thread(
            state.store.record_feedback, fb.request_id, fb.thumb_value(), fb.rating, fb.correction,
            fb.comment,
        )
    except UnknownRequest as exc:
        raise Refusal(404, str(exc), code="unknown_request", param="request_id") from None
    except StoreError as exc:
        raise Refusal(400, str(exc), code="invalid_feedback") from None
    except SQLAlchemyError as exc:  # logged without the SQL parameters (the correction, the comment)
        logger.error("feedback on %s not stored: %s", fb.request_id, error_summary(exc))
        raise Refusal(503, f"the feedback store failed ({type(exc).__name__}); retry later",
                      "server_error", "store_error", headers={"Retry-After": "5"}) from None
    verdict = fb.thumb if isinstance(fb.thumb, str) else {1: "up", -1: "down"}.get(fb.thumb) \
        or ("rating" if fb.rating else "correction" if fb.correction else "comment")
    metrics.feedback.labels(verdict).inc()
    return {"object": "feedback", "id": feedback_id, "request_id": fb.request_id, "status": "recorded"}
