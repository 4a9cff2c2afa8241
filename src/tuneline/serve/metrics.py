"""Prometheus metrics of the server (`GET /metrics`): traffic, latency and feedback per variant.

Scraped by Prometheus (or read by hand), they answer "is the canary healthy right now" without opening
the feedback store: requests by variant and outcome, latency histogram, tokens, feedback by verdict,
the generation queue and the store's backlog, and which version each variant serves.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class ServerMetrics:
    """One registry per server (tests run several servers in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneline_requests", "Chat completions by variant, version and outcome.",
                                ["variant", "version", "outcome"], registry=r)
        self.latency = Histogram("tuneline_request_latency_seconds", "Time to the full answer.", ["variant"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tuneline_completion_tokens", "Generated tokens.", ["variant"], registry=r)
        self.feedback = Counter("tuneline_feedback", "Feedback received by verdict.", ["verdict"], registry=r)
        self.disconnects = Counter("tuneline_stream_disconnects", "Streamed requests whose client went away "
                                   "before the end (generation is cancelled).", registry=r)
        Gauge("tuneline_queue_requests", "Requests waiting for generation.", registry=r).set_function(
            lambda: state.batcher.queued)
        Gauge("tuneline_store_pending_exchanges", "Exchanges not yet written to the feedback store.",
              registry=r).set_function(lambda: state.writer.pending)
        self.served = Gauge("tuneline_served_version", "1 for the version each variant serves.",
                            ["variant", "version"], registry=r)

    def answered(self, variant: str, version: str, seconds: float, tokens: int) -> None:
        self.requests.labels(variant, version, "ok").inc()
        self.latency.labels(variant).observe(seconds)
        self.tokens.labels(variant).inc(tokens)

    def refused(self, outcome: str, variant: str = "", version: str = "") -> None:
        self.requests.labels(variant, version, outcome).inc()

    def render(self, versions: dict[str, str]) -> bytes:
        self.served.clear()
        for variant, version in versions.items():
            self.served.labels(variant, version).set(1)
        return generate_latest(self.registry)
