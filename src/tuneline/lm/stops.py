"""The stop set: every token id that ends a reply.

It is the union of the tokenizer's EOS, the generation config's EOS ids and the template's
end-of-turn token. The last one is found by rendering a probe exchange and taking the first special
token after the answer (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, `<|end|>`, ...): Gemma-2's
generation config names only `<eos>` although its turns end with `<end_of_turn>`, and a model that
learnt to stop at the end of its turn must be stopped there.
"""

from __future__ import annotations

from typing import Any

from tuneline.lm.errors import RenderError
from tuneline.lm.template import render

PROBE_ANSWER = "pong"
PROBE_EXCHANGE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": PROBE_ANSWER}]


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the special tokens: the named ones and every added token marked special."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(i))
    return ids


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered text; the template already placed every special token it wants."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The first special token the template writes after an assistant answer, or None."""
    conv = PROBE_EXCHANGE
    try:
        prompt = encode_text(tokenizer, render(tokenizer, conv[:1], add_generation_prompt=True))
        full = encode_text(tokenizer, render(tokenizer, conv))
    except RenderError:
        return None
    if full[: len(prompt)] != prompt:
        return None
    specials = special_ids(tokenizer)
    answer = full[len(prompt):]
    at = next((k for k, t in enumerate(answer) if t in specials), None)
    # The answer comes first: a special token before it belongs to the template's turn header (a template
    # that ignores add_generation_prompt), not to the end of the turn.
    if at is None or PROBE_ANSWER not in tokenizer.decode(answer[:at]):
        return None
    return answer[at]


def configured_eos(generation_config: Any) -> list[int]:
    """The EOS ids a generation config names (an int, a list, or none)."""
    value = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stop_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Sorted stop set: tokenizer EOS, generation config EOS ids and the template's end of turn.

    Raises:
        ValueError: none of the three names a token, so generation could never stop.
    """
    ids = set(configured_eos(generation_config))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        eot = end_of_turn_id(tokenizer)
        if eot is not None:
            ids.add(eot)
    if not ids:
        raise ValueError("the tokenizer, generation config and chat template define no stop token; "
                         "generation cannot stop")
    return sorted(ids)
