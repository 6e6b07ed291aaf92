"""Prometheus metrics of outbound webhook delivery (the gauges are set by /metrics on scrape)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# outcome: succeeded | retry (failed, will be retried) | failed (attempts exhausted) | gone (410)
# | refused (the SSRF guard refused the target)
DELIVERIES = Counter(
    "creditd_webhook_deliveries_total", "Outbound webhook attempts, by outcome", ["outcome"]
)
FAILURES = Counter(
    "creditd_webhook_failures_total",
    "Outbound webhook attempts that failed, by reason (http_<status>, timeout, connect, refused,"
    " dns, tls, protocol, read, write, transport, signing)",
    ["reason"],
)
LATENCY = Histogram(
    "creditd_webhook_delivery_seconds",
    "Duration of one outbound webhook attempt",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)
QUEUE_DEPTH = Gauge(
    "creditd_webhook_queue_depth", "Pending outbound webhook deliveries (due or scheduled)"
)
OLDEST_PENDING_AGE = Gauge(
    "creditd_webhook_oldest_pending_age_seconds",
    "How long the most overdue outbound webhook delivery has been due: now minus the earliest"
    " next_attempt_at not in the future (0 when none is due; a retry scheduled later is not"
    " counted)",
)
FANOUT_LAG = Gauge(
    "creditd_webhook_fanout_lag_seconds",
    "Age of the oldest event not yet fanned out to webhook deliveries (0 when fan-out is caught"
    " up); grows while a long write transaction holds fan-out back or no dispatcher runs",
)
ENDPOINTS_DISABLED = Counter(
    "creditd_webhook_endpoints_disabled_total",
    "Endpoints disabled by delivery (reason: gone, failing)",
    ["reason"],
)
