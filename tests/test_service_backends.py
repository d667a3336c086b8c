"""The deployment backends, each a real server started here: S3-compatible storage (moto in server mode) and
PostgreSQL (Debian's, started as a throw-away cluster; CI installs it). Two service processes share one database."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lora_core.service.queue import predictions
from lora_core.service.storage import db
from service_harness import Api, ServiceProcess, free_port, race_claimers

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')

GENERATE = "lora-studio/lora"
ROOT = Path(__file__).resolve().parents[1]
ONLY_GENERATION = {"LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"}


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=1)
            break
        except requests.RequestException:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def _s3_env(endpoint: str) -> dict:
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def test_outputs_and_uploads_live_in_s3_and_survive_a_restart(s3_server, tmp_path):
    import boto3

    env = _s3_env(s3_server)
    s3 = boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    s3.create_bucket(Bucket="lora-outputs")
    settings = {**env, **ONLY_GENERATION, "STORAGE_URL": "s3://lora-outputs/studio"}
    service = ServiceProcess(tmp_path / "svc", env=settings).start()
    try:
        api = Api(service.url, service.token("alice"))
        body = api.predict(GENERATE, {"prompt": "a red circle", "seed": 0})
        assert body["status"] == "succeeded", body
        upload = api("POST", "/v1/files", files={"content": ("notes.txt", b"hi", "text/plain")}).json()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lora-outputs")["Contents"]]
        assert any(k.startswith("studio/alice/") and k.endswith(".png") for k in keys), keys
        assert f"studio/alice/{upload['id']}/notes.txt" in keys
        assert not (tmp_path / "svc" / "files").exists()  # nothing on local disk
    finally:
        service.stop()
    service = ServiceProcess(tmp_path / "svc", port=service.port, env=settings).start(wait_workers=False)
    try:
        image = requests.get(api("GET", f"/v1/predictions/{body['id']}").json()["output"][0], timeout=10)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    finally:
        service.stop()


def test_the_postgres_queue_hands_each_prediction_to_one_claimer(postgres_url):
    made, claimed = race_claimers(db.connect(postgres_url), count=40, claimers=6)
    assert sorted(claimed) == sorted(made)


def test_two_service_processes_share_one_postgres_queue(postgres_url, tmp_path):
    shared = {
        **ONLY_GENERATION,
        "DATABASE_URL": postgres_url,
        "LORA_STUDIO_SECRET": "shared-secret",
        "STORAGE_URL": f"file://{tmp_path / 'files'}",
    }
    first = ServiceProcess(tmp_path / "a", env=shared).start()
    second = ServiceProcess(tmp_path / "b", env=shared).start()
    try:
        api = Api(first.url, first.token("alice"))
        ids = [
            api.predict(GENERATE, {"prompt": "a red circle", "seed": i, "num_inference_steps": 10}, wait=None)["id"]
            for i in range(6)
        ]
        final = [api.wait(pid) for pid in ids]
        assert [f["status"] for f in final] == ["succeeded"] * 6
        engine = db.connect(postgres_url)
        instances = {predictions.get(engine, pid)["instance"] for pid in ids}
        assert len(instances) == 2, instances  # both processes' workers took work from the one queue
        # a file made by the other process is served by this one (shared store and secret)
        for body in final:
            assert requests.get(body["output"][0], timeout=10).status_code == 200
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_sharing_a_database_send_each_webhook_once_in_each_predictions_order(backend, request, tmp_path):
    """Three senders (as three service processes would run) on one database, 12 predictions' events queued by
    whichever: every delivery reaches the receiver exactly once, and each prediction's in the order queued."""
    from hostile.servers import receiver

    from lora_core.service.auth.signing import Signer
    from lora_core.service.queue.webhooks import Webhooks

    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = db.connect(url)
    events = ["start", "output", "logs", "completed"]
    with receiver(0, answers=[]) as hook:
        allowed = frozenset({f"127.0.0.1:{hook.port}"})
        senders = [
            Webhooks(engine, Signer("s"), allowed, instance=f"p{i}", backoff_s=0.05, poll_s=0.05) for i in range(3)
        ]
        for s in senders:
            s.start()
        try:
            queued: dict[str, list[str]] = {}
            for n in range(12):
                row = {"id": f"pred{n:02d}{backend}", "webhook": f"{hook.url}/hook", "webhook_events_filter": None}
                for event in events:
                    senders[n % 3].send(row, event, {"id": row["id"], "event": event})
                queued[row["id"]] = [d["id"] for d in senders[0].deliveries(row["id"])]
            deadline = time.monotonic() + 60
            while len(hook.httpd.RequestHandlerClass.bodies) < 48 or any(
                d["status"] == "pending" for pid in queued for d in senders[0].deliveries(pid)
            ):
                assert time.monotonic() < deadline, len(hook.httpd.RequestHandlerClass.bodies)
                time.sleep(0.1)
            time.sleep(0.5)  # room for a duplicate to show
        finally:
            for s in senders:
                s.close()
    received = [(h["webhook-id"], body) for h, body in hook.httpd.RequestHandlerClass.bodies]
    assert len(received) == len({i for i, _ in received}) == 48  # each once
    for pid, ids in queued.items():
        got = [i for i, body in received if body["id"] == pid]
        assert got == ids, pid  # in the order queued
        assert [body["event"] for i, body in received if body["id"] == pid] == events


def test_wakeups_cross_processes_on_postgres(postgres_url):
    """What one process announces (a prediction changed, one queued) wakes the waiters of another at once, through
    LISTEN/NOTIFY on the shared database: no waiting out the one-second re-read."""
    import asyncio
    import threading

    from lora_core.service.queue.wakeups import Listener, Wakeups

    engine = db.connect(postgres_url)
    here, there = Wakeups(), Wakeups()
    listeners = [Listener(engine, here), Listener(engine, there)]
    for listener in listeners:
        listener.start()
    try:

        async def woken_by_the_other() -> bool:
            with there.watching("p1") as changed:
                deadline = time.monotonic() + 30
                while not changed.is_set():  # the other's listener may still be connecting: announce until heard
                    here.prediction_changed("p1")
                    try:
                        await asyncio.wait_for(changed.wait(), 0.5)
                    except TimeoutError:
                        assert time.monotonic() < deadline, "never woken"
                return True

        assert asyncio.run(woken_by_the_other())
        queued = threading.Event()
        threading.Thread(target=lambda: (there.wait_for_queue(60), queued.set()), daemon=True).start()
        deadline = time.monotonic() + 30
        while not queued.wait(0.5):  # (announced before the other waited, it would be missed: announce again)
            here.prediction_queued()
            assert time.monotonic() < deadline, "the other process's claimers were never woken"
    finally:
        for listener in listeners:
            listener.stop()


def test_kedas_queries_count_each_models_waiting_and_running_predictions(postgres_url):
    """The queries of deploy/k8s/keda.yaml, run on a migrated PostgreSQL as KEDA's scaler runs them: per model, the
    predictions waiting or running (a pod per prediction), none of those ended or of the other model."""
    import sqlalchemy as sa
    import yaml

    engine = db.connect(postgres_url)
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM predictions"))
    made = {}
    for model, statuses in {
        "lora-studio/lora": ["starting", "starting", "processing", "succeeded", "failed"],
        "lora-studio/lora-training": ["processing", "canceled"],
    }.items():
        for status in statuses:
            row = predictions.create(engine, owner="o", model=model, version="v", kind="prediction", input={})
            with engine.begin() as c:
                c.execute(sa.text("UPDATE predictions SET status = :s WHERE id = :i"), {"s": status, "i": row["id"]})
        made[model] = sum(s in ("starting", "processing") for s in statuses)
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text()) if d]
    counted = {}
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        model = "lora-studio/lora-training" if "lora-training" in query else "lora-studio/lora"
        with engine.connect() as c:
            counted[model] = c.execute(sa.text(query)).scalar()
    assert counted == made == {"lora-studio/lora": 3, "lora-studio/lora-training": 1}
