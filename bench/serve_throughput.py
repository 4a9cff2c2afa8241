"""Serving throughput: batched generation vs one request at a time, same server, same run.

Serves the workspace's registry champion (run `make run` first) twice on 127.0.0.1 — once with
`serve.max_batch_size=1` (the baseline: every request its own forward passes) and once with the
configured batch size — and sends, to each, the same bursts of chat completions (the official `openai`
async client) at each concurrency level (1, 8 and 32 users at a time by default). Reports, per server
mode and concurrency: requests/s, completion tokens/s, client-side latency p50 / p95, the batches the
server ran, and the ratio batched / baseline. Every exchange must reach the feedback store (checked).

    .venv/bin/python bench/serve_throughput.py --requests 200 --concurrency 1 8 32 --batch 8

Results: bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from common import report_results
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


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Throughput and client-side latency percentiles (nearest rank) of one burst."""
    latencies = sorted(r["latency_ms"] for r in results)
    return {
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
    }


class Mode:
    """One server under test (max_batch_size `batch`) on its own port and feedback store."""

    def __init__(self, params: Path, batch: int, port: int) -> None:
        self.batch, self.url = batch, f"http://127.0.0.1:{port}/v1"
        self.store = Path(tempfile.mkdtemp(prefix="tuneline-bench-")) / "feedback.db"
        cfg = load_config(params, [f"serve.max_batch_size={batch}", f"serve.store_url=sqlite:///{self.store}",
                                   "serve.canary_share=0"])
        self.server, self.thread, self.state = serve_in_thread(cfg, port)
        self.levels: list[dict[str, Any]] = []
        self.sent = 0

    def run(self, requests: int, users: int, max_tokens: int, record: bool = True) -> None:
        """One burst of `requests` chat completions, `users` at a time."""
        batches = self.state.batcher.batches
        started = time.perf_counter()
        results = asyncio.run(burst(self.url, requests, users, max_tokens))
        wall = time.perf_counter() - started
        self.sent += len(results)
        if record:
            self.levels.append({"concurrency": users, **summarize(results, wall),
                                "batches": self.state.batcher.batches - batches})

    def close(self) -> dict[str, Any]:
        self.server.should_exit = True
        self.thread.join(120)
        stored = FeedbackStore(f"sqlite:///{self.store}").count()
        return {"max_batch_size": self.batch, "levels": self.levels, "stored_exchanges": stored,
                "sent": self.sent, "all_stored": stored == self.sent}


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both servers up at once; at each concurrency level the baseline's burst, then the batched one's,
    so the two modes of a level run back to back (the load of a shared machine drifts over minutes)."""
    modes = [Mode(args.params, 1, args.port), Mode(args.params, args.batch, args.port + 1)]
    try:
        for mode in modes:
            mode.run(8, 8, args.max_tokens, record=False)  # warm-up
        for users in args.concurrency:
            for mode in modes:
                mode.run(args.requests, users, args.max_tokens)
    finally:
        baseline, batched = (mode.close() for mode in modes)
    return baseline, batched


def table(baseline: dict[str, Any], batched: dict[str, Any]) -> str:
    """The markdown table of bench/RESULTS.md: both modes and their ratio at each concurrency."""
    lines = ["| users | run | requests/s | completion tokens/s | latency p50 | latency p95 | batches |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for b, t in zip(baseline["levels"], batched["levels"], strict=True):
        for name, r in (("baseline (batch 1)", b), (f"batched (batch ≤ {batched['max_batch_size']})", t)):
            lines.append(f"| {r['concurrency']} | {name} | {r['requests_per_s']:.1f} | "
                         f"{r['completion_tokens_per_s']:,.0f} | {r['latency_ms_p50']:,.0f} ms | "
                         f"{r['latency_ms_p95']:,.0f} ms | {r['batches']} |")
        rps = t["requests_per_s"] / b["requests_per_s"]
        lines.append(f"| {b['concurrency']} | **ratio** | **{rps:.2f}×** | "
                     f"{t['completion_tokens_per_s'] / b['completion_tokens_per_s']:.2f}× | "
                     f"{t['latency_ms_p50'] / b['latency_ms_p50']:.2f}× | "
                     f"{t['latency_ms_p95'] / b['latency_ms_p95']:.2f}× | |")
    return "\n".join(lines)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="users at a time; one burst of --requests per level")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the batched run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    baseline, batched = measure(args)
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "baseline": baseline,
        "batched": batched,
        "ratio_requests_per_s": {
            b["concurrency"]: round(t["requests_per_s"] / b["requests_per_s"], 2)
            for b, t in zip(baseline["levels"], batched["levels"], strict=True)
        },
    }
    report_results(out, args.json)
    print(table(baseline, batched))


if __name__ == "__main__":
    main()
