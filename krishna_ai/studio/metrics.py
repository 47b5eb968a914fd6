"""What the app is doing, in Prometheus' text format (`prometheus_client`), served at `/metrics`.

    krishna_ai_requests_total{endpoint, persona, outcome}   replies asked for: ok, crisis, outside, stopped, refused,
                                                            busy, error (outside: the persona's decline, no model ran)
    krishna_ai_tokens_total{persona, kind}                  prompt and completion tokens
    krishna_ai_ttft_seconds{persona}                        time to first token (histogram)
    krishna_ai_decode_tokens_per_second{persona}            decode speed per reply (histogram)
    krishna_ai_reply_seconds{persona}                       whole reply (histogram)
    krishna_ai_replies_in_progress                          replies being generated now
    krishna_ai_history_write_seconds{what}                  saved-chat writes: question, reply (histogram)

Each app has its own registry (two apps in one process, as the tests run them, never share counts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
_SPEED = (1, 2, 5, 10, 20, 40, 80, 160, 320)
_WRITE = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """The app's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("krishna_ai_requests", "Replies asked for", ["endpoint", "persona", "outcome"],
                                registry=r)
        self.tokens = Counter("krishna_ai_tokens", "Tokens read and written", ["persona", "kind"], registry=r)
        self.ttft = Histogram("krishna_ai_ttft_seconds", "Time to first token", ["persona"], buckets=_LATENCY,
                              registry=r)
        self.decode = Histogram("krishna_ai_decode_tokens_per_second", "Decode speed of a reply", ["persona"],
                                buckets=_SPEED, registry=r)
        self.reply = Histogram("krishna_ai_reply_seconds", "A whole reply", ["persona"], buckets=_LATENCY,
                               registry=r)
        self.in_progress = Gauge("krishna_ai_replies_in_progress", "Replies being generated now", registry=r)
        self.history_write = Histogram("krishna_ai_history_write_seconds", "Saved-chat writes", ["what"],
                                       buckets=_WRITE, registry=r)

    def finished(self, endpoint: str, persona: str, outcome: str, stats: Any = None) -> None:
        """Count one reply (`stats`: its ReplyStats, when it ran)."""
        self.requests.labels(endpoint, persona, outcome).inc()
        if stats is None:
            return
        self.tokens.labels(persona, "prompt").inc(stats.prompt_tokens or 0)
        self.tokens.labels(persona, "completion").inc(stats.tokens or 0)
        if stats.ttft_s is not None:
            self.ttft.labels(persona).observe(stats.ttft_s)
        if stats.tokens_per_s > 0:
            self.decode.labels(persona).observe(stats.tokens_per_s)
        self.reply.labels(persona).observe(stats.total_s)

    @contextmanager
    def writing(self, what: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.history_write.labels(what).observe(time.perf_counter() - started)

    def text(self) -> bytes:
        return generate_latest(self.registry)
