"""The demo base model's special tokens and chat template (canonical roles: system, user, assistant, tool).

A conversation renders as::

    <|bos|><|system|>
    You are terse.<|end|>
    <|user|>
    Hi<|end|>
    <|assistant|>
    Hello.<|eos|>

Each turn is a role marker, a newline, the content and a terminator. Assistant turns end with
`<|eos|>` (so generation stops there); every other turn ends with `<|end|>`. With
`add_generation_prompt=True` the render ends with `<|assistant|>\\n`, the cue for the model to answer.

Assistant-only loss masking: the assistant content *and its closing `<|eos|>`* sit inside a Jinja
`{% generation %}` block, so `tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)` returns `assistant_masks` with 1 exactly on those tokens. The eos
is in the mask on purpose: the model must learn to stop. The role marker and newline are prompt.

Tools (OpenAI form) are listed first in a `<|system|>` block (`Tools:` and one JSON object per line);
an assistant's structured tool calls follow its content as `{"name": ..., "arguments": {...}}` JSON,
inside the generation block, so the model learns to emit them.

The template adds `<|bos|>` itself; the tokenizer does not add it to plain `tokenizer(text)` calls
(`add_bos_token` is off), so a rendered chat is never given a second bos.
"""

from __future__ import annotations

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
END = "<|end|>"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ("system", "user", "assistant", "tool")}

# Order fixes the ids: pad=0, bos=1, eos=2, end=3, then the role markers.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, END, *ROLE_TOKENS.values())

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '<|system|>\\nTools:' -}}"
    "{%- for tool in tools -%}{{- '\\n' ~ (tool | tojson) -}}{%- endfor -%}"
    "{{- '" + END + "\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unknown role ' ~ message['role'] ~ ': expected system, user, assistant, tool') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{{- message['content'] or '' -}}"
    "{%- for call in message.tool_calls or [] -%}"
    "{{- ('\\n' if loop.first and message['content'] else '') -}}"
    "{{- {'name': call.function.name, 'arguments': call.function.arguments} | tojson -}}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] ~ '" + END + "\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
