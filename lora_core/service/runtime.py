"""What every process of the service runs, an API process (``serve``) or a worker agent alone (``worker``): the
database and file store, the signer and URLs, wake-ups shared through PostgreSQL, the webhook sender and the
metrics, and what happens when a prediction changes (its webhook, its duration).

Started, a process beats its heartbeat and fails what it was itself running before a restart under the same name;
a process whose heartbeat lapses has its predictions failed by whichever process sweeps next (``WorkerPool``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from lora_core.service import views
from lora_core.service.auth.signing import Signer
from lora_core.service.config import ServiceConfig
from lora_core.service.metrics import Metrics
from lora_core.service.models import Model, load_models
from lora_core.service.queue import predictions
from lora_core.service.queue.wakeups import Listener, Wakeups
from lora_core.service.queue.webhooks import Webhooks
from lora_core.service.storage import db, file_store, files
from lora_core.service.urls import Urls

log = logging.getLogger("lora_studio.service")


class Runtime:
    def __init__(self, config: ServiceConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or db.connect(config.database_url)
        self.store = file_store.from_url(config.storage_url, config.s3_endpoint_url, config.storage_quota_bytes)
        self.models: dict[str, Model] = load_models()
        self.signer = Signer(config.secret, config.worker_token)
        self.urls = Urls(config, self.signer)
        self.wakeups = Wakeups()
        self.listener = Listener(self.engine, self.wakeups)
        self.webhooks = Webhooks(
            self.engine,
            self.signer,
            config.allowed_private_hosts,
            instance=config.instance,
            retries=config.webhook_retries,
            backoff_s=config.webhook_backoff_s,
        )
        self.workers: Callable[[], list[dict]] = list  # this process's workers' status, once it has some
        self.stopping = threading.Event()  # set once: this process's agents and supervisor stop
        self.metrics = Metrics(self.engine, self.models, lambda: self.workers(), self.webhooks.pending)

    def start(self) -> None:
        predictions.heartbeat(self.engine, self.config.instance)
        for pid in predictions.fail_interrupted(
            self.engine, self.config.instance, 6 * self.config.heartbeat_s, at_start=True
        ):
            log.warning("prediction %s was running when this process stopped: failed (interrupted)", pid)
            self.on_event(predictions.existing(self.engine, pid), "completed")
        self.listener.start()
        self.webhooks.start()

    def stop(self) -> None:
        self.listener.stop()
        self.webhooks.close()

    def render(self, row: dict) -> dict:
        """A prediction as the API shows it (and its webhooks send it)."""
        file_rows = files.of_prediction(self.engine, row["id"]) if row["output"] is not None else []
        return views.prediction(row, self.urls, file_rows)

    def on_event(self, row: dict, event: str) -> None:
        """After a stored change: "start", "logs", "output" or "completed"."""
        if event == "completed":
            self.metrics.finished(row)
        if row.get("webhook"):
            self.webhooks.send(row, event, self.render(row))
