"""Which chat template a model uses, and what that template can render.

`model.chat_template` is `auto` (the tokenizer's own), a path to a `.jinja` file, or the name of a
template bundled with tuneline (`resources/chat_templates/<name>.jinja`). Whatever is chosen is set on
the tokenizer before training and saved with the adapter, so evaluate and serve render exactly what
training saw.

What a template can render is found by rendering probe conversations, never by the model's name:
whether it marks assistant tokens (`{% generation %}`), refers to tools, and keeps a system prompt
both when the conversation ends with an answer (training) and when it ends with the generation
prompt (inference). Mistral-7B-Instruct-v0.3's template, for one, puts the system prompt only before
the *last* user turn of a conversation that ends with a user turn: the training render drops it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tuneline.errors import ConfigError
from tuneline.lm.errors import RenderError

AUTO = "auto"
BUNDLED = "chat_templates"
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")
PROBE = {"system": "tlprobe system 7781", "user": "tlprobe user 4412", "assistant": "tlprobe answer 9051"}

SystemSupport = Literal["ok", "unsupported", "dropped_in_training", "dropped_in_prompt"]


def bundled_templates() -> dict[str, str]:
    """Bundled template name -> template text."""
    folder = resources.files("tuneline.resources").joinpath(BUNDLED)
    return {p.name.removesuffix(".jinja"): p.read_text(encoding="utf-8")
            for p in folder.iterdir() if p.name.endswith(".jinja")}


def resolve_chat_template(setting: str, root: Path) -> str | None:
    """The template text `model.chat_template` names; None for `auto` (keep the tokenizer's own).

    Raises:
        ConfigError: neither an existing file (relative to the workspace root) nor a bundled name.
    """
    if setting == AUTO:
        return None
    path = Path(setting) if Path(setting).is_absolute() else root / setting
    if path.is_file():
        return path.read_text(encoding="utf-8")
    bundled = bundled_templates()
    if setting in bundled:
        return bundled[setting]
    raise ConfigError(
        f"model.chat_template: {setting!r} is neither a file ({path} does not exist) nor a bundled "
        f"template (bundled: {', '.join(sorted(bundled))}); use `auto` for the tokenizer's own"
    )


def apply_chat_template_setting(tokenizer: Any, setting: str, root: Path) -> str:
    """Set the configured template on `tokenizer`; returns where the template came from (for reports).

    Raises:
        ConfigError: the setting names nothing, or the tokenizer has no template and `auto` is set.
    """
    text = resolve_chat_template(setting, root)
    if text is not None:
        tokenizer.chat_template = text
        return setting
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "model.chat_template: the tokenizer has no chat template; name a .jinja file or a bundled "
            f"template ({', '.join(sorted(bundled_templates()))})"
        )
    return "tokenizer"


def has_generation_block(template: str) -> bool:
    """The template marks assistant tokens itself (`{% generation %}` ... `{% endgeneration %}`)."""
    return bool(GENERATION_BLOCK.search(template))


def referenced_names(template: str) -> set[str]:
    """Every variable name the template reads (jinja2's own analysis of its source)."""
    import jinja2  # lazy: jinja2 ~0.3 s; `tuneline serve` imports toolcalls
    from jinja2 import meta  # lazy: jinja2; as above

    plain = GENERATION_TAGS.sub("", template)  # transformers' own tag, unknown to plain jinja2
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    try:
        names = set(meta.find_undeclared_variables(env.parse(plain)))
    except jinja2.TemplateSyntaxError as exc:
        detail = f"the chat template does not parse: {exc} (line {exc.lineno})"
        raise RenderError("template_error", detail) from None
    # Attributes of messages (message.tool_calls) are not variables; a template that reads them renders
    # structured tool calls.
    return names | set(re.findall(r"\b(tool_calls|tool_call_id)\b", plain))


@dataclass(frozen=True)
class TemplateProfile:
    """What a chat template can render, found by probing it."""

    generation_block: bool
    tools: bool
    system: SystemSupport
    system_detail: str  # the template's own error, or how the system prompt was lost


def render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
           add_generation_prompt: bool = False) -> str:
    """The template's text for `messages` (no tokens added beyond the template's own).

    Raises:
        RenderError: the template raised (`raise_exception`, a missing key, a type error).
    """
    try:
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # a template is user code: any error it raises is about this row
        message = str(exc).strip() or type(exc).__name__
        raise RenderError("template_error", f"the chat template raised: {message}") from None


def profile(tokenizer: Any) -> TemplateProfile:
    """Probe the tokenizer's template (see the module docstring)."""
    template = tokenizer.chat_template or ""
    names = referenced_names(template)
    system, detail = _system_support(tokenizer)
    # A template that never reads `tools` cannot show the model the functions it may call.
    return TemplateProfile(has_generation_block(template), "tools" in names, system, detail)


def _system_support(tokenizer: Any) -> tuple[SystemSupport, str]:
    conv = [{"role": r, "content": PROBE[r]} for r in ("system", "user", "assistant")]
    try:
        full = render(tokenizer, conv)
        prompt = render(tokenizer, conv[:2], add_generation_prompt=True)
    except RenderError as exc:
        return "unsupported", exc.detail
    if PROBE["system"] not in prompt:
        return "dropped_in_prompt", "the template drops the system prompt from the inference prompt"
    if PROBE["system"] not in full:
        return "dropped_in_training", (
            "the template renders the system prompt before the last user turn of a prompt but drops it "
            "from a conversation that ends with an answer, so training and serving would see different "
            "prompts"
        )
    return "ok", ""
