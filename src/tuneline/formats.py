"""Row converters: one raw row (a dict) of a known format -> canonical messages, category and meta.

Formats (DESIGN §4):

- ``alpaca``: ``instruction``, ``input``, ``output``, optional ``system`` and ``history`` ([[q, a], ...]).
- ``sharegpt``: ``conversations[{from, value}]`` (human/user, gpt/assistant, system, function_call,
  observation), optional top-level ``system`` and ``tools`` (a JSON string or a list).
- ``messages``: OpenAI style ``messages[{role, content}]``; content may be a list of text parts
  (``{"type": "text", "text": ...}``, or ``"value"`` in place of ``"text"``); an assistant turn with
  ``tool_calls`` becomes that call's JSON text.
- ``table``: a flat row (CSV, parquet, or JSON with prompt/response-like keys) read through a column mapping
  (canonical name -> column), auto-detected from common header names when none is given.

Tool calls: an assistant turn that is a tool call (sharegpt ``function_call``, OpenAI ``tool_calls``) keeps
``role: assistant`` with the call's JSON as ``content`` (what the text stages clean, dedup and check) and,
when the call is readable, the OpenAI-style structure as ``tool_calls`` (``[{id, type: function,
function: {name, arguments: JSON text}}]``); a tool result keeps the ``tool_call_id`` it answers. The
turn's index in ``messages`` is listed in ``meta["tool_call_messages"]`` so later stages can leave
structured payloads alone. Chat templates render the structure (`tuneline.lm.conversation`).

What tuneline does not tune on is named, not mistaken for broken rows (`check_supported`, `check_media`):
preference pairs (``chosen``/``rejected``, DPO-style) are ``unsupported_format``; rows with attached
media (``images``/``videos``/``audios``) or ``<image>``/``<video>``/``<audio>`` placeholders in the text are
``unsupported_content``.

Every problem raises `RowError(reason, detail)`; the caller turns it into a rejected row.
Empty strings are *not* a problem here (`clean` owns empty content); absent, null or mistyped fields are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]
Converted = tuple[list[Message], dict[str, Any]]  # messages, meta (category is resolved by the caller)

TOOL_CALL_KEY = "tool_call_messages"

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}

# Header names recognised when a table source gives no column mapping (compared case-insensitively).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "prompt", "question", "query", "指令", "问题", "提问", "提示"),
    "input": ("input", "context", "输入", "上下文"),
    "output": ("output", "response", "answer", "completion", "输出", "回答", "答案", "回复"),
    "system": ("system", "system_prompt", "系统提示"),
    "category": ("category", "类别", "分类"),
    "messages": ("messages", "conversations", "对话"),
}


class RowError(ValueError):
    """A row that cannot become a canonical record; `reason` is the machine-readable rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def require_str(row: dict[str, Any], key: str, where: str = "") -> str:
    """The string value of a required field, or RowError missing_field / null_field / wrong_type."""
    label = f"{where}{key}"
    if key not in row:
        raise RowError("missing_field", f"field `{label}` is missing")
    return expect_str(row[key], label)


def expect_str(value: Any, label: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowError("null_field", f"field `{label}` is null")
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field `{label}` must be a string, got {type(value).__name__}")
    return value


def optional_str(row: dict[str, Any], key: str) -> str | None:
    """A string field that may be absent or null (-> None); any other type is wrong_type."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return expect_str(value, key)


def jsonable(value: Any) -> Any:
    """Make a raw value safe for canonical JSON: NaN/inf -> None, unknown types (dates, bytes) -> str."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars from parquet
        return jsonable(value.tolist())
    return str(value)


def _extra_meta(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in row.items() if k not in known}


def parse_tools(value: Any) -> Any:
    """`tools` as given by sharegpt/OpenAI rows: a JSON string or a list -> parsed list/dict."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(
                "wrong_type", f"field `tools` is a string but not valid JSON ({exc.msg})"
            ) from None
    if isinstance(value, list | dict):
        return jsonable(value)
    raise RowError("wrong_type", f"field `tools` must be a JSON string or a list, got {type(value).__name__}")


def structured_call(text: str, seed: str) -> dict[str, Any] | None:
    """A sharegpt `function_call` value (`{"name": ..., "arguments": {...}}` JSON) as an OpenAI tool call
    with a stable id, or None when the text is not such a call (it then stays text only)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:9]
    return {"id": f"call_{digest}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(jsonable(args), ensure_ascii=False)}}


def alpaca(row: dict[str, Any], category_field: str = "category") -> Converted:
    """Alpaca row -> messages: [system], history turns, user (instruction + input), assistant (output)."""
    instruction = require_str(row, "instruction")
    output = require_str(row, "output")
    inp = optional_str(row, "input") or ""
    system = optional_str(row, "system")
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": system})
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise RowError(
                "wrong_type", f"field `history` must be a list of [q, a] pairs, got {type(history).__name__}"
            )
        for i, pair in enumerate(history):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise RowError("wrong_type", f"field `history[{i}]` must be a [question, answer] pair")
            messages.append({"role": "user", "content": expect_str(pair[0], f"history[{i}][0]")})
            messages.append({"role": "assistant", "content": expect_str(pair[1], f"history[{i}][1]")})
    user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    meta = _extra_meta(row, {"instruction", "input", "output", "system", "history", category_field})
    return messages, meta


def sharegpt(row: dict[str, Any], category_field: str = "category") -> Converted:
    """ShareGPT row -> messages; function_call -> assistant (tool call), observation -> tool."""
    turns = row.get("conversations")
    if "conversations" not in row:
        raise RowError("missing_field", "field `conversations` is missing")
    if turns is None:
        raise RowError("null_field", "field `conversations` is null")
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"field `conversations` must be a list, got {type(turns).__name__}")
    messages: list[Message] = []
    tool_calls: list[int] = []
    pending: list[str] = []  # ids of calls not answered yet
    system = optional_str(row, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"`conversations[{i}]` must be an object, got {type(turn).__name__}")
        sender = require_str(turn, "from", f"conversations[{i}].")
        value = require_str(turn, "value", f"conversations[{i}].")
        role = SHAREGPT_ROLES.get(sender)
        if role is None:
            raise RowError(
                "unknown_role", f"`conversations[{i}].from` is {sender!r}; known: {', '.join(SHAREGPT_ROLES)}"
            )
        message: Message = {"role": role, "content": value}
        if sender == "function_call":
            tool_calls.append(len(messages))
            call = structured_call(value, f"{i}\0{value}")
            if call is not None:
                message["tool_calls"] = [call]
                pending.append(call["id"])
        elif role == "tool" and pending:
            message["tool_call_id"] = pending.pop(0)
        messages.append(message)
    meta = _extra_meta(row, {"conversations", "system", "tools", category_field})
    if row.get("tools") is not None:
        meta["tools"] = parse_tools(row["tools"])
    if tool_calls:
        meta[TOOL_CALL_KEY] = tool_calls
    return messages, meta


def _openai_content(msg: dict[str, Any], i: int) -> str | None:
    if "content" not in msg:
        return None
    content = msg["content"]
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(
                    "unsupported_content",
                    f"`messages[{i}].content[{j}]` is {kind!r}; tuneline tunes text-only models, so only "
                    "text parts can be tuned on",
                )
            # Some exporters write the text under `value` (the sharegpt habit) instead of OpenAI's `text`.
            key = "text" if "text" in part else "value" if "value" in part else None
            if key is None:
                raise RowError("missing_field", f"`messages[{i}].content[{j}]` has no `text` (or `value`)")
            texts.append(expect_str(part[key], f"messages[{i}].content[{j}].{key}"))
        return "\n".join(texts)
    raise RowError(
        "wrong_type",
        f"`messages[{i}].content` must be a string or a list of text parts, got {type(content).__name__}",
    )


def messages_format(row: dict[str, Any], category_field: str = "category") -> Converted:
    """OpenAI `messages` row -> canonical messages (text parts joined by newlines, tool calls as JSON)."""
    if "messages" not in row:
        raise RowError("missing_field", "field `messages` is missing")
    raw = row["messages"]
    if raw is None:
        raise RowError("null_field", "field `messages` is null")
    if not isinstance(raw, list):
        raise RowError("wrong_type", f"field `messages` must be a list, got {type(raw).__name__}")
    messages: list[Message] = []
    tool_calls: list[int] = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise RowError("wrong_type", f"`messages[{i}]` must be an object, got {type(msg).__name__}")
        role_name = require_str(msg, "role", f"messages[{i}].")
        role = OPENAI_ROLES.get(role_name)
        if role is None:
            raise RowError(
                "unknown_role", f"`messages[{i}].role` is {role_name!r}; known: {', '.join(OPENAI_ROLES)}"
            )
        content = _openai_content(msg, i)
        calls = msg.get("tool_calls") if role == "assistant" else None
        if calls:
            if not isinstance(calls, list):
                raise RowError("wrong_type", f"`messages[{i}].tool_calls` must be a list")
            call_text = json.dumps(jsonable(calls), ensure_ascii=False)
            content = f"{content}\n\n{call_text}" if content else call_text
            tool_calls.append(len(messages))
        elif content is None:
            kind = "missing" if "content" not in msg else "null"
            raise RowError(f"{kind}_field", f"field `messages[{i}].content` is {kind}")
        message: Message = {"role": role, "content": content}
        if calls:
            message["tool_calls"] = jsonable(calls)
        if role == "tool" and isinstance(msg.get("tool_call_id"), str):
            message["tool_call_id"] = msg["tool_call_id"]
        messages.append(message)
    meta = _extra_meta(row, {"messages", "tools", category_field})
    if row.get("tools") is not None:
        meta["tools"] = parse_tools(row["tools"])
    if tool_calls:
        meta[TOOL_CALL_KEY] = tool_calls
    return messages, meta


MEDIA_FIELDS = ("images", "videos", "audios", "image", "video", "audio")
MEDIA_PLACEHOLDERS = ("<image>", "<video>", "<audio>")


def _present(value: Any) -> bool:
    return value not in (None, "", [], {}) and not (isinstance(value, float) and math.isnan(value))


def check_supported(row: dict[str, Any]) -> None:
    """Refuse, by name, the kinds of data tuneline does not tune on (whatever the row's format).

    Raises:
        RowError: unsupported_format for a preference pair (`chosen` and `rejected`), unsupported_content
            for a row with attached images, videos or audio.
    """
    if "chosen" in row and "rejected" in row:
        raise RowError(
            "unsupported_format",
            "preference pairs (chosen/rejected) are not supported; tuneline tunes on conversations (SFT). "
            "To tune on the preferred answers, write each pair as a conversation ending with its `chosen` "
            "answer",
        )
    for key in MEDIA_FIELDS:
        if _present(row.get(key)):
            raise RowError(
                "unsupported_content",
                f"field `{key}` attaches media to the row (multimodal data); tuneline tunes text-only models "
                "and would silently drop them, so the row is not tuned on",
            )


def check_media(messages: list[Message]) -> None:
    """Refuse text that points at media the row cannot carry (`<image>` placeholders of multimodal sets).

    Raises:
        RowError: unsupported_content, naming the message and the placeholder.
    """
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if msg.get("role") == "tool" or not isinstance(content, str) or "<" not in content:
            continue
        for tag in MEDIA_PLACEHOLDERS:
            if tag in content:
                raise RowError(
                    "unsupported_content",
                    f"message {i} holds a {tag} placeholder (multimodal data); tuneline tunes text-only "
                    "models, and the text without its media would teach answers about nothing",
                )


def resolve_columns(header: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """Canonical name -> column of `header`: the configured mapping, else detected from common names."""
    if mapping:
        return dict(mapping)
    lowered = {h.strip().lower(): h for h in header}
    found: dict[str, str] = {}
    for canon, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                found[canon] = lowered[alias]
                break
    return found


def table(row: dict[str, Any], columns: dict[str, str], category_field: str = "category") -> Converted:
    """A flat row read through `columns` (canonical -> column): a messages column, or instruction/output."""
    if "messages" in columns:
        value = _column(row, columns, "messages")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise RowError(
                    "bad_json", f"column `{columns['messages']}` is not valid JSON ({exc.msg})"
                ) from None
        if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
            messages, meta = sharegpt({"conversations": value})
        else:
            messages, meta = messages_format({"messages": value})
    else:
        if "instruction" not in columns or "output" not in columns:
            raise RowError(
                "unknown_format",
                "no instruction/output or messages column recognised (map them "
                "with `columns` in the source's config)",
            )
        fields = {k: _column(row, columns, k) for k in ("instruction", "output")}
        for k in ("input", "system"):
            if k in columns:
                fields[k] = _column(row, columns, k)
        messages, meta = alpaca(fields)
    used = set(columns.values()) | {category_field}
    meta.update(_extra_meta(row, used))
    return messages, meta


def _column(row: dict[str, Any], columns: dict[str, str], canon: str) -> Any:
    col = columns[canon]
    if col not in row:
        raise RowError("missing_field", f"column `{col}` (for {canon}) is missing; columns: {', '.join(row)}")
    return row[col]


def detect(row: dict[str, Any]) -> str | None:
    """The format of one JSON object row: messages, sharegpt, alpaca, table (prompt/response), or None."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    cols = resolve_columns(list(row), {})
    if "instruction" in cols and "output" in cols:
        return "table"
    return None


def converter(
    fmt: str, columns: dict[str, str], category_field: str
) -> Callable[[dict[str, Any]], Converted]:
    """The row converter of a format name (table formats use the column mapping)."""
    if fmt == "alpaca":
        return lambda row: alpaca(row, category_field)
    if fmt == "sharegpt":
        return lambda row: sharegpt(row, category_field)
    if fmt == "messages":
        return lambda row: messages_format(row, category_field)
    return lambda row: table(row, columns or resolve_columns(list(row), {}), category_field)


def check_roles(messages: list[Message], tool_call_indices: list[int]) -> None:
    """Structural rules: [system] user assistant (user assistant)*, tool turns only after a tool call.

    Raises:
        RowError: empty_conversation, bad_role_order or no_final_assistant.
    """
    if not messages:
        raise RowError("empty_conversation", "the conversation has no messages")
    calls = set(tool_call_indices)
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "system":
            ok = i == 0
        elif role == "user":
            ok = prev in (None, "system", "assistant") and (i - 1) not in calls
        elif role == "assistant":
            ok = prev in ("user", "tool")
        else:  # tool: answers the assistant's tool call just before it (or another tool result)
            ok = prev == "tool" or (prev == "assistant" and (i - 1) in calls)
        if not ok:
            after = f"after {prev!r}" if prev else "first"
            raise RowError("bad_role_order", f"`{role}` at message {i} cannot come {after}")
        prev = role
    # Ending on a tool call is fine: teaching the model to emit the call is the point of tool-use data.
    if prev != "assistant":
        raise RowError("no_final_assistant", f"the conversation ends with a `{prev}` turn, not `assistant`")
