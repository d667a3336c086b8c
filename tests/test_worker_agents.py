"""Worker agents on their own (``lora-studio worker``), beside a service that runs none: they take the work from
the shared database; SIGTERM drains one (its prediction finishes, it takes nothing new, it exits); a new one
starts taking what waits with nothing restarted; one killed (-9) has its prediction failed by the lease."""

import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service_harness import AgentProcess, Api, ServiceProcess

pytestmark = pytest.mark.slow

GENERATE = "lora-studio/lora"
SLOW = {"prompt": "a blue square", "num_inference_steps": 60, "num_outputs": 2, "width": 256, "height": 256}


def test_agents_take_the_work_drain_on_sigterm_join_at_any_time_and_a_killed_ones_work_fails(tmp_path):
    service = ServiceProcess(tmp_path / "svc", args=("--no-workers",)).start()
    agents: list[AgentProcess] = []
    try:
        assert service.workers() == []  # the API and pages only
        api = Api(service.url, service.token("alice"))
        waiting = api.predict(GENERATE, {"prompt": "a red circle", "seed": 1}, wait=None)
        time.sleep(1)
        assert api("GET", f"/v1/predictions/{waiting['id']}").json()["status"] == "starting"  # no worker anywhere

        first = AgentProcess(service, GENERATE, "gen-a").start()  # added while work waits: no restart of anything
        agents.append(first)
        done = api.wait(waiting["id"], timeout=120)
        assert done["status"] == "succeeded" and done["output"], done
        assert api.predict(GENERATE, {"prompt": "a green star", "seed": 2}, wait=60)["status"] == "succeeded"
        scraped = requests.get(f"http://127.0.0.1:{first.port}/metrics", timeout=10).text  # the agent's own
        durations = {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name == "lora_studio_prediction_duration_seconds_count"
        }
        assert durations[(("model", GENERATE), ("status", "succeeded"))] == 2, durations

        # SIGTERM mid-prediction: it finishes, what comes after waits, the agent exits by itself
        slow = api.predict(GENERATE, SLOW, wait=None)
        api.until_progress(slow["id"])
        first.signal(signal.SIGTERM)
        after = api.predict(GENERATE, {"prompt": "a yellow circle", "seed": 3}, wait=None)
        finished = api.wait(slow["id"], timeout=300)
        assert finished["status"] == "succeeded" and len(finished["output"]) == 2, finished
        assert first.wait(timeout=60) == 0, first.log()
        assert api("GET", f"/v1/predictions/{after['id']}").json()["status"] == "starting"  # not taken while draining

        second = AgentProcess(service, GENERATE, "gen-b").start()
        agents.append(second)
        assert api.wait(after["id"], timeout=120)["status"] == "succeeded"

        # kill -9 mid-prediction: the service's sweep fails it within the lease (six 1 s heartbeats)
        doomed = api.predict(GENERATE, SLOW, wait=None)
        api.until_progress(doomed["id"])
        second.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        failed = api.wait(doomed["id"], timeout=60)
        assert failed["status"] == "failed" and "interrupted" in failed["error"], failed
        assert time.monotonic() - killed_at < 20
    finally:
        for agent in agents:
            agent.stop()
        service.stop()
