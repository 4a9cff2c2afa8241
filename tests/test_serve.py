"""`tuneline serve` end to end: the official `openai` client against a server on 127.0.0.1 serving a
registry champion and challenger (two real LoRA adapters on one tiny base); sticky canary routing;
feedback; API keys; limits; and a few hundred concurrent requests with nothing lost from the store."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve_world import API_KEY, MODEL, RunningServer, World, build_world
from tuneline.config.serve import ServeParams
from tuneline.feedback.store import FeedbackStore
from tuneline.lm.generate import complete
from tuneline.lm.load import load_variant
from tuneline.serve.models import ServeError
from tuneline.serve.routing import experiment_id, parse_model, route
from tuneline.serve.server import api_keys

pytestmark = pytest.mark.integration
ASK = [{"role": "user", "content": "What sound does the cat make?"}]


@pytest.fixture(scope="module")
def world(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("serve"), tiny_base, canary_share=0.3)


@pytest.fixture(scope="module")
def server(world: World) -> Any:
    running = RunningServer(world.cfg, keys=f"other-key,{API_KEY}")
    yield running
    running.stop()


@pytest.fixture()
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)


def test_models_lists_the_model_and_one_pinned_name_per_variant(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL, f"{MODEL}@champion", f"{MODEL}@challenger"]


def test_reply_matches_evaluation_generation_and_names_the_variant(world: World, client: openai.OpenAI,
                                                                     server: RunningServer) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=f"{MODEL}@challenger", messages=ASK, max_tokens=6)
    reply = raw.parse()
    assert reply.model == f"{MODEL}@challenger"
    assert raw.headers["x-tuneline-variant"] == "challenger"
    assert raw.headers["x-tuneline-model-version"] == server.state.models.versions["challenger"] == "2"
    assert reply.model_extra["tuneline"]["pinned"] is True
    # The same text the evaluate stage would generate with this adapter (one code path: `complete`).
    model, tok = load_variant(world.base, world.adapters["challenger"], device="cpu")
    expected = complete(model, tok, [ASK], 6, batch_size=1, progress=False)[0]
    assert reply.choices[0].message.content == expected["text"]
    assert reply.usage.completion_tokens == expected["new_tokens"]
    assert reply.choices[0].finish_reason == ("stop" if expected["stopped"] else "length")
    champion = client.chat.completions.create(model=f"{MODEL}@champion", messages=ASK, max_tokens=6)
    model, tok = load_variant(world.base, world.adapters["champion"], device="cpu")
    assert champion.choices[0].message.content == complete(model, tok, [ASK], 6, progress=False)[0]["text"]


def test_assignment_is_sticky_per_user(client: openai.OpenAI) -> None:
    for user in ("alice", "bob", "carol", "dave"):
        seen = {client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2,
                                               extra_headers={"X-User-Id": user}).model for _ in range(3)}
        seen |= {client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2, user=user).model}
        assert len(seen) == 1, f"{user} saw {seen}"


def test_canary_share_and_stickiness_over_many_simulated_users() -> None:
    versions = {"champion": "3", "challenger": "4"}
    users = [f"user-{i}" for i in range(20000)]
    first = [route(user_id=u, request_id="r", versions=versions, canary_share=0.1).variant for u in users]
    share = first.count("challenger") / len(users)
    assert abs(share - 0.1) < 0.01
    again = [route(user_id=u, request_id="x", versions=versions, canary_share=0.1).variant for u in users]
    assert first == again  # sticky: the request id does not matter when there is a user
    # A new challenger is a new experiment: users are reshuffled, not the same 10 % again.
    nxt = {"champion": "3", "challenger": "5"}
    moved = [route(user_id=u, request_id="r", versions=nxt, canary_share=0.1).variant for u in users]
    both = sum(a == b == "challenger" for a, b in zip(first, moved, strict=True))
    overlap = both / first.count("challenger")
    assert overlap < 0.2
    assert experiment_id(versions) == "champion=3,challenger=4"
    only = route(user_id="u", request_id="r", versions={"champion": "3"}, canary_share=0.5)
    assert only.variant == "champion"


def test_model_field_pins_or_is_refused() -> None:
    variants = ["champion", "challenger"]
    assert parse_model(None, MODEL, variants) is None
    assert parse_model(MODEL, MODEL, variants) is None
    assert parse_model(f"{MODEL}@challenger", MODEL, variants) == "challenger"
    assert parse_model("champion", MODEL, variants) == "champion"
    with pytest.raises(ValueError, match="not served here"):
        parse_model("gpt-4o", MODEL, variants)


def test_feedback_is_recorded_against_the_request(world: World, client: openai.OpenAI,
                                                  server: RunningServer) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, user="erin")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = server.base_url + "/feedback"
    body = {"request_id": reply.id, "thumb": "down", "correction": "Meow."}
    ok = httpx.post(url, json=body, headers=headers)
    assert ok.status_code == 200, ok.text
    unknown = httpx.post(url, json={"request_id": "chatcmpl-nope", "thumb": "up"}, headers=headers)
    assert unknown.status_code == 404 and "chatcmpl-nope" in unknown.json()["error"]["message"]
    empty = httpx.post(url, json={"request_id": reply.id}, headers=headers)
    assert empty.status_code == 400
    bad = httpx.post(url, json={"request_id": reply.id, "rating": 9}, headers=headers)
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
    row = FeedbackStore(world.cfg.serve.store_url).exchange(reply.id)
    assert row is not None and row["messages"] == ASK and row["answer"] == reply.choices[0].message.content
    assert row["user_hash"] and "erin" not in row["user_hash"]
    rated = {r["request_id"]: r for r in FeedbackStore(world.cfg.serve.store_url).exchanges_with_feedback()}
    assert rated[reply.id]["thumb"] == -1 and rated[reply.id]["correction"] == "Meow."


def test_api_key_is_enforced(server: RunningServer) -> None:
    wrong = openai.OpenAI(base_url=server.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.chat.completions.create(model=MODEL, messages=ASK)
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200  # probes stay open
    with pytest.raises(ServeError, match="TUNELINE_API_KEYS"):
        api_keys(ServeParams(), "0.0.0.0", environ={})
    assert api_keys(ServeParams(), "127.0.0.1", environ={}) == []
    assert api_keys(ServeParams(), "0.0.0.0", environ={"TUNELINE_API_KEYS": "a, b"}) == ["a", "b"]


def test_oversize_and_unsupported_requests_get_clear_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 5000}])
    assert big.value.status_code == 413 and "serve.max_request_bytes" in big.value.message
    with pytest.raises(openai.BadRequestError, match="serve.max_tokens_limit"):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1000)
    with pytest.raises(openai.BadRequestError, match="serve.max_prompt_tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "cat " * 600}])
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=MODEL, messages=ASK, n=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="gpt-4o", messages=ASK)


def test_stop_sequences_and_sampling(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=8)
    text = full.choices[0].message.content
    assert len(text) > 2, text  # the noisy challenger always says something; the stop check needs it
    cut = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=8,
                                         stop=[text[1:3]])
    assert cut.choices[0].message.content == text[: text.find(text[1:3])]
    assert cut.choices[0].finish_reason == "stop"
    # temperature > 0 samples: repeated answers differ (greedy ones never do); the noisy adapter's
    # next-token distribution is flat enough that 6 identical 8-token samples would mean no sampling.
    sampled = {client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=8,
                                              temperature=1.0).choices[0].message.content for _ in range(6)}
    greedy = {client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK,
                                             max_tokens=8).choices[0].message.content for _ in range(3)}
    assert len(sampled) > 1 and greedy == {text}


def test_concurrent_load_nothing_lost_and_canary_share_observed(world: World, server: RunningServer) -> None:
    """300 concurrent requests from 300 users: all answered, all in the store, ~30 % on the challenger."""

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                                      timeout=300) as aclient:
            create = aclient.chat.completions.create
            calls = [create(model=MODEL, messages=ASK, max_tokens=3, user=f"load-{i}") for i in range(300)]
            return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    assert len({r.id for r in replies}) == 300
    variants = Counter(r.model_extra["tuneline"]["variant"] for r in replies)
    assert abs(variants["challenger"] / 300 - 0.3) < 0.1, variants
    assert server.state.writer.flush(60)
    stored = {r["request_id"] for r in FeedbackStore(world.cfg.serve.store_url).exchanges_with_feedback()}
    assert {r.id for r in replies} <= stored
    assert server.state.batcher.batches < server.state.batcher.generated  # requests shared batches


def test_challenger_on_another_base_is_refused(tmp_path: Path, world: World) -> None:
    from helpers import LINEAGE, build_tiny_base, save_adapter
    from tuneline.registry.registry import client as client_of
    from tuneline.registry.registry import register_candidate
    from tuneline.serve.models import load_served_models, resolve_versions
    from tuneline.tracking import end_run, start_run

    other = build_tiny_base(tmp_path, steps=3, seed=7)
    adapter = save_adapter(other, tmp_path / "adapter", noisy=False)
    run = start_run(world.uri, "tuneline", LINEAGE, {}, "train-other")
    end_run(world.uri, run, "FINISHED")
    import os

    cwd = os.getcwd()
    os.chdir(world.root)  # artifacts of the sqlite store live under ./mlruns of the world
    try:
        register_candidate(world.uri, MODEL, run, other, adapter, {"gate.status": "promote"})
        with pytest.raises(ServeError, match="different base"):
            files = resolve_versions(world.uri, MODEL, {"champion": "champion", "challenger": "challenger"})
            load_served_models(files, MODEL)
    finally:
        os.chdir(cwd)
        client_of(world.uri).set_registered_model_alias(MODEL, "challenger", "2")  # as the world had it


def test_router_in_front_of_an_openai_compatible_backend(world: World, server: RunningServer,
                                                         client: openai.OpenAI) -> None:
    """serve.backend_url: routing, keys and the store stay here; generation happens at the backend (vLLM
    on GPUs; here another tuneline server, which serves the adapters under the same variant names)."""
    import os

    cfg = world.cfg.model_copy(deep=True)
    cfg.serve.backend_url = server.base_url
    cfg.serve.store_url = f"sqlite:///{world.root / 'router.db'}"
    os.environ["TUNELINE_BACKEND_API_KEY"] = API_KEY
    try:
        router = RunningServer(cfg)
    finally:
        os.environ.pop("TUNELINE_BACKEND_API_KEY")
    try:
        front = openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0)
        for variant in ("champion", "challenger"):
            via = front.chat.completions.create(model=f"{MODEL}@{variant}", messages=ASK, max_tokens=6)
            direct = client.chat.completions.create(model=f"{MODEL}@{variant}", messages=ASK, max_tokens=6)
            assert via.choices[0].message.content == direct.choices[0].message.content
            assert via.model == f"{MODEL}@{variant}"
            assert via.usage.completion_tokens == direct.usage.completion_tokens
        streamed = front.chat.completions.create(model=f"{MODEL}@champion", messages=ASK, max_tokens=6,
                                                 stream=True)  # relayed in one piece at the end
        direct = client.chat.completions.create(model=f"{MODEL}@champion", messages=ASK, max_tokens=6)
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == direct.choices[0].message.content
        assert router.state.writer.flush(30)
        assert FeedbackStore(cfg.serve.store_url).count() == 3
    finally:
        router.stop()


def test_vllm_command_serves_both_adapters_on_the_shared_base(world: World, tmp_path: Path) -> None:
    from tuneline.serve.models import resolve_versions
    from tuneline.serve.remote import vllm_command

    files = resolve_versions(world.uri, MODEL, {"champion": "champion", "challenger": "challenger"},
                             cache_dir=tmp_path)
    args = vllm_command(files, port=8001)
    assert args[:3] == ["vllm", "serve", str(files[0].base_dir)]
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "8"
    i = args.index("--lora-modules")
    assert args[i + 1 : i + 3] == [f"champion={files[0].adapter_dir}", f"challenger={files[1].adapter_dir}"]
    assert args[args.index("--tokenizer") + 1] == str(files[0].adapter_dir)  # the training chat template
    assert args[args.index("--generation-config") + 1] == str(files[0].adapter_dir)  # the stop set


def test_tool_calls_are_rendered_as_training_saw_them_and_stored_as_sent(world: World, client: openai.OpenAI,
                                                                         server: RunningServer) -> None:
    """An OpenAI tool-use conversation: the model sees the call as ingest renders it (JSON text), the
    store keeps the structure, so an exported row goes back through ingest like any OpenAI data."""
    from tuneline.formats import messages_format

    messages = [
        {"role": "user", "content": "How old am I if I was born in 1990?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "calculate_age", "arguments": "{\"birth_year\": 1990}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"age\": 36}"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert server.state.writer.flush(30)
    row = FeedbackStore(world.cfg.serve.store_url).exchange(reply.id)
    assert row["messages"][1]["tool_calls"][0]["function"]["name"] == "calculate_age"
    assert row["messages"][2]["tool_call_id"] == "call_1"
    rendered, meta = messages_format({"messages": row["messages"] + [{"role": "assistant", "content": "36"}]})
    assert "calculate_age" in rendered[1]["content"] and meta["tool_call_messages"] == [1]
    with pytest.raises(openai.BadRequestError, match="only text parts"):
        client.chat.completions.create(model=MODEL, max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])


def test_streamed_oversize_body_and_closed_docs_without_key(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    def chunks():  # no content-length: the limit must hold while the body streams in
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    big = httpx.post(server.base_url + "/chat/completions", content=chunks(), headers=headers)
    assert big.status_code == 413 and "serve.max_request_bytes" in big.json()["error"]["message"]
    parts = [b'{"messages": [{"role": "user", ', b'"content": "hi"}], "max_tokens": 2}']
    small = httpx.post(server.base_url + "/chat/completions", headers=headers, content=iter(parts))
    assert small.status_code == 200, small.text  # a streamed body within the limit reaches the app whole
    root = server.base_url.removesuffix("/v1")
    assert httpx.get(root + "/openapi.json").status_code == 401  # with keys, only /health is open
    assert httpx.get(root + "/openapi.json", headers=headers).status_code == 200


def test_empty_stop_string_is_ignored(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=f"{MODEL}@champion", messages=ASK, max_tokens=6)
    same = client.chat.completions.create(model=f"{MODEL}@champion", messages=ASK, max_tokens=6, stop="")
    assert same.choices[0].message.content == full.choices[0].message.content


def test_streamed_answer_equals_the_plain_one(world: World, client: openai.OpenAI,
                                              server: RunningServer) -> None:
    pieces = []
    for variant in ("champion", "challenger"):
        for stop in (None, ["e"]):
            plain = client.chat.completions.create(model=f"{MODEL}@{variant}", messages=ASK, max_tokens=12,
                                                   stop=stop)
            chunks = list(client.chat.completions.create(
                model=f"{MODEL}@{variant}", messages=ASK, max_tokens=12, stop=stop, stream=True,
                stream_options={"include_usage": True}))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == plain.choices[0].message.content
            pieces.append(sum(bool(c.choices and c.choices[0].delta.content) for c in chunks))
            finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert finals == [plain.choices[0].finish_reason]
            assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
            assert len({c.id for c in chunks}) == 1 and chunks[0].model == f"{MODEL}@{variant}"
    assert max(pieces) > 1, pieces  # tokens arrived in several events, not as one block
    assert server.state.writer.flush(30)
    stored = FeedbackStore(world.cfg.serve.store_url).exchange(chunks[0].id)
    assert stored is not None and stored["answer"] == text


def test_safe_prefix_holds_back_what_may_become_a_stop_or_a_character() -> None:
    from tuneline.serve.streaming import safe_prefix

    assert safe_prefix("Hello wor", ["world!"]) == ("Hello ", False)  # "wor" may start "world!"
    assert safe_prefix("Hello world! Bye", ["world!"]) == ("Hello ", True)
    assert safe_prefix("Hello", []) == ("Hello", False)
    assert safe_prefix("caf\ufffd", []) == ("caf", False)  # half a UTF-8 character


def test_prometheus_metrics_count_traffic_refusals_and_feedback(server: RunningServer,
                                                                client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    root = server.base_url.removesuffix("/v1")

    def scrape() -> dict[str, float]:
        text = httpx.get(root + "/metrics", headers=headers).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    assert httpx.get(root + "/metrics").status_code == 401  # metrics are behind the key too
    before = scrape()
    ok = 'tuneline_requests_total{outcome="ok",variant="challenger",version="2"}'
    reply = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1000)
    httpx.post(server.base_url + "/feedback", json={"request_id": reply.id, "thumb": "up"}, headers=headers)
    after = scrape()
    assert after[ok] == before.get(ok, 0) + 1
    refused = 'tuneline_requests_total{outcome="400",variant="",version=""}'
    assert after[refused] == before.get(refused, 0) + 1
    assert after['tuneline_feedback_total{verdict="up"}'] >= 1
    assert after['tuneline_served_version{variant="champion",version="1"}'] == 1
    assert 'tuneline_request_latency_seconds_count{variant="challenger"}' in after


def test_a_tiny_temperature_decodes_greedily_instead_of_failing(client: openai.OpenAI) -> None:
    """Fault: temperature 1e-300 turned the logits into inf/nan: HTTP 500. Below GREEDY_BELOW: greedy."""
    greedy = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=8)
    for temperature in (1e-300, 5e-324, 1e-30):
        tiny = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=8,
                                              temperature=temperature)
        assert tiny.choices[0].message.content == greedy.choices[0].message.content
    from tuneline.serve.schemas import GREEDY_BELOW, ChatRequest

    assert ChatRequest(messages=ASK, temperature=GREEDY_BELOW / 2).sampling() is None
    assert ChatRequest(messages=ASK, temperature=1e-300).sampling() is None
    sampled = ChatRequest(messages=ASK, temperature=0.7, top_p=0.9).sampling()
    assert sampled == {"temperature": 0.7, "top_p": 0.9}


def test_feedback_with_a_nul_character_is_a_400_naming_the_field(client: openai.OpenAI,
                                                                 server: RunningServer) -> None:
    """Fault: `\\u0000` in a correction, comment or request id reached the database (a 500 on PostgreSQL)."""
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for field, body in (("correction", {"request_id": reply.id, "thumb": "down", "correction": "Me\u0000ow"}),
                        ("comment", {"request_id": reply.id, "comment": "\u0000"}),
                        ("request_id", {"request_id": "chatcmpl-\u0000", "thumb": "up"})):
        bad = httpx.post(server.base_url + "/feedback", json=body, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field, bad.text
        assert "NUL" in bad.json()["error"]["message"]


def _disconnects(server: RunningServer) -> float:
    text = httpx.get(server.base_url.removesuffix("/v1") + "/metrics",
                     headers={"Authorization": f"Bearer {API_KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tuneline_stream_disconnects_total"))


def _wait_until(check: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def test_a_client_that_hangs_up_stops_generation_and_its_exchange_is_stored(
        world: World, client: openai.OpenAI, server: RunningServer) -> None:
    """Fault: a streamed request whose client went away generated on to max_tokens (holding the model) and
    its exchange was never stored. Now generation stops at the next token; the exchange is stored as
    generated so far with finish_reason "cancelled"."""
    full = client.chat.completions.create(model=f"{MODEL}@challenger", messages=ASK, max_tokens=16)
    assert full.choices[0].finish_reason == "length"  # uncancelled, this request spends all 16 tokens
    before = _disconnects(server)
    gate = threading.Event()
    server.state.batcher.call(gate.wait)  # hold the generation thread: the stream waits in the queue
    try:
        body = {"model": f"{MODEL}@challenger", "messages": ASK, "max_tokens": 16, "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            first = json.loads(next(response.iter_lines()).removeprefix("data: "))
        # the connection is closed here, before any token was generated
        _wait_until(lambda: _disconnects(server) > before)
    finally:
        gate.set()
    store = FeedbackStore(world.cfg.serve.store_url)
    _wait_until(lambda: store.exchange(first["id"]) is not None)
    row = store.exchange(first["id"])
    assert row["finish_reason"] == "cancelled" and row["completion_tokens"] < 16 and row["messages"] == ASK


def test_open_streams_do_not_starve_other_requests(client: openai.OpenAI, server: RunningServer) -> None:
    """Fault: each waiting stream held a worker thread, so 30 open streams starved /v1/feedback (which
    needs one). 40 streams wait here (more than any thread pool's default size) while feedback is sent."""
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 2, "stream": True}
    gate = threading.Event()
    server.state.batcher.call(gate.wait)  # no token for anyone until the feedback went through

    async def scenario() -> int:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
            async def open_stream() -> tuple[httpx.Response, Any]:
                request = http.build_request("POST", server.base_url + "/chat/completions", json=body)
                response = await http.send(request, stream=True)
                lines = response.aiter_lines()
                await lines.__anext__()  # the role chunk: the stream is open and waiting for tokens
                return response, lines

            opened = await asyncio.gather(*[open_stream() for _ in range(40)])
            try:
                rated = await http.post(server.base_url + "/feedback", timeout=20,
                                        json={"request_id": reply.id, "thumb": "up"})
            finally:
                gate.set()
            for response, lines in opened:
                assert "data: [DONE]" in [line async for line in lines]
                await response.aclose()
            return rated.status_code

    try:
        assert asyncio.run(scenario()) == 200
    finally:
        gate.set()


def test_on_postgresql_nul_feedback_is_refused_and_a_stuck_store_is_reported_and_kept(
        world: World, postgres_url: str, tmp_path: Path) -> None:
    """Faults on PostgreSQL: NUL in feedback was a 500; a store that took no rows left /health "ok", held
    feedback for 30 s, and shutdown lost the queued exchanges."""
    from tuneline.feedback.store import metadata
    from tuneline.feedback.writer import ExchangeWriter

    store = FeedbackStore(postgres_url)
    metadata.drop_all(store.engine)
    metadata.create_all(store.engine)
    cfg = world.cfg.model_copy(deep=True)
    cfg.serve.store_url, cfg.serve.store_local_dir, cfg.serve.reload_s = postgres_url, str(tmp_path), 0
    running = RunningServer(cfg, keys=API_KEY)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    health_url = running.base_url.removesuffix("/v1") + "/health"
    try:
        pg = openai.OpenAI(base_url=running.base_url, api_key=API_KEY, max_retries=0, timeout=60)
        reply = pg.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        bad = httpx.post(running.base_url + "/feedback", headers=headers,
                         json={"request_id": reply.id, "thumb": "down", "correction": "a\u0000b"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "correction", bad.text
        ok = httpx.post(running.base_url + "/feedback", headers=headers,
                        json={"request_id": reply.id, "thumb": "down", "correction": "ab"})
        assert ok.status_code == 200, ok.text
        metadata.drop_all(store.engine)  # from now on the database takes no exchange
        lost = pg.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
        _wait_until(lambda: httpx.get(health_url).json()["status"] == "degraded")
        health = httpx.get(health_url).json()
        assert health["store"]["backlog"] == 1 and health["store"]["last_error"] == "ProgrammingError"
        busy = httpx.post(running.base_url + "/feedback", headers=headers,
                          json={"request_id": lost.id, "thumb": "up"})
        assert busy.status_code == 503 and "failing (ProgrammingError)" in busy.json()["error"]["message"]
    finally:
        running.stop()  # like Ctrl-C: what the database did not take is spilled to a local file
    spilled = "".join(p.read_text(encoding="utf-8") for p in tmp_path.glob("*.spill-*.jsonl"))
    assert lost.id in spilled
    metadata.create_all(store.engine)
    writer = ExchangeWriter(store, local_dir=tmp_path)  # the next start writes them
    assert writer.flush(30) and store.exchange(lost.id)["answer"] == lost.choices[0].message.content
    writer.close()
    store.close()
