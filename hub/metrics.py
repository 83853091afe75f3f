"""Prometheus metrics, served at ``/metrics``. Names follow Prometheus conventions."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INGESTED = Counter("hub_messages_ingested_total", "Inbound messages stored", ["channel"])
INGEST_DUPLICATES = Counter("hub_messages_duplicate_total", "Inbound messages recognised as retries", ["channel"])
INGEST_BATCH = Histogram(
    "hub_ingest_batch_size", "Messages per shared ingest commit", buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500)
)
OUTBOUND = Counter("hub_messages_outbound_total", "Outbound send results", ["channel", "status"])
STREAM_PUBLISHED = Counter("hub_stream_published_total", "Events published on the stream")
STREAM_HANDLED = Counter("hub_stream_handled_total", "Events handled and acknowledged")
STREAM_FAILURES = Counter("hub_stream_handler_failures_total", "Event handler failures (retried)")
STREAM_DEAD_LETTERED = Counter(
    "hub_stream_dead_lettered_total", "Events moved to the dead letter after repeated failures"
)
STREAM_DEAD_LETTERS = Gauge(
    "hub_stream_dead_letters",
    "Dead-lettered events kept for an operator (outbox rows; on Redis also <stream>:dead), counted at each scrape",
)
STREAM_RECLAIMED = Counter("hub_stream_reclaimed_total", "Pending events reclaimed from consumers that stopped")
OUTBOX_BACKLOG = Gauge("hub_outbox_backlog", "Outbox rows not yet published or handled (dead letters not included)")
LIVE_DROPPED = Counter("hub_live_events_dropped_total", "Live events dropped for a stuck listener")
LIVE_CONNECTIONS = Gauge("hub_websocket_connections", "Open websockets", ["kind"])
HTTP_REQUESTS = Counter("hub_http_requests_total", "HTTP requests", ["method", "route", "status"])
