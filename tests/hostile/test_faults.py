"""Faults around a prediction: the file store full, a webhook receiver down or failing.

A worker killed mid-training, and the service killed and restarted with predictions queued and running,
are in tests/test_service_faults.py (not repeated here).
"""

from __future__ import annotations

import datetime

import requests

from . import zips
from .conftest import GENERATE, TRAIN, data_uri, still_serves, timed
from .servers import receiver, wait_for

QUOTA = 8 * 2**20  # LORA_STUDIO_STORAGE_QUOTA_BYTES of the hardened service


def _stored_bytes(hardened) -> int:
    return sum(p.stat().st_size for p in (hardened.data_dir / "files").rglob("*") if p.is_file())


def test_a_full_file_store_fails_the_prediction_cleanly_and_the_service_keeps_serving(hardened, alice, bob):
    earlier = still_serves(alice, hardened.files)
    # its LoRA at an outside URL is kept among alice's files for exact re-runs, once the prediction has ended
    kept = lambda: [f for f in alice("GET", "/v1/files").json()["results"] if f["name"] == "good.safetensors"]  # noqa: E731
    wait_for(kept, 30, "the LoRA kept for exact re-runs")
    room = QUOTA - _stored_bytes(hardened)
    filler = alice(
        "POST", "/v1/files", files={"content": ("filler.bin", b"\0" * (room - 64), "application/octet-stream")}
    )
    assert filler.status_code == 201, filler.text
    try:
        # an output that does not fit: the prediction fails, saying why
        result, seconds = timed(alice, GENERATE, {"prompt": "a red circle", "num_inference_steps": 2})
        assert result["status"] == "failed", result
        assert "file store is full" in result["error"], result["error"]
        assert result["output"] in (None, []) and seconds < 20
        # an upload that does not fit: 507, for anyone
        for api in (alice, bob):
            r = api("POST", "/v1/files", files={"content": ("more.txt", b"x" * 1000, "text/plain")})
            assert r.status_code == 507 and "file store is full" in r.json()["detail"], r.text
        r = alice(
            "POST",
            f"/v1/models/{TRAIN}/predictions",
            json={"input": {"instance_data": data_uri(zips.make(zips.three_images())), "task": "object"}},
        )
        assert r.status_code == 507, r.text
        # everything else still works: health, history, downloads of what is stored
        assert requests.get(f"{hardened.url}/health", timeout=5).json()["status"] == "ok"
        assert alice("GET", "/v1/predictions").status_code == 200
        assert requests.get(earlier["output"][0], timeout=10).status_code == 200
        assert not list((hardened.data_dir / "files").rglob(".upload-*"))  # no half-written file left
    finally:
        assert alice("DELETE", f"/v1/files/{filler.json()['id']}").status_code == 204
    # room again: the next prediction succeeds
    still_serves(alice, hardened.files)


def test_a_webhook_receiver_that_is_down_is_retried_then_given_up_and_recorded(hardened, alice):
    hook = f"http://127.0.0.1:{hardened.down_port}/hook"  # allowed, but nothing listens there
    result, _ = timed(
        alice,
        GENERATE,
        {"prompt": "a red circle", "num_inference_steps": 2},
        webhook=hook,
        webhook_events_filter=["completed"],
    )
    assert result["status"] == "succeeded" and result["output"]  # the prediction is unaffected
    deliveries = wait_for(
        lambda: [d for d in _deliveries(alice, result["id"]) if d["status"] != "pending"],
        30,
        "the delivery to be given up",
    )
    (delivery,) = deliveries
    assert delivery["status"] == "failed" and delivery["attempts"] == 4, delivery  # LORA_STUDIO_WEBHOOK_RETRIES
    assert delivery["last_error"].startswith("could not deliver"), delivery
    took = _seconds(delivery["completed_at"]) - _seconds(delivery["created_at"])
    assert took >= 0.2 + 0.4 + 0.8, took  # backoff 0.2 s, doubling between the 4 attempts
    assert alice("GET", f"/v1/predictions/{result['id']}").json()["status"] == "succeeded"


def test_a_failing_webhook_receiver_gets_the_same_delivery_until_it_accepts(hardened, alice):
    with receiver(hardened.hook_port, answers=[500, 503]) as hook:
        result, _ = timed(
            alice,
            GENERATE,
            {"prompt": "a red circle", "num_inference_steps": 2},
            webhook=f"{hook.url}/hook",
            webhook_events_filter=["completed"],
        )
        (delivery,) = wait_for(
            lambda: [d for d in _deliveries(alice, result["id"]) if d["status"] != "pending"], 30, "the delivery"
        )
        assert delivery["status"] == "delivered" and delivery["attempts"] == 3, delivery
        bodies = hook.httpd.RequestHandlerClass.bodies
        assert len(bodies) == 3
        assert len({headers["webhook-id"] for headers, _ in bodies}) == 1  # one id: receivers can de-duplicate
        assert all(body["id"] == result["id"] and body["status"] == "succeeded" for _, body in bodies)


def _deliveries(api, prediction_id: str) -> list[dict]:
    return api("GET", f"/v1/predictions/{prediction_id}/webhook-deliveries").json()["results"]


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.rstrip("Z")).timestamp()
