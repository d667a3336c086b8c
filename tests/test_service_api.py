"""The running service through its HTTP API: auth, validation, predictions, files, fork, cancel, webhooks."""

import hashlib
import http.server
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from conftest import zip_images
from lora_core import progress
from lora_core.service.auth.signing import verify_webhook
from lora_core.service.auth.tokens import TOKEN_COOKIE
from lora_core.tiny import tiny_world
from service_harness import Api, progress_steps

GENERATE = "lora-studio/lora"
TRAIN = "lora-studio/lora-training"


@pytest.fixture(scope="module")
def alice(service):
    return Api(service.url, service.token("alice"))


@pytest.fixture(scope="module")
def bob(service):
    return Api(service.url, service.token("bob"))


def png_size(url: str, session=requests) -> tuple[int, int]:
    r = session.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content)).size


def test_no_token_or_a_wrong_one_is_401(service):
    r = requests.get(f"{service.url}/v1/predictions", timeout=10)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    r = requests.get(f"{service.url}/v1/predictions", headers={"Authorization": "Bearer ls_nope"}, timeout=10)
    assert r.status_code == 401 and r.json()["status"] == 401


def test_models_publish_their_versioned_schema(alice):
    model = alice("GET", f"/v1/models/{GENERATE}").json()
    schema = model["latest_version"]["openapi_schema"]
    assert schema["components"]["schemas"]["Input"]["properties"]["lora_urls"]["type"] == "string"
    version = model["latest_version"]["id"]
    assert alice("GET", f"/v1/models/{GENERATE}/versions/{version}").json()["id"] == version
    assert alice("GET", f"/v1/models/{GENERATE}/versions/{'0' * 64}").status_code == 404
    assert alice("GET", "/v1/models/nobody/nothing").status_code == 404


def test_a_generation_runs_and_its_image_downloads_by_signed_url(alice):
    body = alice.predict(GENERATE, {"prompt": "a photo of a red circle", "seed": 3, "num_outputs": 2})
    assert body["status"] == "succeeded", body
    assert body["model"] == GENERATE and len(body["version"]) == 64 and body["urls"]["get"].endswith(body["id"])
    assert body["metrics"]["predict_time"] > 0 and body["completed_at"] >= body["started_at"]
    assert any(p == 100 for p, _, _ in progress_steps(body["logs"]))
    assert len(body["output"]) == 2
    assert png_size(body["output"][0]) == (64, 64)  # no token needed: the URL is signed
    tampered = body["output"][0].replace("sig=", "sig=x")
    assert requests.get(tampered, timeout=10).status_code == 404
    # output i is seed + i, in order (the worker uploads them in parallel; the service keeps the order)
    single = alice.predict(GENERATE, {"prompt": "a photo of a red circle", "seed": 4})
    assert requests.get(single["output"][0]).content == requests.get(body["output"][1]).content
    assert requests.get(single["output"][0]).content != requests.get(body["output"][0]).content


def test_invalid_input_is_422_naming_the_field(alice):
    r = alice("POST", f"/v1/models/{GENERATE}/predictions", json={"input": {"prompt": "x", "num_outputs": 9}})
    assert r.status_code == 422
    assert r.json()["invalid_fields"][0]["field"] == "input.num_outputs"
    r = alice("POST", "/v1/predictions", json={"version": "f" * 64, "input": {"prompt": "x"}})
    assert r.status_code == 422 and "version" in r.json()["detail"]
    r = alice("POST", "/v1/predictions", json={"input": "not an object"})
    assert r.status_code == 422


def test_a_prediction_fails_alone_with_a_clear_message_and_the_next_works(alice):
    bad = alice.predict(
        GENERATE,
        {"prompt": "<1>", "lora_urls": "https://example.invalid/x.safetensors|a", "lora_scales": "0.5|0.5|0.5"},
    )
    assert bad["status"] == "failed" and "scale" in bad["error"].lower(), bad
    good = alice.predict(GENERATE, {"prompt": "a blue square", "seed": 1})
    assert good["status"] == "succeeded"


def test_owners_are_isolated(alice, bob):
    mine = alice.predict(GENERATE, {"prompt": "a green star", "seed": 0})
    for method, path in [
        ("GET", f"/v1/predictions/{mine['id']}"),
        ("POST", f"/v1/predictions/{mine['id']}/cancel"),
        ("POST", f"/v1/predictions/{mine['id']}/fork"),
    ]:
        assert bob(method, path, json={}).status_code == 404
    assert mine["id"] not in [p["id"] for p in bob("GET", "/v1/predictions").json()["results"]]
    upload = alice("POST", "/v1/files", files={"content": ("a.txt", b"hello", "text/plain")}).json()
    assert bob("GET", f"/v1/files/{upload['id']}").status_code == 404
    assert bob("GET", upload["urls"]["download"].split("?")[0]).status_code == 404  # unsigned, not the owner
    assert alice("GET", upload["urls"]["download"].split("?")[0]).content == b"hello"  # unsigned, the owner
    assert requests.get(f"{alice.base}/files/../../etc/passwd", timeout=10).status_code == 404


def test_history_pages_newest_first(alice):
    made = [
        alice.predict(GENERATE, {"prompt": "a red circle", "seed": i, "num_inference_steps": 2}, wait=None)["id"]
        for i in range(3)
    ]
    page = alice("GET", "/v1/predictions").json()
    assert [p["id"] for p in page["results"][:3]] == made[::-1]
    seen, url = [], "/v1/predictions"
    while url:
        page = alice("GET", url).json()
        seen += [p["id"] for p in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) and set(made) <= set(seen)
    for pid in made:
        assert alice.wait(pid)["status"] == "succeeded"


def _random_lora_file(tiny_pipe) -> bytes:
    """A LoRA for the tiny base that nobody designed: random rank-4 layers on every attention projection."""
    import tempfile

    import torch

    from lora_core.lora import binding, lora_file

    gen, tensors = torch.Generator().manual_seed(11), {}
    for path, shape in binding.module_table(tiny_pipe).shapes.items():
        if path.endswith(("to_q", "to_k", "to_v", "to_out.0")) and len(shape) == 2:
            tensors[f"{path}.lora_A.weight"] = torch.randn(4, shape[1], generator=gen) * 0.3
            tensors[f"{path}.lora_B.weight"] = torch.randn(shape[0], 4, generator=gen) * 0.3
    with tempfile.TemporaryDirectory() as folder:
        return lora_file.write_lora(
            Path(folder) / "l.safetensors", tensors, {"lora_studio.init_word": "object"}
        ).read_bytes()


def test_a_fork_reruns_a_random_seed_with_the_same_lora_bytes_after_their_server_has_gone(alice, tiny_pipe):
    """The parent drew its seed and used a LoRA at an outside URL, one the owner never uploaded: the service fetched
    it and kept it as the owner's file (once, however many predictions use it). Once that server has gone, a fork
    without changes takes the recorded seed and the same bytes (found by sha256), and draws the same image."""
    data = _random_lora_file(tiny_pipe)
    sha256 = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.mkdtemp())
    (folder / "shared.safetensors").write_bytes(data)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/shared.safetensors"
    parent = alice.predict(GENERATE, {"prompt": "a photo of <1>", "lora_urls": url, "lora_scales": "0.8"})
    assert parent["status"] == "succeeded", parent["error"]
    again = alice.predict(GENERATE, {"prompt": "a photo of <1>", "lora_urls": url, "lora_scales": "0.8", "seed": 1})
    assert again["status"] == "succeeded", again["error"]
    kept = [f for f in alice("GET", "/v1/files").json()["results"] if f["checksums"]["sha256"] == sha256]
    assert len(kept) == 1 and kept[0]["name"] == "shared.safetensors" and kept[0]["size"] == len(data), kept
    record = parent["provenance"]
    assert parent["input"]["lora_urls"] == url  # as sent: the kept file is for its forks
    assert parent["input"].get("seed") is None and isinstance(record["seed"], int)
    assert record["loras"] == [{"url": url, "sha256": sha256, "size": len(data), "scale": 0.8}]
    assert record["base_model"] == "tiny" and len(record["base_hash"]) >= 12 and record["dtype"] == "float32"
    assert record["settings"]["seed"] == record["seed"] and record["settings"]["num_inference_steps"] > 0
    assert set(record["versions"]) >= {"lora_studio", "torch", "diffusers"}

    server.shutdown()
    server.server_close()
    fork = alice("POST", f"/v1/predictions/{parent['id']}/fork", json={}, headers={"Prefer": "wait=60"}).json()
    fork = alice.wait(fork["id"])
    assert fork["status"] == "succeeded", fork["error"]
    assert fork["input"]["seed"] == record["seed"]
    assert fork["input"]["lora_urls"] == kept[0]["urls"]["get"]  # the same bytes, from the owner's files
    assert fork["provenance"]["loras"][0]["sha256"] == sha256
    assert fork["provenance"]["rerun"] == {"of": parent["id"], "exact": True, "differences": []}
    assert requests.get(fork["output"][0]).content == requests.get(parent["output"][0]).content
    page = requests.get(
        f"{alice.base}/predictions/{fork['id']}",
        cookies={TOKEN_COOKIE: alice.session.headers["Authorization"].removeprefix("Bearer ")},
        timeout=30,
    )
    assert "an exact re-run (the same seed, LoRA files, base weights and versions)" in page.text
    redrawn = alice.wait(
        alice("POST", f"/v1/predictions/{parent['id']}/fork", json={"input": {"seed": None}}).json()["id"]
    )
    assert redrawn["provenance"]["seed"] != record["seed"]  # an explicit empty seed draws anew
    assert redrawn["provenance"]["rerun"]["differences"] == ["other settings or seed"]


def test_a_deleted_prediction_keeps_its_row_and_its_files_answer_404(alice, bob):
    done = alice.predict(GENERATE, {"prompt": "a photo of a red circle", "seed": 3})
    image = done["output"][0]
    assert requests.get(image, timeout=10).status_code == 200
    assert bob("DELETE", f"/v1/predictions/{done['id']}").status_code == 404  # not bob's: not found
    slow = alice.predict(GENERATE, {"prompt": "a blue square", "num_inference_steps": 150, "num_outputs": 4}, wait=None)
    r = alice("DELETE", f"/v1/predictions/{slow['id']}")
    assert r.status_code == 409 and "cancel it" in r.json()["detail"], r.text
    alice("POST", f"/v1/predictions/{slow['id']}/cancel")
    assert alice("DELETE", f"/v1/predictions/{done['id']}").status_code == 204
    gone = alice("GET", f"/v1/predictions/{done['id']}").json()
    assert gone["data_removed"] is True and gone["output"] is None and gone["input"] == {} and gone["logs"] == ""
    assert gone["status"] == "succeeded" and gone["provenance"] is None
    assert requests.get(image, timeout=10).status_code == 404  # the signed URL too
    r = alice("POST", f"/v1/predictions/{done['id']}/fork", json={})
    assert r.status_code == 409 and "removed" in r.json()["detail"]
    assert alice.wait(slow["id"])["status"] == "canceled"


def test_fork_reruns_the_parent_with_one_change(alice):
    parent = alice.predict(GENERATE, {"prompt": "a photo of a yellow circle", "seed": 5})
    r = alice(
        "POST", f"/v1/predictions/{parent['id']}/fork", json={"input": {"seed": 6}}, headers={"Prefer": "wait=60"}
    )
    assert r.status_code == 201
    fork = r.json()
    assert fork["forked_from"] == parent["id"] and fork["status"] == "succeeded"
    assert fork["input"] == {**parent["input"], "seed": 6}
    same = alice("POST", f"/v1/predictions/{parent['id']}/fork", json={}, headers={"Prefer": "wait=60"}).json()
    assert requests.get(same["output"][0]).content == requests.get(parent["output"][0]).content
    assert requests.get(fork["output"][0]).content != requests.get(parent["output"][0]).content
    r = alice("POST", f"/v1/predictions/{parent['id']}/fork", json={"input": {"num_outputs": 99}})
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "input.num_outputs"


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.end_headers()


@pytest.fixture
def receiver():
    Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_webhooks_arrive_in_order_and_signed(alice, receiver):
    secret = alice("GET", "/v1/webhooks/default/secret").json()["key"]
    body = alice.predict(GENERATE, {"prompt": "a red square", "seed": 2}, webhook=receiver)
    deadline = time.monotonic() + 30
    while not any(json.loads(b)["status"] == "succeeded" for _, b in Receiver.received):
        assert time.monotonic() < deadline, Receiver.received
        time.sleep(0.1)
    statuses = [json.loads(b)["status"] for _, b in Receiver.received]
    assert statuses[0] == "processing" and statuses[-1] == "succeeded", statuses
    for headers, raw in Receiver.received:
        assert verify_webhook(secret, headers, raw)
        assert json.loads(raw)["id"] == body["id"]
    # only what was asked for
    Receiver.received = []
    alice.predict(
        GENERATE, {"prompt": "a red square", "seed": 2}, webhook=receiver, webhook_events_filter=["completed"]
    )
    deadline = time.monotonic() + 30
    while not Receiver.received:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    assert [json.loads(b)["status"] for _, b in Receiver.received] == ["succeeded"]


def test_webhooks_to_private_addresses_are_refused(alice):
    r = alice(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        json={"input": {"prompt": "x"}, "webhook": "http://169.254.169.254/latest"},
    )
    assert r.status_code == 422 and "private" in r.json()["detail"]


@pytest.mark.slow
def test_a_training_from_an_uploaded_zip_then_cancel_a_long_one(alice, tmp_path):
    zip_path = zip_images(tmp_path / "stars.zip", tiny_world.concept_images("star", "purple", 5, first_seed=0))
    with zip_path.open("rb") as f:
        upload = alice("POST", "/v1/files", files={"content": ("stars.zip", f, "application/zip")}).json()
    assert upload["size"] == zip_path.stat().st_size and upload["checksums"]["sha256"]
    r = alice(
        "POST",
        "/v1/trainings",
        json={"input": {"instance_data": upload["urls"]["get"], "task": "object", "max_train_steps": 2000, "seed": 0}},
    )
    assert r.status_code == 201, r.text
    training = r.json()
    assert training["urls"]["get"].endswith(f"/v1/trainings/{training['id']}")
    deadline = time.monotonic() + 180
    # past the prior images (they log progress too): the training's own steps, which carry its loss
    while "loss=" not in (current := alice("GET", f"/v1/trainings/{training['id']}").json())["logs"]:
        assert current["status"] in ("starting", "processing") and time.monotonic() < deadline, current
        time.sleep(0.5)
    canceled_at = time.monotonic()
    assert alice("POST", f"/v1/trainings/{training['id']}/cancel").status_code == 200
    final = alice.wait(training["id"], timeout=60)
    assert final["status"] == "canceled" and time.monotonic() - canceled_at < 30
    training_lines = [m for m in progress.matches(final["logs"]) if "loss=" in m.string]
    assert training_lines and all(int(m["percent"]) < 100 for m in training_lines)
    assert alice.predict(GENERATE, {"prompt": "a red circle"})["status"] == "succeeded"


def _metrics(url: str, **headers) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_show_this_process_workers_and_the_durations_it_saw(service, alice):
    done = alice.predict("lora-studio/lora", {"prompt": "a red circle", "num_inference_steps": 2})
    assert done["status"] == "succeeded"
    m = _metrics(service.url)
    model = (("model", "lora-studio/lora"),)
    assert m[("lora_studio_prediction_duration_seconds_count", (*model, ("status", "succeeded")))] >= 1
    assert m[("lora_studio_predictions_total", (*model, ("status", "succeeded")))] >= 1
    for name in ("lora-studio/lora", "lora-studio/lora-training"):  # one local worker each, in one state
        states = [m[("lora_studio_workers", (("model", name), ("state", s)))] for s in ("busy", "down", "ready")]
        assert sum(states) == 1, states


def test_metrics_count_the_queue_from_the_database_and_can_ask_for_a_token(tmp_path):
    """No workers: what is submitted waits, and the queue's depth and age say so; canceled, it is counted."""
    from service_harness import ServiceProcess

    env = {"LORA_STUDIO_WORKERS": "lora-studio/lora=0;lora-studio/lora-training=0", "LORA_STUDIO_METRICS_TOKEN": "m"}
    process = ServiceProcess(tmp_path / "svc", env=env).start()
    try:
        assert requests.get(f"{process.url}/metrics", timeout=10).status_code == 401
        assert (
            requests.get(f"{process.url}/metrics", headers={"Authorization": "Bearer x"}, timeout=10).status_code == 401
        )
        api = Api(process.url, process.token("carol"))
        ids = [
            api.predict("lora-studio/lora", {"prompt": "a red circle", "seed": i}, wait=None)["id"] for i in range(3)
        ]
        time.sleep(1.2)
        m = _metrics(process.url, Authorization="Bearer m")
        lora, training = (("model", "lora-studio/lora"),), (("model", "lora-studio/lora-training"),)
        assert m[("lora_studio_queue_depth", lora)] == 3 and m[("lora_studio_queue_depth", training)] == 0
        assert m[("lora_studio_queue_oldest_age_seconds", lora)] >= 1.0
        assert m[("lora_studio_queue_oldest_age_seconds", training)] == 0
        for pid in ids:
            assert api("POST", f"/v1/predictions/{pid}/cancel").json()["status"] == "canceled"
        m = _metrics(process.url, Authorization="Bearer m")
        assert m[("lora_studio_queue_depth", lora)] == 0
        assert m[("lora_studio_predictions_total", (*lora, ("status", "canceled")))] == 3
        assert m[("lora_studio_predictions_total", (*lora, ("status", "succeeded")))] == 0
        assert m[("lora_studio_webhook_deliveries_pending", ())] == 0
    finally:
        process.stop()
