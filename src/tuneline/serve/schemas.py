"""Request bodies of the OpenAI-compatible API and the OpenAI error shape.

Honoured: `messages` (text content; an assistant's `tool_calls` and `tool` replies, rendered as training
renders such data), `tools` (shown to templates that render tools), `max_tokens` /
`max_completion_tokens`, `temperature` (absent, 0 or below `GREEDY_BELOW` = 0.001: greedy, as evaluation;
dividing the logits by a smaller one overflows them to inf/nan), `top_p`, `stop`, `user`, `stream`
(+ `stream_options.include_usage`). Refused with a message naming the field: `n` > 1; a NUL character in
a feedback's `request_id`, `correction` or `comment`.
Accepted and ignored, so unchanged clients keep working: `seed`, `presence_penalty`,
`frequency_penalty`, `logit_bias`, `logprobs`, `tool_choice`, `response_format` (the fine-tuned
model answers in the format it was trained on).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneline.formats import messages_format

Role = Literal["system", "user", "assistant", "tool", "developer"]
# Below this temperature sampling is greedy decoding in all but name, and logits / temperature can
# overflow to inf (HTTP 500 "probability tensor contains inf/nan"): such requests are decoded greedily.
GREEDY_BELOW = 1e-3


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported (send several requests for several answers)")
        return value

    def sampling(self) -> dict[str, float] | None:
        """How to decode: None (greedy) for no temperature or one below `GREEDY_BELOW`, else sampling."""
        if self.temperature is None or self.temperature < GREEDY_BELOW:
            return None
        return {"temperature": self.temperature, "top_p": self.top_p or 1.0}

    def budget(self, default: int) -> int | None:
        return self.max_completion_tokens or self.max_tokens or default

    def sent_messages(self) -> list[dict[str, Any]]:
        """The messages as the client sent them (tool_calls, tool_call_id, ... kept): what the feedback
        store keeps, so an export is read back by `ingest` exactly like any OpenAI-format data."""
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def conversation(self) -> dict[str, Any]:
        """The request as a canonical record, exactly as ingest reads OpenAI `messages` training data
        (text parts joined, "developer" as "system", tool calls kept), with the request's `tools`; the
        served model's `ChatFormat` then renders it as training rendered such rows.

        Raises:
            ValueError: the messages cannot be converted (the reason says why).
        """
        raw = {"messages": self.sent_messages()}
        if self.tools:
            raw["tools"] = self.tools
        messages, meta = messages_format(raw)
        return {"id": "request", "messages": messages, "meta": meta}

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="The `id` of the chat completion.")
    thumb: Literal["up", "down", 1, -1] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    correction: str | None = Field(None, max_length=32000, description="The answer that was right.")
    comment: str | None = Field(None, max_length=4000)

    @field_validator("request_id", "correction", "comment")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:  # not text; PostgreSQL cannot store it
            raise ValueError("contains a NUL character (\\u0000)")
        return value

    def thumb_value(self) -> int | None:
        return {"up": 1, "down": -1, 1: 1, -1: -1}.get(self.thumb) if self.thumb is not None else None


def openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """The error body OpenAI clients parse (`openai.BadRequestError` etc. show `message`)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_message(exc: Any) -> tuple[str, str | None]:
    """One readable line from a pydantic ValidationError, and the first offending field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    lines = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5]]
    return "; ".join(lines), loc or None
