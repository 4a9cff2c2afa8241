"""`ChatFormat`: one tokenizer's chat template, probed once, for training rows and for prompts.

Assistant-only labels for any template:

- a template with a `{% generation %}` block marks assistant tokens itself
  (`return_assistant_tokens_mask`);
- otherwise the mask comes from rendering prefixes: for each assistant turn k the prompt is
  `render(messages[:k], add_generation_prompt=True)`, which must be a token prefix of the whole
  conversation's render; the turn's labels are the tokens after it, up to where
  `render(messages[:k+1])` and the whole render part, cut just after the first stop token
  (`stops.stop_ids`: the end of turn) so the model learns to stop and nothing of the template's
  scaffolding after it is taught.

A conversation the template cannot render faithfully raises `RenderError` with a reason
(`template_error`, `template_no_system`, `template_drops_system`, `template_no_tools`,
`template_prefix_mismatch`, `special_token_in_content`, ...): the caller rejects that row, never the
whole stage.
"""

from __future__ import annotations

import json
from typing import Any

from tuneline.lm.conversation import Message, template_messages
from tuneline.lm.errors import RenderError
from tuneline.lm.stops import PROBE_ANSWER, PROBE_EXCHANGE, encode_text, special_ids, stop_ids
from tuneline.lm.template import profile, render
from tuneline.lm.toolcalls import learn_format


class ChatFormat:
    """Render, encode and stop for one tokenizer (and optional generation config).

    Args:
        tokenizer: a tokenizer with a chat template.
        generation_config: the model's generation config (its EOS ids join the stop set), or None.
        merge_system: put the system prompt into the first user turn (`model.merge_system`).
    """

    def __init__(self, tokenizer: Any, generation_config: Any = None, merge_system: bool = False) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise RenderError("no_chat_template", "the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.merge_system = merge_system
        self.profile = profile(tokenizer)
        self.stop_ids = stop_ids(tokenizer, generation_config)
        self._tool_format: Any = None
        specials = special_ids(tokenizer)
        self.special_texts = sorted(
            {t for t in (tokenizer.convert_ids_to_tokens(i) for i in specials) if t and len(t) > 1},
            key=len, reverse=True,
        )
        self._check_answer_span()

    def _check_answer_span(self) -> None:
        """A probe answer must be supervised as itself plus a stop token: a template whose generation
        prompt does not end where the answer starts, or whose answers end with no stop token (ChatML text
        on a tokenizer without `<|im_end|>`), would teach a model that never stops.

        Raises:
            RenderError: `template_unusable`, naming what was supervised.
        """
        ids, mask = self.encode({"id": "probe", "meta": {}, "messages": PROBE_EXCHANGE})
        span = [t for t, m in zip(ids, mask, strict=True) if m]
        text = self.tokenizer.decode(span[:-1]).strip() if span else ""
        if not span or span[-1] not in self.stop_ids or text != PROBE_ANSWER:
            shown, stops = self.tokenizer.decode(span), self.tokenizer.convert_ids_to_tokens(self.stop_ids)
            raise RenderError(
                "template_unusable",
                f"an answer {PROBE_ANSWER!r} is supervised as {shown!r}: it must be the answer followed by "
                f"one stop token ({stops}); the template's generation prompt must end where the answer "
                "starts, and its end of turn must be a special token of this tokenizer",
            )

    # ---- a record as the template wants it ----

    def conversation(self, record: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """(messages, tools) of a canonical record, checked against what the template can render."""
        messages, tools = template_messages(record, self.merge_system)
        self.check(messages, tools)
        return messages, tools

    def check(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> None:
        """Refuse what this template would render wrongly (see the module docstring's reasons)."""
        # Content, the tool calls' names and arguments, the tools: all of it reaches the template as text.
        parts = [(f"message {i} ({m['role']})",
                  f"{m.get('content') or ''}{json.dumps(m.get('tool_calls') or [], ensure_ascii=False)}")
                 for i, m in enumerate(messages)]
        parts.append(("the tools", json.dumps(tools or [], ensure_ascii=False)))
        for where, text in parts:
            hit = next((s for s in self.special_texts if s in text), None)
            if hit:
                raise RenderError("special_token_in_content", f"{where} contains the special token {hit!r} "
                                  "as text")
        p = self.profile
        if any(m["role"] == "system" for m in messages) and p.system != "ok":
            hint = "; set model.merge_system=true to put it at the head of the first user turn"
            reason = "template_no_system" if p.system == "unsupported" else "template_drops_system"
            raise RenderError(reason, p.system_detail + hint)
        uses_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
        if uses_tools and (not p.tools or self.tool_format is None):
            raise RenderError("template_no_tools", "the chat template renders no tools or no tool calls "
                              "(it never reads `tools`, or a probe call does not appear in its answer)")

    @property
    def tool_format(self) -> Any:
        """The template's tool-call format (`toolcalls.learn_format`), learnt on first use; None when
        the template renders no tool calls."""
        if self._tool_format is None:
            self._tool_format = learn_format(self.tokenizer) or False
        return self._tool_format or None

    # ---- training rows ----

    def encode(self, record: dict[str, Any]) -> tuple[list[int], list[int]]:
        """(input_ids, assistant_mask) of a canonical record, untruncated.

        Raises:
            RenderError: the row cannot be rendered faithfully (its reason names why).
        """
        messages, tools = self.conversation(record)
        if self.profile.generation_block:
            return self._marked(messages, tools)
        return self._by_prefix(messages, tools)

    def _marked(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> tuple[list, list]:
        try:
            enc = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
        except Exception as exc:  # the template is user code
            raise RenderError("template_error", f"the chat template raised: {exc}") from None
        return list(enc["input_ids"]), list(enc["assistant_masks"])

    def _by_prefix(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> tuple[list, list]:
        full = self.ids(messages, tools)
        mask = [0] * len(full)
        stops = set(self.stop_ids)
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.ids(messages[:k], tools, add_generation_prompt=True)
            if full[: len(prompt)] != prompt:
                raise RenderError(
                    "template_prefix_mismatch",
                    f"message {k} (assistant): the prompt rendered with the generation prompt is not a "
                    "prefix of the whole conversation's render, so training and inference would see "
                    "different prompts",
                )
            upto = full if k == len(messages) - 1 else self.ids(messages[: k + 1], tools)
            common = next((j for j, (a, b) in enumerate(zip(upto, full, strict=False)) if a != b),
                          min(len(upto), len(full)))
            end = next((j + 1 for j in range(len(prompt), common) if full[j] in stops), common)
            if end <= len(prompt):
                raise RenderError("template_empty_turn",
                                  f"message {k} (assistant) renders no token after its prompt")
            mask[len(prompt):end] = [1] * (end - len(prompt))
        return full, mask

    # ---- prompts ----

    def text(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
             add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, messages, tools, add_generation_prompt)

    def ids(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
            add_generation_prompt: bool = False) -> list[int]:
        return encode_text(self.tokenizer, self.text(messages, tools, add_generation_prompt))

    def prompt(self, messages: list[Message], tools: list[dict[str, Any]] | None = None
               ) -> tuple[str, list[int]]:
        """(text, ids) of the prompt that asks the model for the next assistant turn."""
        self.check(messages, tools)
        text = self.text(messages, tools, add_generation_prompt=True)
        return text, encode_text(self.tokenizer, text)
