"""Request bodies of the OpenAI-compatible API and the OpenAI error shape.

Only what tuneline can honour is accepted: one choice (`n` = 1), text content, greedy decoding unless
`temperature` > 0. Fields the OpenAI API has but that do not change the answer here (presence_penalty,
logit_bias, ...) are accepted and ignored, so unchanged clients keep working; fields that would change
it and are not supported are refused with a message naming them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant", "tool", "developer"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message content as text (text parts joined); other part types are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i}: only text parts are supported, got {part.get('type')!r}")
            parts.append(part["text"])
        return "".join(parts)


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
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported (send several requests for several answers)")
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError("streaming is not supported by this server; send stream=false")
        return value

    def budget(self, default: int) -> int | None:
        return self.max_completion_tokens or self.max_tokens or default

    def conversation(self) -> list[dict[str, str]]:
        # "developer" is the newer name of "system"; the chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="The `id` of the chat completion.")
    thumb: Literal["up", "down", 1, -1] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    correction: str | None = Field(None, description="The answer that would have been right.")
    comment: str | None = None

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
