"""The service split as deployed, under faults: two API processes (``serve --no-workers``) and two worker agents per
model on one PostgreSQL, a shared file store and secret. 30 generations, a long one and two trainings go in through
both APIs, with webhooks to a receiver that is down at first. Meanwhile one API process is killed (-9) and
restarted, the agent running the long generation gets SIGTERM, and the agent running a training is killed (-9).

Nothing is lost or run twice: every prediction ends once, the SIGTERMed agent's generation succeeds, the killed
agent's training fails saying so within the lease, everything else succeeds, and the receiver accepts each
prediction's final event under one webhook-id (at least once: a receiver de-duplicates by that id)."""

import signal
import time

import pytest
import sqlalchemy as sa
from hostile.servers import receiver, wait_for
from test_service_faults import _training_input

from lora_core.service.queue import predictions
from lora_core.service.storage import db
from service_harness import AgentProcess, Api, ServiceProcess, free_port

pytestmark = pytest.mark.slow

GENERATE, TRAIN = "lora-studio/lora", "lora-studio/lora-training"
LONG = {"prompt": "a blue square", "num_inference_steps": 60, "num_outputs": 2, "width": 192, "height": 192}


def _worker_of(engine, prediction_id: str) -> str | None:
    row = predictions.get(engine, prediction_id)
    return row["worker"] if row else None


def test_two_apis_and_two_agents_per_model_lose_and_repeat_nothing_through_kills_and_drains(postgres_url, tmp_path):
    hook_port, front = free_port(), free_port()
    shared = {
        # one address for the API, as behind a load balancer: every process makes and recognises the same URLs
        "LORA_STUDIO_PUBLIC_URL": f"http://127.0.0.1:{front}",
        "DATABASE_URL": postgres_url,
        "STORAGE_URL": f"file://{tmp_path / 'files'}",
        "LORA_STUDIO_SECRET": "scale-out-secret",
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": f"127.0.0.1:{hook_port}",
        "LORA_STUDIO_WEBHOOK_BACKOFF_S": "1",
        # four agents on two cores: one torch thread each, as each has its own GPU when deployed (alone, an agent
        # takes every core: four of them would each run twice the threads there are cores)
        "LORA_STUDIO_WORKER_THREADS": "1",
    }
    engine = db.connect(postgres_url)
    with engine.begin() as c:  # a fresh queue (the cluster is shared by this module's tests)
        for table in ("webhook_deliveries", "files", "predictions"):
            c.execute(sa.text(f"DELETE FROM {table}"))
    apis = [
        ServiceProcess(tmp_path / name, port=port, env=shared, args=("--no-workers",)).start()
        for name, port in (("a", front), ("b", None))
    ]
    agents = {
        name: AgentProcess(apis[0], model, name)
        for name, model in (("gen-1", GENERATE), ("gen-2", GENERATE), ("train-1", TRAIN), ("train-2", TRAIN))
    }
    started = time.monotonic()

    def phase(what: str) -> None:  # shown on failure (and with -s): where the minutes go
        print(f"{time.monotonic() - started:6.1f}s {what}", flush=True)

    try:
        for agent in agents.values():  # all four load their Cog servers at once
            agent.launch()
        for agent in agents.values():
            agent.ready(timeout=300)
        phase("agents ready")
        token = apis[0].token("alice")
        clients = [Api(api.url, token) for api in apis]
        with receiver(hook_port, answers=[503] * 6) as hook:  # down for its first six deliveries
            hooked = {"webhook": f"{hook.url}/hook", "webhook_events_filter": ["completed"]}
            trainings = [
                clients[i].predict(TRAIN, _training_input(tmp_path, 10), wait=None, **hooked)["id"] for i in (0, 1)
            ]
            long = clients[0].predict(GENERATE, LONG, wait=None, **hooked)["id"]
            quick = [
                clients[i % 2].predict(
                    GENERATE, {"prompt": "a red circle", "seed": i, "num_inference_steps": 4}, wait=None, **hooked
                )["id"]
                for i in range(30)
            ]
            every = [*trainings, long, *quick]
            phase("submitted")

            # one API process killed and restarted while all that runs
            apis[1].stop(signal.SIGKILL)
            apis[1] = ServiceProcess(tmp_path / "b", port=apis[1].port, env=shared, args=("--no-workers",)).start()
            clients[1] = Api(apis[1].url, token)
            phase("API b restarted")

            # the agent running the long generation is drained: it finishes it, then exits
            clients[0].until_progress(long)
            drained = agents[_worker_of(engine, long)]
            drained.signal(signal.SIGTERM)
            phase("long generation's agent drained")

            # the agent running a training is killed mid-way (its Cog server has started it)
            clients[0].wait(trainings[0], timeout=300, statuses=("processing",))
            killed = agents[_worker_of(engine, trainings[0])]
            killed.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            lost = clients[1].wait(trainings[0], timeout=120)
            detected_s = time.monotonic() - killed_at
            phase(f"killed training failed after {detected_s:.1f}s")

            final = {pid: clients[n % 2].wait(pid, timeout=900) for n, pid in enumerate(every)}
            phase("every prediction ended")
            assert drained.wait(timeout=120) == 0, drained.log()
            wait_for(lambda: len({h["webhook-id"] for h, _ in _accepted(hook)}) >= len(every), 120, "every webhook")
            phase("every webhook accepted")
            time.sleep(3)  # room for a duplicate to show
            accepted = _accepted(hook)

        assert lost["status"] == "failed" and "interrupted" in lost["error"], lost
        assert detected_s < 30, (
            detected_s
        )  # the lease: six 1 s heartbeats here (LORA_STUDIO_HEARTBEAT_S), swept as often
        assert final[long]["status"] == "succeeded" and len(final[long]["output"]) == 2, final[long]
        others = {pid: body for pid, body in final.items() if pid != trainings[0]}
        failed = {pid: (b["model"], b["status"], b["error"]) for pid, b in others.items() if b["status"] != "succeeded"}
        assert not failed, failed
        # nothing lost, nothing twice: the queue holds each prediction once, ended once
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT id, status FROM predictions")).all()
        assert sorted(r[0] for r in rows) == sorted(every)
        # each prediction's final event accepted exactly once, under one id, with its final status
        ids_per_prediction: dict[str, set[str]] = {}
        for headers, body in accepted:
            ids_per_prediction.setdefault(body["id"], set()).add(headers["webhook-id"])
            assert body["status"] == final[body["id"]]["status"]
        assert set(ids_per_prediction) == set(every)
        assert all(len(ids) == 1 for ids in ids_per_prediction.values()), ids_per_prediction
    finally:
        for agent in agents.values():
            agent.stop()
        for api in apis:
            api.stop()


def _accepted(hook) -> list[tuple[dict, dict]]:
    """The deliveries the receiver answered 200 (its first six answers were 503)."""
    return hook.httpd.RequestHandlerClass.bodies[6:]
