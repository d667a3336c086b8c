"""The service's parts without a running server: schema, queue, paging, validation, signing, URLs, storage."""

import base64
import datetime
import io
import os

import pytest
import sqlalchemy as sa

from lora_core.env_settings import EnvSettingsError
from lora_core.service.api import bodies
from lora_core.service.auth import signing, tokens
from lora_core.service.config import parse_workers
from lora_core.service.models import InputError, load_models
from lora_core.service.queue import outputs, predictions
from lora_core.service.queue.limits import OwnerLimits
from lora_core.service.storage import content_types, db, file_store, files, loras
from lora_core.service.urls import Urls
from service_harness import config_from, race_claimers


@pytest.fixture
def engine(tmp_path):
    return db.connect(f"sqlite:///{tmp_path / 'test.db'}")


def test_the_migrations_build_exactly_the_declared_tables(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), db.metadata)
    assert diff == []
    db.migrate(engine)  # a second start changes nothing
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.connect() as c:  # at the newest migration
        assert c.execute(sa.text("select version_num from alembic_version")).scalar() == (
            ScriptDirectory.from_config(config).get_current_head()
        )


def _create(engine, owner="alice", model="lora-studio/lora"):
    return predictions.create(engine, owner=owner, model=model, version="v", kind="prediction", input={"prompt": "x"})


def test_pages_walk_newest_first_and_back(engine):
    made = [_create(engine)["id"] for _ in range(5)]
    _create(engine, owner="bob")
    rows, older, newer = predictions.page(engine, "alice", limit=2)
    assert [r["id"] for r in rows] == made[::-1][:2] and newer is None and older
    rows2, older2, newer2 = predictions.page(engine, "alice", older, limit=2)
    assert [r["id"] for r in rows2] == made[::-1][2:4]
    rows3, older3, _ = predictions.page(engine, "alice", older2, limit=2)
    assert [r["id"] for r in rows3] == made[::-1][4:] and older3 is None
    back, _, _ = predictions.page(engine, "alice", newer2, limit=2)
    assert [r["id"] for r in back] == made[::-1][:2]
    with pytest.raises(ValueError, match="cursor"):
        predictions.page(engine, "alice", "garbage!")


def test_each_queued_prediction_is_claimed_once_under_racing_workers(engine):
    made, claimed = race_claimers(engine, count=30, claimers=4)
    assert sorted(claimed) == sorted(made)


def test_claims_take_turns_across_owners_and_respect_the_running_limit(engine):
    flood = [_create(engine, owner="flood")["id"] for _ in range(6)]
    late = _create(engine, owner="late")["id"]
    order = [predictions.claim_next(engine, "lora-studio/lora", f"w{i}", "inst")["id"] for i in range(3)]
    assert order == [flood[0], late, flood[1]]  # the late owner's one goes second, not seventh
    # with at most 3 running per owner, the flood's next waits while another owner's goes
    other = _create(engine, owner="other")["id"]
    assert predictions.claim_next(engine, "lora-studio/lora", "w3", "inst", max_running=2)["id"] == other
    assert predictions.claim_next(engine, "lora-studio/lora", "w4", "inst", max_running=2) is None
    predictions.finish(engine, flood[0], "succeeded")
    assert predictions.claim_next(engine, "lora-studio/lora", "w4", "inst", max_running=2)["id"] == flood[2]


def test_stored_content_types_are_bare_safe_and_true():
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    assert content_types.stored_type("image/png", png) == "image/png"
    assert content_types.stored_type("IMAGE/PNG; charset=x", png) == "image/png"
    assert content_types.stored_type("image/jpeg", png) == "image/png"  # the bytes decide an image's type
    assert content_types.stored_type("image/png", b"<html>") == "application/octet-stream"
    assert content_types.stored_type("image/svg+xml", b"<svg>") == "application/octet-stream"
    assert content_types.stored_type("text/html", b"<html>") == "application/octet-stream"
    assert content_types.stored_type("image/png, text/html", png) == "application/octet-stream"
    assert content_types.stored_type("text/plain\r\nX-A: b", b"hi") == "application/octet-stream"
    assert content_types.stored_type("application/zip", b"PK\x03\x04") == "application/zip"
    assert content_types.served_inline("image/png", png) and not content_types.served_inline("image/png", b"<svg")
    assert "Content-Disposition" in content_types.headers("application/zip", b"PK", "a.zip")


@pytest.mark.parametrize(
    "raw, phrase",
    [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"{'a': 1}", "not valid JSON"),
    ],
)
def test_json_bodies_too_deep_or_not_unicode_are_refused_with_a_sentence(raw, phrase):
    with pytest.raises(bodies.BadBody, match=phrase):
        bodies.parse(raw)


def test_cancel_finish_and_interrupted(engine):
    queued, running = _create(engine), _create(engine)
    assert predictions.claim_next(engine, "lora-studio/lora", "w1", "inst-a")["id"] == queued["id"]
    # the first is claimed (running); the second is still queued
    assert predictions.cancel(engine, running["id"]) == "canceled"
    assert predictions.get(engine, running["id"])["status"] == "canceled"
    assert predictions.cancel(engine, queued["id"]) == "requested"
    assert predictions.cancel_requested(engine, queued["id"])
    assert predictions.update_running(engine, queued["id"], "other-worker") is None  # not its prediction
    assert predictions.update_running(engine, queued["id"], "w1", logs="step 1")["status"] == "processing"
    done = predictions.finish(engine, queued["id"], "canceled", worker="w1")
    assert done["status"] == "canceled" and done["metrics"]["predict_time"] >= 0
    assert predictions.finish(engine, queued["id"], "succeeded", worker="w1") is None  # final stays final

    left_running = _create(engine)
    still_queued = _create(engine)
    predictions.claim_next(engine, "lora-studio/lora", "w1", "inst-a")
    predictions.heartbeat(engine, "inst-a")
    assert predictions.fail_interrupted(engine, "inst-b", 60, at_start=True) == []  # inst-a is alive
    assert predictions.fail_interrupted(engine, "inst-a", 60, at_start=False) == []  # its own, while running
    assert predictions.fail_interrupted(engine, "inst-a", 60, at_start=True) == [left_running["id"]]
    row = predictions.get(engine, left_running["id"])
    assert row["status"] == "failed" and "interrupted" in row["error"]
    assert predictions.get(engine, still_queued["id"])["status"] == "starting"


def test_retention_removes_what_ended_long_enough_ago_and_nothing_else(engine, tmp_path):
    store = file_store.LocalFileStore(tmp_path / "files")
    old, recent, running, published = _create(engine), _create(engine), _create(engine), _create(engine)
    for _ in (old, recent, running, published):  # all claimed (running), in order
        predictions.claim_next(engine, "lora-studio/lora", "w1", "inst-a")
    for row in (old, recent, published):
        output = files.save(
            engine, store, owner="alice", name="out.png", stream=io.BytesIO(b"png"), limit=10, prediction_id=row["id"]
        )
        predictions.finish(engine, row["id"], "succeeded", output=[{"file": output["id"]}], logs="step 1")
    loras.publish(engine, "alice", "face", output["id"], published["id"])
    with engine.begin() as c:  # the first and the published one ended two days ago
        two_days = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(days=2)
        for row in (old, published):
            c.execute(db.predictions.update().where(db.predictions.c.id == row["id"]).values(completed_at=two_days))
    assert predictions.remove_expired(engine, store, datetime.timedelta(days=1)) == [old["id"]]  # names stay
    assert loras.resolve(engine, "alice/face", "alice")["prediction_id"] == published["id"]
    gone = predictions.get(engine, old["id"])
    assert gone["data_removed"] and gone["input"] == {} and gone["output"] is None and gone["logs"] == ""
    assert files.of_prediction(engine, old["id"]) == [] and len(list((tmp_path / "files").rglob("*.*"))) == 2
    kept = predictions.get(engine, recent["id"])
    assert not kept["data_removed"] and kept["input"] == {"prompt": "x"} and files.of_prediction(engine, recent["id"])
    assert predictions.remove_data(engine, store, running["id"]) is None  # running: nothing removed
    assert predictions.remove_expired(engine, store, datetime.timedelta(days=1)) == []  # removed once
    predictions.remove_data(engine, store, published["id"])  # its owner deletes it: the version goes with its file
    assert loras.resolve(engine, "alice/face", "alice") is None and not files.of_prediction(engine, published["id"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_deleted_version_loses_its_file_and_its_number_is_never_given_again(backend, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    engine = db.connect(url)
    store = file_store.LocalFileStore(tmp_path / "files")
    trainings = [_create(engine) for _ in range(4)]
    outputs = []
    for row in trainings:
        predictions.claim_next(engine, "lora-studio/lora", "w1", "inst-a")
        output = files.save(
            engine,
            store,
            owner="alice",
            name="lora.safetensors",
            stream=io.BytesIO(row["id"].encode()),
            limit=99,
            prediction_id=row["id"],
        )
        predictions.finish(engine, row["id"], "succeeded", output={"lora": {"file": output["id"]}}, logs="step 1")
        outputs.append(output)
    for row, output in zip(trainings[:2], outputs[:2], strict=True):
        loras.publish(engine, "alice", "face", output["id"], row["id"])
    stored = lambda: len([f for f in (tmp_path / "files").rglob("*") if f.is_file()])  # noqa: E731
    assert stored() == 4
    assert not loras.remove(engine, store, "bob", "face", 2)  # not bob's
    assert loras.remove(engine, store, "alice", "face", 2)
    assert not loras.remove(engine, store, "alice", "face", 2)  # removed once
    assert files.get(engine, outputs[1]["id"]) is None and stored() == 3
    assert loras.resolve(engine, "alice/face", "alice")["version"] == 1  # the newest is the version before
    assert loras.resolve(engine, "alice/face:2", "alice") is None
    assert [v["version"] for v in loras.versions(engine, "alice", "face", "alice")] == [1]
    assert loras.by_sha256(engine, outputs[1]["sha256"], "alice") is None
    # the next training of the name is version 3: alice/face:2, pinned somewhere, never names other bytes
    assert loras.publish(engine, "alice", "face", outputs[2]["id"], trainings[2]["id"])["version"] == 3
    # the training's data removed: its version goes the same way, and its number stays taken
    predictions.remove_data(engine, store, trainings[2]["id"])
    assert loras.publish(engine, "alice", "face", outputs[3]["id"], trainings[3]["id"])["version"] == 4
    assert [v["version"] for v in loras.versions(engine, "alice", "face", "alice")] == [4, 1]
    loras.remove(engine, store, "alice", "face", 4)
    loras.remove(engine, store, "alice", "face", 1)
    assert loras.of_owner(engine, "alice") == []  # a name with no version left is not listed


def test_tokens_are_stored_hashed_and_resolve_to_their_owner(engine):
    token = tokens.create(engine, "alice")
    assert tokens.owner_of(engine, token) == "alice"
    assert tokens.owner_of(engine, token + "x") is None and tokens.owner_of(engine, "") is None
    with engine.connect() as c:
        stored = c.execute(sa.text("select token_sha256 from tokens")).scalar()
    assert token not in stored
    with pytest.raises(ValueError, match="owner"):
        tokens.create(engine, "Bad Owner/..")


MODELS = load_models()
GENERATE = MODELS["lora-studio/lora"]


@pytest.mark.parametrize(
    "given, field, kind",
    [
        ({}, "input.prompt", "required"),
        ({"prompt": "x", "num_outputs": 9}, "input.num_outputs", "maximum"),
        ({"prompt": "x", "num_outputs": "two"}, "input.num_outputs", "type"),
        ({"prompt": "x", "scheduler": "Heun"}, "input.scheduler", "enum"),
        ({"prompt": "x", "width": 10000}, "input.width", "anyOf"),
        ({"prompt": "x", "promt": "y"}, "input.promt", "unknown_field"),
        ({"prompt": 5}, "input.prompt", "type"),
    ],
)
def test_bad_inputs_name_their_field(given, field, kind):
    with pytest.raises(InputError) as e:
        GENERATE.validate(given)
    assert [(f.field, f.type) for f in e.value.fields] == [(field, kind)]
    assert e.value.fields[0].description


def test_a_learning_rate_of_zero_is_refused_by_the_api_not_the_worker():
    """It used to pass the schema (minimum 0) and fail minutes later in the worker (the job model wants > 0)."""
    training = MODELS["lora-studio/lora-training"]
    with pytest.raises(InputError) as e:
        training.validate({"instance_data": "https://example.com/a.zip", "learning_rate": 0})
    assert [(f.field, f.type) for f in e.value.fields] == [("input.learning_rate", "anyOf")]
    assert training.validate({"instance_data": "https://example.com/a.zip", "learning_rate": 1e-4})


def test_valid_input_gets_the_schema_defaults():
    clean = GENERATE.validate({"prompt": "a red circle", "seed": None, "width": 64})
    assert clean["scheduler"] == "DPMSolverMultistep" and clean["num_outputs"] == 1 and clean["width"] == 64
    assert clean["lora_scales"] == "0.5" and clean["seed"] is None
    with pytest.raises(InputError, match="did you mean 'prompt'"):
        GENERATE.validate({"promt": "x", "prompt": "y"})


def test_model_versions_are_stable_and_distinct():
    again = load_models()
    assert {m.version for m in MODELS.values()} == {m.version for m in again.values()}
    assert len({m.version for m in MODELS.values()}) == 2
    assert MODELS["lora-studio/lora-training"].file_inputs == ("instance_data",)


def test_an_incomplete_output_is_not_success():
    train = MODELS["lora-studio/lora-training"]
    assert train.output_problem({}, {"lora": {"$file": "a"}, "lora_a1111": {"$file": "b"}, "scales_grid": None})
    assert train.output_problem({}, {"lora": 1, "lora_a1111": 1, "scales_grid": 1})  # no checkpoints nor report
    done = {"lora": 1, "lora_a1111": 1, "embedding": 1, "scales_grid": 1, "checkpoints": [1, 2], "report": 1}
    assert train.output_problem({}, done) is None
    assert GENERATE.output_problem({"num_outputs": 2}, [{"$file": "a"}])
    assert GENERATE.output_problem({"num_outputs": 2}, [{"$file": "a"}, {"$file": "b"}]) is None


def test_signed_file_urls_are_stable_in_a_window_and_expire():
    signer = signing.Signer("s3cret")
    day = 86400
    q1 = signer.file_query("f" * 32, day, now=10 * day + 5)
    assert q1 == signer.file_query("f" * 32, day, now=10 * day + 80000)  # same URL all day: LoRA caches hit
    expires, sig = (p.split("=", 1)[1] for p in q1.split("&"))
    assert signer.file_ok("f" * 32, expires, sig, now=11 * day)
    assert not signer.file_ok("f" * 32, expires, sig, now=12 * day + 1)  # expired
    assert not signer.file_ok("e" * 32, expires, sig, now=11 * day)  # another file
    assert not signing.Signer("other").file_ok("f" * 32, expires, sig, now=11 * day)


def test_webhook_signatures_verify_like_replicates():
    signer = signing.Signer("s3cret")
    body = b'{"id": "x"}'
    headers = signer.webhook_headers("msg_1", body)
    assert signing.verify_webhook(signer.webhook_secret(), headers, body)
    assert not signing.verify_webhook(signer.webhook_secret(), headers, body + b" ")
    assert not signing.verify_webhook(signing.Signer("other").webhook_secret(), headers, body)


def test_worker_inputs_sign_only_the_owners_files(engine, tmp_path):
    config = config_from({}, port=8123, data_dir=tmp_path)
    urls = Urls(config, signing.Signer(config.secret))
    store = file_store.LocalFileStore(tmp_path / "files")
    mine = files.save(engine, store, owner="alice", name="face.safetensors", stream=io.BytesIO(b"x"), limit=10)
    theirs = files.save(engine, store, owner="bob", name="b.safetensors", stream=io.BytesIO(b"y"), limit=10)
    text = f"{urls.file_api(mine)}|{urls.file_api(theirs)}|https://example.com/x.safetensors"
    rewritten = urls.for_worker(text, "alice", engine).split("|")
    assert rewritten[0].startswith(f"http://127.0.0.1:8123/files/{mine['id']}/face.safetensors?expires=")
    assert rewritten[1:] == text.split("|")[1:]
    assert urls.own_file_ids(urls.file(mine)) == [mine["id"]]


def test_the_local_store_keeps_files_inside_its_folder(tmp_path):
    store = file_store.LocalFileStore(tmp_path / "files")
    for key in ("../x", "/etc/passwd", "a/../../x", "a//b", ""):
        with pytest.raises(ValueError):
            store.put(key, io.BytesIO(b"x"), "text/plain")
    store.put("a/b.txt", io.BytesIO(b"hello"), "text/plain")
    assert b"".join(store.open("a/b.txt")) == b"hello"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["b.txt"]


def test_uploads_over_the_limit_leave_nothing(engine, tmp_path):
    store = file_store.LocalFileStore(tmp_path / "files")
    with pytest.raises(files.TooLarge):
        files.save(engine, store, owner="alice", name="big.zip", stream=io.BytesIO(b"x" * 101), limit=100)
    assert not list((tmp_path / "files").rglob("*"))
    assert files.list_uploads(engine, "alice") == []
    row = files.save(engine, store, owner="alice", name="../../evil name.zip", stream=io.BytesIO(b"x"), limit=100)
    assert row["name"] == "evil_name.zip" and row["storage_key"].startswith("alice/")


def test_outputs_become_file_refs_and_back():
    prefix = "http://svc/internal/outputs/"
    saved = []

    def save(name, content_type, data):
        saved.append((name, content_type, data))
        return f"d{len(saved)}"

    lora = b"\x0c\x00\x00\x00\x00\x00\x00\x00" + b'{"a": "b"}  '
    out = outputs.to_refs(
        {
            "lora": "data:application/octet-stream;base64," + base64.b64encode(lora).decode(),
            "grid": "data:image/png;base64,aGk=",
            "up": prefix + "f1",
            "other": prefix + "zz",
        },
        prefix,
        {"f1"},
        save,
    )
    assert out == {"lora": {"$file": "d1"}, "grid": {"$file": "d2"}, "up": {"$file": "f1"}, "other": None}
    assert [s[:2] for s in saved] == [("lora.safetensors", "application/octet-stream"), ("grid.png", "image/png")]
    listed = outputs.to_refs(["data:image/png;base64,aGk=", "data:image/webp;base64,aGk="], prefix, set(), save)
    assert listed == [{"$file": "d3"}, {"$file": "d4"}] and [s[0] for s in saved[2:]] == [
        "output-0.png",
        "output-1.webp",
    ]
    assert outputs.render(out, lambda fid: f"https://x/{fid}") == {
        "lora": "https://x/d1",
        "grid": "https://x/d2",
        "up": "https://x/f1",
        "other": None,
    }
    assert outputs.file_ids([{"$file": "a"}, {"$file": "b"}]) == ["a", "b"]


def test_worker_settings_parse():
    parsed = parse_workers("lora-studio/lora=2; lora-studio/lora-training=http://gpu1:5000/,http://gpu2:5000")
    assert parsed["lora-studio/lora"].count == 2
    assert parsed["lora-studio/lora-training"].urls == ("http://gpu1:5000", "http://gpu2:5000")
    with pytest.raises(ValueError, match="owner/name"):
        parse_workers("lora=2")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LORA_STUDIO_WORKERS", "lora=2"),
        ("LORA_STUDIO_PORT", "eighty"),
        ("LORA_STUDIO_OWNER_MAX_QUEUED", "-1"),
        ("LORA_STUDIO_WEBHOOK_RETRIES", "many"),
    ],
)
def test_a_bad_setting_stops_the_service_naming_its_variable(tmp_path, variable, value):
    with pytest.raises(EnvSettingsError, match=variable):
        config_from({variable: value}, data_dir=tmp_path)


def test_settings_come_from_their_variables_and_flags_win(tmp_path):
    env = {
        "LORA_STUDIO_PORT": "9000",
        "LORA_STUDIO_OWNER_MAX_RUNNING": "2",
        "LORA_STUDIO_WEBHOOK_BACKOFF_S": "0.5",
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": "10.0.0.5:8000, gpu1",
        "LORA_STUDIO_WORKERS": "lora-studio/lora=0",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "DATABASE_URL": "postgresql://db/lora",
        "LORA_STUDIO_FILES_URL": "https://files.example.com/",
    }
    config = config_from(env, data_dir=tmp_path)
    assert (config.port, config.owner_limits.running, config.webhook_backoff_s) == (9000, 2, 0.5)
    assert config.owner_limits.queued == OwnerLimits().queued  # not set: the model's default
    assert config.allowed_private_hosts == {"10.0.0.5:8000", "gpu1"}
    assert config.worker_setting("lora-studio/lora").count == 0
    assert (config.s3_endpoint_url, config.database_url) == ("http://minio:9000", "postgresql://db/lora")
    assert config.files_url == "https://files.example.com" and config.public_url == "http://127.0.0.1:9000"
    assert (
        config_from({**env, "AWS_ENDPOINT_URL_S3": "http://s3:1"}, data_dir=tmp_path).s3_endpoint_url == "http://s3:1"
    )
    assert config_from(env, port=8123, data_dir=tmp_path).port == 8123


def test_a_secret_is_made_once_per_data_dir(tmp_path):
    a = config_from({}, data_dir=tmp_path)
    b = config_from({}, data_dir=tmp_path)
    assert a.secret == b.secret and len(a.secret) > 30
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0
    assert config_from({"LORA_STUDIO_SECRET": "given"}, data_dir=tmp_path).secret == "given"


def test_the_service_never_imports_torch_or_diffusers():
    """The API process reaches models only through Cog's protocol, so it starts in a second and scales apart."""
    import subprocess
    import sys

    code = (
        "import sys, lora_core.cli, lora_core.service.app, lora_core.service.web.routes; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_body_deadline_ends_with_the_body_and_never_cuts_a_slow_download():
    """BodyGuard's 408 is for a body that stops arriving; once it has arrived, a response that streams for longer
    than the deadline (a big LoRA to a slow client, while the framework waits for a disconnect) goes out whole."""
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from lora_core.service.app import BodyGuard

    async def slow(request):
        await request.body()

        async def chunks():
            for i in range(6):
                await asyncio.sleep(0.1)
                yield bytes([i]) * 1000

        return StreamingResponse(chunks())

    app = BodyGuard(
        Starlette(routes=[Route("/", slow, methods=["GET", "POST"])]),
        limit=10_000,
        upload_limit=10_000,
        output_limit=10_000,
        timeout_s=0.25,
    )

    async def fetch(method: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, "/", content=b"x" * 100 if method == "POST" else None)

    for method in ("GET", "POST"):
        answer = asyncio.run(fetch(method))
        assert answer.status_code == 200 and answer.content == b"".join(bytes([i]) * 1000 for i in range(6)), method


def test_local_workers_split_the_cores_unless_told(tmp_path, monkeypatch):
    """Two torch processes each using every core slow each other down tenfold: each local Cog server gets its
    share (``LORA_STUDIO_WORKER_THREADS`` overrides it; an ``OMP_NUM_THREADS`` the service was given bounds it)."""
    from lora_core.service.runtime import Runtime
    from lora_core.service.workers.pool import WorkerPool

    def threads(env: dict[str, str]) -> set[str]:
        pool = WorkerPool(Runtime(config_from(env, data_dir=tmp_path)))
        return {
            a.worker.process.extra_env[var]
            for a in pool.agents.values()
            if a.worker.process is not None
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
        }

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # ./dev test's processes each have their share
    cores = len(os.sched_getaffinity(0))
    three = {"LORA_STUDIO_WORKERS": "lora-studio/lora=2;lora-studio/lora-training=1"}
    assert threads(three) == {str(max(1, cores // 3))}
    assert threads({**three, "LORA_STUDIO_WORKER_THREADS": "5"}) == {"5"}
    one = {"LORA_STUDIO_WORKERS": "lora-studio/lora=1;lora-studio/lora-training=0"}
    assert threads(one) == {str(cores)}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads(one) == {"1"}
    assert threads({**one, "LORA_STUDIO_WORKER_THREADS": "2"}) == {"2"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"prompt": "a photo of <1>", "lora_urls": "alice/face"}, None),  # no tag: the input as it was
        (
            {"prompt": "a photo of <1> <lora:carol/stars:0.8>"},
            {"prompt": "a photo of <1> <lora:1:0.8>", "lora_urls": "carol/stars"},
        ),
        (  # a listed name: the tag takes its position; a new one is appended after the given entries
            {
                "prompt": "<lora:carol/stars:2:0.5> <1> and <2>, <lora:bob/style:1>",
                "lora_urls": "http://x/a.safetensors|carol/stars:2",
            },
            {
                "prompt": "<lora:2:0.5> <1> and <2>, <lora:3:1>",
                "lora_urls": "http://x/a.safetensors|carol/stars:2|bob/style",
            },
        ),
        (  # one scale per entry: the appended entry brings its tag's weight, so the counts agree
            {"prompt": "<1> <lora:bob/style:0.3>", "lora_urls": "a|b", "lora_scales": "0.5|0.6"},
            {"prompt": "<1> <lora:3:0.3>", "lora_urls": "a|b|bob/style", "lora_scales": "0.5|0.6|0.3"},
        ),
        (  # a file-name tag (A1111's own kind) is the predictor's to read
            {"prompt": "<lora:my_lora:0.5> <1>", "lora_urls": "http://x/my_lora.safetensors"},
            None,
        ),
    ],
)
def test_catalog_name_tags_become_entries_the_predictor_reads(given, expected):
    assert loras.tags_as_entries(given) == ({**given, **expected} if expected else given)


def test_the_names_a_prompts_tags_use_are_what_the_api_checks():
    prompt = "<lora:carol/stars:2:0.5> <1>, <lora:bob/style:1> <lora:file_name:0.3> <lora:1:0.4>"
    assert loras.tag_refs(prompt) == ["carol/stars:2", "bob/style"]
    assert loras.tag_refs(None) == [] and loras.tag_refs("a photo of <1>") == []
