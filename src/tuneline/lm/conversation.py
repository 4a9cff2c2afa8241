"""A canonical record as a chat template wants it: messages with structured tool calls, and tools.

Canonical records keep a tool call as the call's JSON text in the assistant turn's `content` (listed in
`meta.tool_call_messages`) or as OpenAI-style `tool_calls` on the message. Templates that render tools
(Qwen2.5, Llama-3.1, Mistral) want `tool_calls=[{id, type: function, function: {name, arguments}}]`
with `arguments` an object, tool results with the `tool_call_id` they answer, and `tools` in the
OpenAI form `[{type: function, function: {...}}]`. Call ids are rewritten to 9 alphanumeric
characters derived from the record id and the call's position (Mistral's template refuses any other
shape); the links between a call and its result are kept.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tuneline.lm.errors import RenderError

Message = dict[str, Any]
TOOL_CALL_KEY = "tool_call_messages"
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def call_id(record_id: str, n: int) -> str:
    """A stable 9-character alphanumeric id for the n-th tool call of a record."""
    value = int.from_bytes(hashlib.sha256(f"{record_id}\0{n}".encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        value, rest = divmod(value, len(ID_ALPHABET))
        out.append(ID_ALPHABET[rest])
    return "".join(out)


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    """`tools` in the OpenAI form; bare function specs ({name, description, parameters}) are wrapped."""
    if not tools:
        return None
    items = tools if isinstance(tools, list) else [tools]
    out = []
    for i, tool in enumerate(items):
        if not isinstance(tool, dict):
            raise RenderError("bad_tools", f"tools[{i}] must be an object, got {type(tool).__name__}")
        if isinstance(tool.get("function"), dict):
            out.append({"type": "function", "function": tool["function"]})
        elif "name" in tool:
            out.append({"type": "function", "function": tool})
        else:
            raise RenderError("bad_tools", f"tools[{i}] has neither `function` nor `name`")
    return out


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise RenderError("bad_tool_call", f"{where}: arguments are not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise RenderError("bad_tool_call", f"{where}: arguments must be a JSON object")
    return value


def _one_call(raw: Any, where: str) -> tuple[str | None, str, dict[str, Any]]:
    """(original id, name, arguments) of one call in OpenAI or {name, arguments} form."""
    if not isinstance(raw, dict):
        raise RenderError("bad_tool_call", f"{where}: a tool call must be an object")
    fn = raw.get("function") if isinstance(raw.get("function"), dict) else raw
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise RenderError("bad_tool_call", f"{where}: the tool call has no name")
    args = fn.get("arguments", fn.get("parameters", {}))
    return raw.get("id"), name, _arguments(args, where)


def _parse_calls(content: str, where: str) -> tuple[str, list[Any]]:
    """(text before the call, raw calls) of a canonical tool-call turn (`text\\n\\n<call JSON>` or JSON)."""
    for text, tail in ((content[:i], content[i:]) for i in _json_starts(content)):
        try:
            parsed = json.loads(tail)
        except json.JSONDecodeError:
            continue
        except RecursionError:
            raise RenderError("bad_tool_call", f"{where}: the tool call's JSON is nested too deep") from None
        return text.strip(), parsed if isinstance(parsed, list) else [parsed]
    raise RenderError("bad_tool_call", f"{where}: the tool call is not valid JSON")


def _json_starts(content: str) -> list[int]:
    starts = [0] + [i + 2 for i in range(len(content) - 1) if content[i : i + 2] == "\n\n"]
    return [i for i in starts if content[i:].lstrip()[:1] in ("{", "[")]


def template_messages(record: dict[str, Any], merge_system: bool = False
                      ) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """(messages, tools) of a canonical record, ready for `apply_chat_template`.

    Args:
        record: a canonical record (`messages`, optional `meta.tools` and `meta.tool_call_messages`).
        merge_system: put the system prompt at the head of the first user turn (for templates without
            a system role); off unless configured.

    Raises:
        RenderError: a tool call or tool list that cannot be read (`bad_tool_call`, `bad_tools`).
    """
    meta = record.get("meta") or {}
    calls_at = set(meta.get(TOOL_CALL_KEY) or [])
    rid = str(record.get("id"))
    out: list[Message] = []
    ids: dict[str, str] = {}
    pending: list[tuple[str, str]] = []  # (new id, name) of calls not answered yet, in order
    n = 0
    for i, msg in enumerate(record["messages"]):
        role, content = msg["role"], msg.get("content") or ""
        where = f"message {i}"
        raw_calls = msg.get("tool_calls")
        if role == "assistant" and (raw_calls or i in calls_at):
            text = content
            if i in calls_at:
                # The content holds the call's JSON text (after any free text): it is what clean
                # checked and rewrote (e-mails, URLs), so it wins over the structure ingest kept.
                try:
                    text, raw_calls = _parse_calls(content, where)
                except RenderError:
                    if not raw_calls:
                        raise
            calls = []
            for raw in raw_calls:
                original, name, args = _one_call(raw, where)
                new = call_id(rid, n)
                n += 1
                if original:
                    if str(original) in ids:
                        raise RenderError("bad_tool_call", f"{where}: two calls share the id {original!r}")
                    ids[str(original)] = new
                pending.append((new, name))
                calls.append({"id": new, "type": "function", "function": {"name": name, "arguments": args}})
            out.append({"role": "assistant", "content": text, "tool_calls": calls})
        elif role == "tool":
            given = msg.get("tool_call_id")
            if given and ids and str(given) not in ids:
                raise RenderError("bad_tool_call", f"{where}: answers tool call {given!r}, which no call has")
            match = ids.get(str(given)) if given else None
            picked = next((p for p in pending if p[0] == match), pending[0] if pending else None)
            if picked is None:
                raise RenderError("bad_tool_call", f"{where}: a tool result answers no tool call")
            pending.remove(picked)
            out.append({"role": "tool", "content": content, "tool_call_id": picked[0], "name": picked[1]})
        else:
            out.append({"role": role, "content": content})
    if merge_system and out and out[0]["role"] == "system":
        system = out.pop(0)["content"]
        first = next((m for m in out if m["role"] == "user"), None)
        if first is not None:
            first["content"] = f"{system}\n\n{first['content']}" if system else first["content"]
    return out, normalize_tools(meta.get("tools"))
