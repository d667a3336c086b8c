"""Faults: a worker killed mid-training, the service killed and restarted with work queued and running."""

import os
import signal
import time

import pytest
import requests

from conftest import zip_images
from lora_core.tiny import tiny_world
from service_harness import Api, ServiceProcess

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

GENERATE = "lora-studio/lora"


def _training_input(tmp_path, steps: int) -> dict:
    import base64

    zip_path = zip_images(tmp_path / "stars.zip", tiny_world.concept_images("star", "purple", 5, first_seed=0))
    return {
        "instance_data": "data:application/zip;base64," + base64.b64encode(zip_path.read_bytes()).decode(),
        "task": "object",
        "max_train_steps": steps,
        "checkpoints": 1,
        "grid_steps": 2,  # its report and grid: what these tests watch is the service, not the LoRA
        "seed": 0,
    }


def test_a_worker_killed_mid_training_fails_that_training_and_comes_back(tmp_path):
    service = ServiceProcess(tmp_path / "svc", env={"LORA_STUDIO_WORKERS": "lora-studio/lora=0"}).start()
    try:
        api = Api(service.url, service.token("alice"))
        training = api.predict("lora-studio/lora-training", _training_input(tmp_path, 3000), wait=None)
        api.until_progress(training["id"])
        worker = next(w for w in service.workers() if w["current"] == training["id"])
        os.kill(worker["pid"], signal.SIGKILL)
        failed = api.wait(training["id"], timeout=60)
        assert failed["status"] == "failed" and "worker died" in failed["error"], failed
        deadline = time.monotonic() + 120
        while not (w := next(x for x in service.workers() if x["name"] == worker["name"]))["ready"]:
            assert time.monotonic() < deadline, w
            time.sleep(0.5)
        assert w["restarts"] == 1 and w["pid"] != worker["pid"]
        again = api.predict("lora-studio/lora-training", _training_input(tmp_path, 5), wait=120)
        assert again["status"] == "succeeded", again.get("error")
    finally:
        service.stop()


def test_a_restart_keeps_everything_fails_what_ran_and_runs_what_was_queued(tmp_path):
    data = tmp_path / "svc"
    service = ServiceProcess(data, env={"LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"}).start()
    api = Api(service.url, service.token("alice"))
    done = api.predict(GENERATE, {"prompt": "a red circle", "seed": 1})
    assert done["status"] == "succeeded"
    # the one worker is busy with a slow generation; two more wait in the queue behind it
    slow = api.predict(
        GENERATE,
        {"prompt": "a blue square", "num_inference_steps": 150, "num_outputs": 4, "width": 256, "height": 256},
        wait=None,
    )
    queued = [api.predict(GENERATE, {"prompt": "a green star", "seed": i}, wait=None)["id"] for i in range(2)]
    api.until_progress(slow["id"])
    assert all(api("GET", f"/v1/predictions/{q}").json()["status"] == "starting" for q in queued)
    service.stop(signal.SIGKILL)  # no goodbye: its workers die with it

    service = ServiceProcess(data, port=service.port).start()
    try:
        api = Api(service.url, api.session.headers["Authorization"].split()[1])
        interrupted = api.wait(slow["id"], timeout=30)
        assert interrupted["status"] == "failed" and "interrupted" in interrupted["error"]
        for pid in queued:
            assert api.wait(pid)["status"] == "succeeded"
        before = api("GET", f"/v1/predictions/{done['id']}").json()
        assert before["status"] == "succeeded" and requests.get(before["output"][0], timeout=10).status_code == 200
        ids = []
        url = "/v1/predictions"
        while url:
            page = api("GET", url).json()
            ids += [p["id"] for p in page["results"]]
            url = page["next"]
        assert sorted(ids) == sorted([done["id"], slow["id"], *queued])  # nothing lost, nothing duplicated
        outputs = [o for pid in queued for o in api("GET", f"/v1/predictions/{pid}").json()["output"]]
        assert len(outputs) == len(set(outputs)) == 2
    finally:
        service.stop()


def test_sigterm_lets_the_running_prediction_finish_takes_nothing_new_and_exits(tmp_path):
    """``serve`` with its own workers (the all-in-one image, ``./dev serve``): the first SIGTERM drains them while
    the port stays open (the results arrive over it, clients keep polling); what waits runs after a restart."""
    data = tmp_path / "svc"
    service = ServiceProcess(data, env={"LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"}).start()
    api = Api(service.url, service.token("alice"))
    slow = api.predict(
        GENERATE,
        {"prompt": "a blue square", "num_inference_steps": 30, "num_outputs": 2, "width": 256, "height": 256},
        wait=None,
    )
    api.until_progress(slow["id"])
    assert service.process is not None
    service.process.send_signal(signal.SIGTERM)
    after = api.predict(GENERATE, {"prompt": "a green star", "seed": 1}, wait=None)  # still answered
    service.process.wait(timeout=300)  # it exits by itself once drained (at once after the last result: a
    assert "taking no new predictions" in service.log()  # client polling every 0.2 s may not see it end there)

    service = ServiceProcess(data, port=service.port).start()
    try:
        api = Api(service.url, api.session.headers["Authorization"].split()[1])
        finished = api("GET", f"/v1/predictions/{slow['id']}").json()  # ended before the exit, not interrupted
        assert finished["status"] == "succeeded" and len(finished["output"]) == 2, finished
        assert requests.get(finished["output"][0], timeout=10).content[:4] == b"\x89PNG"
        assert api.wait(after["id"])["status"] == "succeeded"  # it waited, untouched, for the next process
        busy = api.predict(
            GENERATE, {"prompt": "a red circle", "num_inference_steps": 150, "width": 256, "height": 256}, wait=None
        )
        api.until_progress(busy["id"])
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        service.process.send_signal(signal.SIGTERM)  # a second signal: now, not after the drain
        service.process.wait(timeout=30)
        assert time.monotonic() - started < 15
    finally:
        service.stop()


def test_webhook_deliveries_outlive_the_service_and_go_out_in_order_under_their_ids(tmp_path):
    """A receiver failing when the service is killed (-9): after the restart the new process sends what was left
    pending, each delivery under the id it had, in the prediction's order, each accepted once."""
    from hostile.servers import receiver, wait_for

    from service_harness import free_port

    data, port = tmp_path / "svc", free_port()
    env = {
        "LORA_STUDIO_WORKERS": "lora-studio/lora-training=0",
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": f"127.0.0.1:{port}",
        "LORA_STUDIO_WEBHOOK_BACKOFF_S": "10",  # the kill comes before the second try; the restart makes it
    }
    service = ServiceProcess(data, env=env).start()
    api = Api(service.url, service.token("alice"))
    with receiver(port, answers=[503] * 1000) as hook:
        done = api.predict(
            GENERATE,
            {"prompt": "a red circle", "num_inference_steps": 2},
            webhook=f"{hook.url}/hook",
            webhook_events_filter=["start", "completed"],
        )
        assert done["status"] == "succeeded"

        def deliveries() -> list[dict]:
            return api("GET", f"/v1/predictions/{done['id']}/webhook-deliveries").json()["results"]

        before = wait_for(lambda: (r := deliveries()) and r[0]["attempts"] >= 1 and r, 30, "a first try")
        service.stop(signal.SIGKILL)
        assert [d["event"] for d in before] == ["start", "completed"]
        assert before[0]["status"] == "pending" and before[1]["attempts"] == 0, before  # in order: it waits
        tried = len(hook.httpd.RequestHandlerClass.bodies)
        hook.httpd.RequestHandlerClass.answers.clear()  # the receiver is back: 200 from now on

        service = ServiceProcess(data, port=service.port, env=env).start()
        try:
            api = Api(service.url, api.session.headers["Authorization"].split()[1])
            after = wait_for(
                lambda: (r := deliveries()) and all(d["status"] != "pending" for d in r) and r, 60, "the rest sent"
            )
            time.sleep(2)  # room for a duplicate to show
            bodies = hook.httpd.RequestHandlerClass.bodies
            ids = [headers["webhook-id"] for headers, _ in bodies]
            assert [d["id"] for d in after] == [d["id"] for d in before]  # the same rows, none added
            assert [d["status"] for d in after] == ["delivered", "delivered"], after
            assert ids[tried:] == [d["id"] for d in before]  # after the restart: each once, in order
            assert all(ids.count(d["id"]) == d["attempts"] for d in after)  # every try recorded, no other sent
            assert bodies[-1][1]["id"] == done["id"] and bodies[-1][1]["status"] == "succeeded"
        finally:
            service.stop()
