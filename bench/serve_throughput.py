"""Serving throughput: batched generation vs one request at a time, same server, same run.

Serves the workspace's registry champion (run `make run` first) twice on 127.0.0.1 — once with
`serve.max_batch_size=1` (the baseline: every request its own forward passes) and once with the
configured batch size — and sends the same burst of concurrent chat completions (the official `openai`
async client) to each. Reports requests/s, completion tokens/s, client-side latency p50 / p95, and the
ratio batched / baseline. Every exchange must reach the feedback store (checked).

    .venv/bin/python bench/serve_throughput.py --requests 200 --concurrency 32 --batch 8

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tuneline.config import load_config
from tuneline.feedback.store import FeedbackStore
from tuneline.serve.app import create_app
from tuneline.serve.server import build_state

PROMPTS = [
    "Translate 'good morning' into French.",
    "What is the capital of Japan?",
    "Write one sentence about rivers.",
    "List three colours.",
    "How many legs does a spider have?",
]


def serve_in_thread(cfg: Any, port: int) -> tuple[uvicorn.Server, threading.Thread, Any]:
    state = build_state(cfg, "127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, state


async def burst(base_url: str, n: int, concurrency: int, max_tokens: int) -> list[dict[str, Any]]:
    import openai

    gate = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600) as client:

        async def one(i: int) -> dict[str, Any]:
            async with gate:
                started = time.perf_counter()
                reply = await client.chat.completions.create(
                    model="tuneline-demo", max_tokens=max_tokens, user=f"bench-{i}",
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
                return {"id": reply.id, "latency_ms": (time.perf_counter() - started) * 1000,
                        "tokens": reply.usage.completion_tokens}

        return await asyncio.gather(*(one(i) for i in range(n)))


def measure(params: Path, batch: int, args: argparse.Namespace, port: int) -> dict[str, Any]:
    store = Path(tempfile.mkdtemp(prefix="tuneline-bench-")) / "feedback.db"
    cfg = load_config(params, [f"serve.max_batch_size={batch}", f"serve.store_url=sqlite:///{store}",
                               "serve.canary_share=0"])
    server, thread, state = serve_in_thread(cfg, port)
    try:
        asyncio.run(burst(f"http://127.0.0.1:{port}/v1", 8, 8, args.max_tokens))  # warm-up
        started = time.perf_counter()
        results = asyncio.run(burst(f"http://127.0.0.1:{port}/v1", args.requests, args.concurrency,
                                    args.max_tokens))
        wall = time.perf_counter() - started
    finally:
        server.should_exit = True
        thread.join(120)
    stored = FeedbackStore(f"sqlite:///{store}").count()
    latencies = sorted(r["latency_ms"] for r in results)
    return {
        "max_batch_size": batch,
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "batches": state.batcher.batches,
        "stored_exchanges": stored,
        "all_stored": stored == len(results) + 8,
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the batched run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8790)
    args = parser.parse_args()
    baseline = measure(args.params, 1, args, args.port)
    batched = measure(args.params, args.batch, args, args.port + 1)
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "baseline": baseline,
        "batched": batched,
        "ratio_requests_per_s": round(batched["requests_per_s"] / baseline["requests_per_s"], 2),
        "ratio_latency_p50": round(batched["latency_ms_p50"] / baseline["latency_ms_p50"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
