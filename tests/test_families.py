"""Real model families: Qwen2.5, Llama-3.1, Mistral-7B-v0.3, Gemma-2 and Phi-3, each as a tiny
random-weight model of its real architecture with its real chat template (tests/families.py).

For each family: the assistant mask covers exactly the answer plus the end-of-turn token (single turn,
multi turn, system prompt, tool call); rows the template cannot render are rejected with the reason;
the stop set holds the template's end of turn; a model taught one answer stops there through
`lm.generate`; the `train` stage runs with the defaults and saves what serving needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from families import FAMILIES, build_family, train_tokenizer
from tuneline.lm.chat import ChatFormat
from tuneline.lm.conversation import call_id
from tuneline.lm.errors import RenderError
from tuneline.lm.stops import encode_text

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def rec(rid: str, *turns: tuple[str, str], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "messages": [{"role": r, "content": c} for r, c in turns], "meta": meta or {}}


SINGLE = rec("single", ("user", "What is the capital of France?"), ("assistant", "Paris."))
MULTI = rec("multi", ("user", "Hi"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4"))
SYSTEM = rec("system", ("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello."))
# A tool call as ingest writes it (the call's JSON text, listed in meta.tool_call_messages).
TOOL = rec("tool", ("user", "Weather in Paris?"),
           ("assistant", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
           ("tool", '{"temp": 21}'), ("assistant", "It is 21 degrees."),
           meta={"tools": [WEATHER["function"]], "tool_call_messages": [1]})
CALL_ID = call_id("tool", 0)

# What each family must supervise, answer by answer (the answer and its end-of-turn token, nothing else).
EXPECTED: dict[str, dict[str, list[str] | str]] = {
    "qwen2_5": {
        "single": ["Paris.<|im_end|>"], "multi": ["Hello.<|im_end|>", "4<|im_end|>"],
        "system": ["Hello.<|im_end|>"],
        "tool": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
                 "<|im_end|>",
                 "It is 21 degrees.<|im_end|>"],
    },
    "llama3_1": {
        "single": ["Paris.<|eot_id|>"], "multi": ["Hello.<|eot_id|>", "4<|eot_id|>"],
        "system": ["Hello.<|eot_id|>"],
        "tool": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
                 "It is 21 degrees.<|eot_id|>"],
    },
    "mistral_v0_3": {
        "single": [" Paris.</s>"], "multi": [" Hello.</s>", " 4</s>"],
        "system": "template_drops_system",
        "tool": ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "'
                 + CALL_ID + '"}]</s>', " It is 21 degrees.</s>"],
    },
    "gemma2": {
        "single": ["Paris.<end_of_turn>"], "multi": ["Hello.<end_of_turn>", "4<end_of_turn>"],
        "system": "template_no_system", "tool": "template_no_tools",
    },
    "phi3": {
        "single": ["Paris.<|end|>"], "multi": ["Hello.<|end|>", "4<|end|>"],
        "system": ["Hello.<|end|>"], "tool": "template_no_tools",
    },
}
CONVERSATIONS = {"single": SINGLE, "multi": MULTI, "system": SYSTEM, "tool": TOOL}


@pytest.fixture(scope="module")
def chats() -> dict[str, ChatFormat]:
    return {name: ChatFormat(train_tokenizer(f)) for name, f in FAMILIES.items()}


def supervised_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for t, m in zip(ids, mask, strict=True):
        if m:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_mask_is_the_answer_and_its_end_of_turn(chats: dict[str, ChatFormat], family: str,
                                                 conversation: str) -> None:
    chat, expected = chats[family], EXPECTED[family][conversation]
    if isinstance(expected, str):
        with pytest.raises(RenderError) as caught:
            chat.encode(CONVERSATIONS[conversation])
        assert caught.value.reason == expected
        return
    ids, mask = chat.encode(CONVERSATIONS[conversation])
    spans = supervised_spans(ids, mask)
    # token by token: each supervised span is exactly the expected text's tokens
    assert spans == [encode_text(chat.tokenizer, text) for text in expected]
    assert [chat.tokenizer.decode(s) for s in spans] == expected
    assert all(s[-1] in chat.stop_ids for s in spans)  # every answer ends with a stop token


def test_structured_tool_calls_from_ingest_render_like_the_json_text(chats: dict[str, ChatFormat]) -> None:
    """ingest keeps a sharegpt call as text and as OpenAI structure; both render the same call."""
    from tuneline.data.ingest import convert_row

    row = {"tools": json.dumps([WEATHER["function"]]), "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'}, {"from": "gpt", "value": "It is 21 degrees."}]}
    structured = convert_row(row, "sharegpt", {}, {"file": "t.jsonl", "line": 1})
    assert structured["messages"][1]["tool_calls"]
    text_only = json.loads(json.dumps(structured))
    del text_only["messages"][1]["tool_calls"], text_only["messages"][2]["tool_call_id"]
    for name in ("qwen2_5", "llama3_1", "mistral_v0_3"):
        chat = chats[name]
        assert chat.encode(structured) == chat.encode(text_only), name


def test_stop_set_holds_the_templates_end_of_turn(chats: dict[str, ChatFormat]) -> None:
    for name, family in FAMILIES.items():
        tok = chats[name].tokenizer
        assert tok.convert_tokens_to_ids(family.end_of_turn) in chats[name].stop_ids, name
    # Gemma-2's generation config names only <eos>; the turn ends with <end_of_turn>.
    gemma = ChatFormat(chats["gemma2"].tokenizer, None)
    assert gemma.tokenizer.convert_tokens_to_ids("<end_of_turn>") in gemma.stop_ids


def test_merge_system_fixes_templates_without_a_system_role(chats: dict[str, ChatFormat]) -> None:
    for name in ("gemma2", "mistral_v0_3"):
        chat = ChatFormat(chats[name].tokenizer, None, merge_system=True)
        ids, mask = chat.encode(SYSTEM)
        text = chat.tokenizer.decode(ids)
        assert "Be terse.\n\nHi" in text, name  # the system prompt reaches the model, in the user turn
        assert chat.tokenizer.decode(supervised_spans(ids, mask)[0]).strip().startswith("Hello.")


def test_mistral_warns_that_it_drops_the_system_prompt_when_training(chats: dict[str, ChatFormat]) -> None:
    profile = chats["mistral_v0_3"].profile
    assert profile.system == "dropped_in_training" and "different prompts" in profile.system_detail
    assert chats["gemma2"].profile.system == "unsupported"
    assert "System role not supported" in chats["gemma2"].profile.system_detail
    assert chats["qwen2_5"].profile.system == chats["phi3"].profile.system == "ok"


def test_special_token_text_in_content_is_rejected(chats: dict[str, ChatFormat]) -> None:
    hostile = rec("x", ("user", "say <|im_end|> now"), ("assistant", "ok"))
    with pytest.raises(RenderError) as caught:
        chats["qwen2_5"].encode(hostile)
    assert caught.value.reason == "special_token_in_content" and "<|im_end|>" in caught.value.detail


def test_a_prompt_that_is_not_a_prefix_of_the_conversation_is_rejected(chats: dict[str, ChatFormat]) -> None:
    """Mistral v0.3 lists the tools before the LAST user turn: in a multi-turn conversation with tools,
    the first answer's prompt is not a prefix of the whole render (train and serve would differ)."""
    multi_tools = {**MULTI, "meta": {"tools": [WEATHER["function"]]}}
    with pytest.raises(RenderError) as caught:
        chats["mistral_v0_3"].encode(multi_tools)
    assert caught.value.reason == "template_prefix_mismatch" and "message 1" in caught.value.detail
    chats["qwen2_5"].encode(multi_tools)  # Qwen renders the tools in the system turn: a prefix holds


def test_template_errors_become_reasons_not_crashes(chats: dict[str, ChatFormat]) -> None:
    two_users = rec("x", ("user", "a"), ("user", "b"), ("assistant", "c"))
    with pytest.raises(RenderError) as caught:
        chats["gemma2"].encode(two_users)
    assert caught.value.reason == "template_error" and "alternate" in caught.value.detail


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name) for name in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_taught_answer_stops_at_the_end_of_turn(family_dirs: dict[str, Path], family: str) -> None:
    """Teach one answer (full fine-tuning of the tiny model on the masked labels), then generate through
    `lm.generate` as evaluate and serve do: it must say the answer and stop at the end of turn."""
    import torch

    from tuneline.lm.generate import generate
    from tuneline.lm.labels import encode_records
    from tuneline.lm.load import load_variant

    torch.manual_seed(0)
    model, chat = load_variant(family_dirs[family], device="cpu", dtype="fp32")
    row = encode_records(chat, [SINGLE], 256).rows[0]
    ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    model.eval()
    out = generate(model, chat, [SINGLE], max_new_tokens=12, batch_size=1)[0]
    assert out["prediction"].strip() == "Paris."
    assert out["stopped"]
    answer = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert out["new_tokens"] == len(answer)  # the answer's tokens and the end-of-turn, nothing after


def workspace_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(16):
        base = [SINGLE, MULTI, SYSTEM, TOOL][i % 4]
        rows.append({**json.loads(json.dumps(base)), "id": f"{base['id']}-{i}", "category": None,
                     "source": {"file": "t.jsonl", "line": i + 1}})
    return rows


REJECTED = {"qwen2_5": {}, "llama3_1": {}, "phi3": {"template_no_tools": 4},
            "mistral_v0_3": {"template_drops_system": 4}, "gemma2": {"template_no_system": 4,
                                                                       "template_no_tools": 4}}
MODEL = "tuneline-family"


class Cycles(dict):
    """train -> evaluate -> promote of a family, run on first use (a failing family fails its own tests)."""

    def __init__(self, family_dirs: dict[str, Path], factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.family_dirs, self.factory = family_dirs, factory

    def __missing__(self, family: str) -> dict[str, Any]:
        self[family] = cycle_family(family, self.family_dirs[family], self.factory)
        return self[family]


@pytest.fixture(scope="module")
def cycled(family_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Cycles:
    return Cycles(family_dirs, tmp_path_factory)


def cycle_family(family: str, base: Path, factory: pytest.TempPathFactory) -> dict[str, Any]:
    """train -> evaluate -> promote with the defaults (own template, default LoRA targets)."""
    from tuneline.config.loader import Config
    from tuneline.evaluate.evaluate import run as evaluate
    from tuneline.jsonio import write_json, write_jsonl
    from tuneline.layout import Layout
    from tuneline.promote.promote import run as promote
    from tuneline.train.train import run as train

    root = factory.mktemp(f"ws-{family}")
    layout = Layout(root)
    write_jsonl(layout.processed("train"), workspace_rows())
    write_jsonl(layout.processed("val"), workspace_rows()[:8])
    write_jsonl(layout.processed("test"), workspace_rows()[:8])
    write_json(layout.report("validate_splits"), {"success": True})
    cfg = Config.model_validate({
        "seed": 0, "model": {"name_or_path": str(base)},
        "train": {"epochs": 4, "lr": 0.01, "effective_batch": 4, "per_device_batch": 4, "packing": False},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "test"},
        "registry": {"model_name": MODEL},
        "evaluate": {"max_rows": 8, "max_new_tokens": 6, "review_samples": 2},
        "promote": {"primary_metric": "loss", "min_gain": 0.0, "max_never_stop_rate": 1.0,
                    "parity_probe_rows": 3},  # Gemma: the system row is skipped, not a crash
        "split": {"eval_dir": None},
    })
    return {"layout": layout, "cfg": cfg, "train": train(cfg, layout), "evaluate": evaluate(cfg, layout),
            "promote": promote(cfg, layout)}


@pytest.mark.integration
@pytest.mark.parametrize("family", list(FAMILIES))
def test_train_evaluate_promote_with_defaults(cycled: Cycles, family: str) -> None:
    """`tuneline train` on the family's model with its own template and the default LoRA targets: the
    rows its template cannot render are rejected with their reason, the adapter saves the template, the
    rendering options and a generation config whose EOS ids are the stop set; evaluate scores base and
    candidate with the same rendering; promote registers and judges it."""
    from tuneline.jsonio import read_jsonl

    run = cycled[family]
    layout, report = run["layout"], run["train"]
    expected = REJECTED[family]
    by_reason = {k: v["rows"] for k, v in report["rejected"]["by_reason"].items()}
    assert by_reason == {k: v * 3 // 2 for k, v in expected.items()}  # train (16 rows) + val (8 rows)
    rejected = list(read_jsonl(layout.rejected("train")))
    assert len(rejected) == sum(by_reason.values())
    assert all(r["reason"] and r["detail"] and r["source"]["file"] == "t.jsonl" for r in rejected)
    assert report["train_rows"] == 16 - sum(expected.values())
    assert report["train_loss_final"] < report["train_loss_first"]
    adapter = layout.root / "models" / "adapter"
    chat_file = json.loads((adapter / "chat_format.json").read_text())
    generation = json.loads((adapter / "generation_config.json").read_text())
    assert chat_file["stop_ids"] == report["stop_ids"] == sorted(generation["eos_token_id"])
    tokenizer = train_tokenizer(FAMILIES[family])
    assert tokenizer.convert_tokens_to_ids(FAMILIES[family].end_of_turn) in report["stop_ids"]
    saved = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    assert saved.strip() == (Path(__file__).parent / "fixtures" / "chat_templates" /
                             FAMILIES[family].template).read_text(encoding="utf-8").strip()
    variants = run["evaluate"]["variants"]
    assert variants["candidate"]["loss"] < variants["base"]["loss"]
    promotion = run["promote"]
    assert promotion["result"]["status"] == "promoted", promotion["result"]
    assert promotion["parity"]["parity"] and promotion["parity"]["rows"] == 3


@pytest.mark.integration
@pytest.mark.parametrize("family", list(FAMILIES))
def test_serve_answers_with_the_training_prompt(cycled: Cycles, family: str) -> None:
    """`tuneline serve` on the promoted version answers through the real `openai` client exactly what
    `lm.generate` answers for the prompt training rendered; what the template cannot render is a 400."""
    import openai

    from serve_world import RunningServer
    from tuneline.config.loader import load_config
    from tuneline.lm.generate import complete
    from tuneline.lm.load import load_variant

    run = cycled[family]
    root, base = run["layout"].root, run["cfg"].model.name_or_path
    adapter = root / "models" / "adapter"
    model, chat = load_variant(base, adapter, device="cpu")
    ids, mask = chat.encode(SINGLE)
    ask = [{"role": "user", "content": SINGLE["messages"][0]["content"]}]
    assert chat.prompt(ask)[1] == ids[: mask.index(1)]  # the served prompt is the training prompt
    expected = complete(model, chat, [ask], 6, batch_size=1, progress=False)[0]
    cfg = load_config(None, [f"tracking.uri={run['cfg'].tracking.uri}", f"registry.model_name={MODEL}",
                             f"serve.store_url=sqlite:///{root / 'feedback.db'}",
                             "serve.default_max_tokens=6"])
    server = RunningServer(cfg)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=6)
        assert reply.choices[0].message.content == expected["text"]
        assert reply.usage.prompt_tokens == len(chat.prompt(ask)[1])
        if family == "qwen2_5":  # a tool call is known only once the reply is complete
            with pytest.raises(openai.BadRequestError, match="streaming with `tools`"):
                client.chat.completions.create(model=MODEL, messages=ask, max_tokens=2, stream=True,
                                               tools=[WEATHER])
        if family == "gemma2":
            with pytest.raises(openai.BadRequestError, match="template_no_system"):
                client.chat.completions.create(model=MODEL, max_tokens=2, messages=[
                    {"role": "system", "content": "Be terse."}, *ask])
    finally:
        server.stop()


def test_tool_call_format_is_learnt_from_the_template(chats: dict[str, ChatFormat]) -> None:
    from tuneline.lm.toolcalls import parse_tool_calls

    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    replies = {
        "qwen2_5": f"Sure.\n<tool_call>\n{call}\n</tool_call>",
        "llama3_1": '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "mistral_v0_3": f"[TOOL_CALLS] [{call[:-1]}, \"id\": \"a1b2c3d4e\"}}]",
    }
    for family, reply in replies.items():
        content, calls = parse_tool_calls(chats[family].tool_format, reply, "req-1")
        assert [c["function"]["name"] for c in calls] == ["get_weather"], family
        assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
        assert content == ("Sure." if family == "qwen2_5" else "")
    assert chats["gemma2"].tool_format is None and chats["phi3"].tool_format is None
    text = 'The answer is {"a": 1}'  # JSON that is not a call stays text
    assert parse_tool_calls(chats["llama3_1"].tool_format, text, "r") == (text, [])


def test_versions_rendered_with_other_options_are_not_served_side_by_side(tmp_path: Path) -> None:
    """One ChatFormat renders for champion and challenger: a challenger trained with another
    `model.merge_system` would get prompts it was not trained on."""
    from tuneline.lm.load import save_chat_format
    from tuneline.serve.models import VersionFiles, _cannot_share

    tok = train_tokenizer(FAMILIES["gemma2"])
    kept, merged = ChatFormat(tok, None, merge_system=False), ChatFormat(tok, None, merge_system=True)
    for name, chat in (("a", kept), ("b", merged)):
        (tmp_path / name).mkdir()
        save_chat_format(tmp_path / name, chat, "tokenizer")
    champion = VersionFiles("champion", "1", tmp_path, tmp_path / "a")
    same = VersionFiles("challenger", "2", tmp_path, tmp_path / "a")
    other = VersionFiles("challenger", "3", tmp_path, tmp_path / "b")
    assert _cannot_share(champion, "base", same, kept) is None
    assert "merge_system" in _cannot_share(champion, "base", other, kept)
