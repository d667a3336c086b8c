"""Prometheus metrics (``GET /metrics``, with ``prometheus_client``): what an operator's dashboards, alerts and an
autoscaler read.

The queue (depth, oldest wait, running), predictions by final state and pending webhooks are read from the
database at each scrape, so every replica reports the same truth whichever process did the work. Durations and
workers are this process's own: Prometheus sums them over pods.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from lora_core.service.queue import predictions
from lora_core.service.storage.db import utcnow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a 1-step generation on a GPU to a long SD-1.5 training.
BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def allowed(token: str | None, authorization: str) -> bool:
    """Whether a scrape may read the metrics: always when no token is set, else with it as a bearer token."""
    scheme, _, given = authorization.partition(" ")
    return not token or (scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode()))


class Metrics:
    def __init__(
        self,
        engine: Engine,
        models: Iterable[str],
        workers: Callable[[], list[dict]],
        pending_webhooks: Callable[[], int],
    ) -> None:
        """``workers()`` is this process's worker list (name, model, ready, current); ``models`` get a series each
        even before their first prediction (an alert on a missing series never fires)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.durations = Histogram(
            "lora_studio_prediction_duration_seconds",
            "From start to end, of predictions finished by this process.",
            ["model", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(engine, tuple(models), workers, pending_webhooks))

    def finished(self, row: dict) -> None:
        if row.get("started_at") and row.get("completed_at"):
            seconds = (row["completed_at"] - row["started_at"]).total_seconds()
            self.durations.labels(row["model"], row["status"]).observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, engine: Engine, models: tuple[str, ...], workers, pending_webhooks) -> None:
        self.engine, self.models, self.workers, self.pending_webhooks = engine, models, workers, pending_webhooks

    def collect(self) -> Iterable[Metric]:
        figures = predictions.queue_figures(self.engine)
        now = utcnow()
        depth = GaugeMetricFamily("lora_studio_queue_depth", "Predictions waiting for a worker.", labels=["model"])
        oldest = GaugeMetricFamily(
            "lora_studio_queue_oldest_age_seconds",
            "How long the oldest waiting prediction has waited.",
            labels=["model"],
        )
        running = GaugeMetricFamily(
            "lora_studio_running", "Predictions a worker has taken, not finished.", labels=["model"]
        )
        finished = CounterMetricFamily(
            "lora_studio_predictions", "Predictions ended, by final status.", labels=["model", "status"]
        )
        for model in sorted(set(self.models) | set(figures)):
            f = figures.get(model, {"queued": 0, "oldest_queued_at": None, "running": 0, "finished": {}})
            depth.add_metric([model], f["queued"])
            waited = (now - f["oldest_queued_at"]).total_seconds() if f["oldest_queued_at"] else 0.0
            oldest.add_metric([model], max(0.0, waited))
            running.add_metric([model], f["running"])
            for status in predictions.TERMINAL:
                finished.add_metric([model, status], f["finished"].get(status, 0))
        workers = GaugeMetricFamily(
            "lora_studio_workers",
            "This process's workers, by state (ready: waiting for work).",
            labels=["model", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        workers_now = self.workers()  # one snapshot: counts and models from the same list
        for w in workers_now:
            state = "busy" if w["current"] else "ready" if w["ready"] else "down"
            counts[(w["model"], state)] = counts.get((w["model"], state), 0) + 1
        for model in sorted({w["model"] for w in workers_now}):
            for state in ("ready", "busy", "down"):
                workers.add_metric([model, state], counts.get((model, state), 0))
        webhooks = GaugeMetricFamily(
            "lora_studio_webhook_deliveries_pending", "Users' webhook deliveries not yet accepted or given up."
        )
        webhooks.add_metric([], self.pending_webhooks())
        yield from (depth, oldest, running, finished, workers, webhooks)
