"""The agents one ``lora-studio serve`` process runs: one per local Cog server or Cog server at a URL.

They listen through the service's own routes (``/internal/workers/{name}/…``), which this pool hands to the agent
of that name. One supervisor thread checks every agent's Cog server, beats this process's heartbeat in the shared
database, and fails the predictions of processes whose heartbeat stopped (their lease).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

from lora_core.service.queue import predictions
from lora_core.service.runtime import Runtime
from lora_core.service.workers.agent import Agent, Worker, local_worker

log = logging.getLogger("lora_studio.workers")


class WorkerPool:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.agents: dict[str, Agent] = {}
        self.threads: list[threading.Thread] = []
        config, listen = runtime.config, runtime.config.internal_url
        threads = config.threads_per_worker(sum(config.worker_setting(m).count for m in runtime.models))
        for model in runtime.models.values():
            setting = config.worker_setting(model.full_name)
            for i, url in enumerate(setting.urls, 1):
                self._add(Agent(runtime, Worker(f"{model.name}-remote-{i}", model, url), listen))
            for i in range(1, setting.count + 1):
                worker = local_worker(runtime, model, f"{model.name}-{i}", listen, threads)
                self._add(Agent(runtime, worker, listen))

    def _add(self, agent: Agent) -> None:
        self.agents[agent.worker.name] = agent

    def start(self) -> None:
        for agent in self.agents.values():
            agent.start()
        thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        thread.start()
        self.threads.append(thread)
        if self.runtime.config.retention_days:  # apart from the heartbeat: deleting files can take a while
            thread = threading.Thread(target=sweep_retention, args=(self.runtime,), name="retention", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.runtime.stopping.set()
        self.runtime.wakeups.prediction_queued()
        for agent in self.agents.values():
            agent.stop()

    def drain(self, timeout: float) -> bool:
        """Take nothing new; True once no agent runs anything, False if some still do after ``timeout`` s."""
        for agent in self.agents.values():  # all at once, then wait for each
            agent.stop_taking()
        deadline = time.monotonic() + timeout
        return all(agent.drained(max(0.0, deadline - time.monotonic())) for agent in self.agents.values())

    def status(self) -> list[dict]:
        return [agent.status() for agent in self.agents.values()]

    def cancel(self, prediction_id: str) -> None:
        """Forward a cancel now if this process runs it (otherwise its agent sees the flag)."""
        for agent in self.agents.values():
            if agent.worker.current == prediction_id:
                agent.cancel(prediction_id)

    def _supervise(self) -> None:
        supervise(self.runtime, list(self.agents.values()))


def sweep_retention(runtime: Runtime, every_s: float = 60.0) -> None:
    """Until ``runtime.stopping``: remove the data of predictions that ended ``retention_days`` ago, a hundred at a
    time (each row is marked before its files go, so processes sweeping together delete each file once)."""
    days = runtime.config.retention_days or 0
    while True:
        try:
            for pid in predictions.remove_expired(runtime.engine, runtime.store, datetime.timedelta(days=days)):
                log.info("prediction %s: data removed after %g days", pid, days)
        except Exception:
            log.exception("the retention sweep failed")
        if runtime.stopping.wait(every_s):
            return


def supervise(runtime: Runtime, agents: list[Agent]) -> None:
    """Until ``runtime.stopping``: check each agent's Cog server twice a second, beat this process's heartbeat, and
    fail what processes silent for six beats were running (they died: their lease lapsed)."""
    config, engine = runtime.config, runtime.engine
    last_beat = last_sweep = 0.0
    while not runtime.stopping.wait(0.5):
        now = time.monotonic()
        for agent in agents:
            try:
                agent.check()
            except Exception:
                log.exception("checking worker %s failed", agent.worker.name)
        try:
            if now - last_beat >= config.heartbeat_s:
                predictions.heartbeat(engine, config.instance)
                last_beat = now
            if now - last_sweep >= 6 * config.heartbeat_s:
                for pid in predictions.fail_interrupted(
                    engine, config.instance, 6 * config.heartbeat_s, at_start=False
                ):
                    row = predictions.get(engine, pid)
                    if row:
                        runtime.on_event(row, "completed")
                        runtime.wakeups.prediction_changed(pid)
                last_sweep = now
        except Exception:
            log.exception("heartbeat failed")
