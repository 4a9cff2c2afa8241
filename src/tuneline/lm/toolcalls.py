"""Read a tool call back out of a generated reply, in the format the model's own template writes.

The format is learnt from the template, never keyed on the model's name: a probe call
(`tlprobe_fn(tlprobe_arg=7)`) is rendered as an assistant turn, and what surrounds its JSON is the
family's format: `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` (Qwen2.5),
`{"name": ..., "parameters": ...}` (Llama-3.1), `[TOOL_CALLS] [{"name": ..., "arguments": ...}]`
(Mistral). A reply in that format becomes OpenAI `tool_calls`; anything else stays text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tuneline.lm.conversation import call_id
from tuneline.lm.errors import RenderError
from tuneline.lm.template import render

PROBE_NAME, PROBE_ARGS = "tlprobe_fn", {"tlprobe_arg": 7}
PROBE_TOOL = {"type": "function", "function": {
    "name": PROBE_NAME, "description": "probe",
    "parameters": {"type": "object", "properties": {"tlprobe_arg": {"type": "integer"}}}}}


@dataclass(frozen=True)
class ToolCallFormat:
    """Where a call's JSON starts (`marker`, may be empty), and the keys of name and arguments."""

    marker: str
    name_key: str
    args_key: str


def learn_format(tokenizer: Any) -> ToolCallFormat | None:
    """The tool-call format of the tokenizer's template, or None when it renders no tool calls."""
    call = {"id": call_id("probe", 0), "type": "function",
            "function": {"name": PROBE_NAME, "arguments": PROBE_ARGS}}
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    try:
        prompt = render(tokenizer, conv[:1], [PROBE_TOOL], add_generation_prompt=True)
        full = render(tokenizer, conv, [PROBE_TOOL])
    except RenderError:
        return None
    if not full.startswith(prompt) or PROBE_NAME not in full[len(prompt):]:
        return None
    text = full[len(prompt):]
    at = text.index(PROBE_NAME)
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text[:at]):
        if ch not in "{[":
            continue
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if end > at:
            first = value[0] if isinstance(value, list) and value else value
            if not isinstance(first, dict):
                return None
            name_key = next((k for k, v in first.items() if v == PROBE_NAME), None)
            args_key = next((k for k, v in first.items() if v == PROBE_ARGS), None)
            if name_key is None or args_key is None:
                return None
            return ToolCallFormat(text[:i].strip(), name_key, args_key)
    return None


def parse_tool_calls(fmt: ToolCallFormat | None, reply: str, seed: str, names: set[str] | None = None
                     ) -> tuple[str, list[dict[str, Any]]]:
    """(text content, OpenAI tool_calls) of a reply decoded with its special tokens.

    A call must name one of `names` (the request's tools) and carry the arguments key; with no marker
    (Llama-3.1 writes the bare JSON) the whole reply must be the call. Anything else stays text: an
    answer that merely contains JSON is never turned into a call.

    Args:
        fmt: the template's format (`learn_format`), or None (the reply is text).
        reply: the generated text, special tokens kept (markers such as `[TOOL_CALLS]` are special).
        seed: makes the call ids of this reply (e.g. the request id).
        names: the functions the request offered; None accepts any name.
    """
    if fmt is None:
        return reply, []
    decoder = json.JSONDecoder()
    calls: list[tuple[str, dict[str, Any]]] = []
    content_end = None
    pos = 0
    while True:
        start = reply.find(fmt.marker, pos) if fmt.marker else _first_json(reply, pos)
        if start < 0:
            break
        j = start + len(fmt.marker)
        while j < len(reply) and reply[j].isspace():
            j += 1
        try:
            value, end = decoder.raw_decode(reply, j)
        except (json.JSONDecodeError, RecursionError):
            break
        found = [_call(v, fmt) for v in (value if isinstance(value, list) else [value])]
        if not found or None in found or (names is not None and any(c[0] not in names for c in found)):
            break
        if not fmt.marker and (start != len(reply) - len(reply.lstrip()) or reply[end:].strip()):
            break  # bare JSON counts only as the whole reply
        content_end = start if content_end is None else content_end
        calls.extend(c for c in found if c is not None)
        pos = end
    if not calls:
        return reply, []
    ids = [call_id(seed, n) for n in range(len(calls))]
    return reply[:content_end].strip(), [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        for i, (name, args) in zip(ids, calls, strict=True)
    ]


def _first_json(text: str, pos: int) -> int:
    stripped = len(text[pos:]) - len(text[pos:].lstrip())
    return pos + stripped if text[pos + stripped : pos + stripped + 1] in ("{", "[") else -1


def _call(value: Any, fmt: ToolCallFormat) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(value, dict) or fmt.args_key not in value:
        return None
    if not isinstance(value.get(fmt.name_key), str):
        return None
    args = value[fmt.args_key]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return (value[fmt.name_key], args) if isinstance(args, dict) else None
