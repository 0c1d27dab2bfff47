"""Prometheus metrics of the ingestion path (and the real-time triggers behind it), exposed at ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The process's metric set, on its own registry (so tests can create apps freely)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_received = Counter("goldkey_events_received", "Tracking events received", registry=r)
        self.events_accepted = Counter("goldkey_events_accepted", "Events durably written", registry=r)
        self.events_duplicate = Counter(
            "goldkey_events_duplicate", "Events dropped as messageId duplicates (still acknowledged)", registry=r
        )
        self.events_rejected = Counter(
            "goldkey_events_rejected", "Events rejected as invalid (quarantined or answered 4xx)", registry=r
        )
        self.rejected_overload = Counter(
            "goldkey_events_rejected_overload", "Events refused with 503 because the queue was full", registry=r
        )
        self.commit_failures = Counter("goldkey_commit_failures", "Group commits that failed", registry=r)
        self.queue_depth = Gauge("goldkey_queue_depth", "Events waiting for the writer", registry=r)
        self.commit_seconds = Histogram(
            "goldkey_write_latency_seconds",
            "Time of one group commit (identity resolution and both stores)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.import_rows = Counter("goldkey_import_rows", "Rows read by imports", ["outcome"], registry=r)
        # fine buckets around the 50 ms goal, so that a p99 read off them is within a few ms
        self.trigger_latency = Histogram(
            "goldkey_trigger_latency_seconds",
            "Real-time trigger: event received by the API (since=received) or committed (since=committed) "
            "until its message is durably queued",
            ["since"],
            buckets=(0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.075,
                     0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5),
            registry=r,
        )


METRICS = Metrics()
