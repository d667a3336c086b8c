"""The official ``replicate`` client against the service: train from a zip, then generate with the LoRA it made."""

import io
import re
import time

import numpy as np
import pytest
import replicate
import requests
from PIL import Image

from conftest import Files, serve_folder, zip_images
from lora_core.base import checkpoints, single_file
from lora_core.service.auth.tokens import TOKEN_COOKIE
from lora_core.tiny import tiny_eval, tiny_world
from service_harness import Api, progress_steps

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')


def _images(output) -> list[Image.Image]:
    """The client wraps https:// outputs in FileOutput; this test server speaks plain http, so those stay URLs."""
    return [
        Image.open(io.BytesIO(o.read() if hasattr(o, "read") else requests.get(o, timeout=10).content)).convert("RGB")
        for o in output
    ]


def test_train_then_generate_with_the_official_client(service, tmp_path):
    client = replicate.Client(api_token=service.token("carol"), base_url=service.url)
    zip_path = zip_images(tmp_path / "stars.zip", tiny_world.concept_images("star", "purple", 6, first_seed=0))

    training_model = client.models.get("lora-studio/lora-training")
    with zip_path.open("rb") as f:  # the client uploads the file through POST /v1/files first
        training = client.trainings.create(
            version=f"lora-studio/lora-training:{training_model.latest_version.id}",
            destination="carol/stars",
            input={"instance_data": f, "task": "object", "seed": 0, "max_train_steps": 300},
        )
    deadline = time.monotonic() + 300
    while training.status not in ("succeeded", "failed", "canceled"):  # the client's Training has no wait()
        assert time.monotonic() < deadline, training.logs[-2000:]
        time.sleep(1)
        training.reload()
    assert training.status == "succeeded", (training.error, training.logs[-2000:])
    assert (100, 300, 300) in progress_steps(training.logs)
    assert "uploaded lora (0." in training.logs  # handed to the worker's upload URL, not inlined in a webhook
    lora_url = training.output["lora"]
    assert re.search(r"/lora-object-0-step\d{5}\.safetensors\?", lora_url)  # its own name: task, seed, step
    assert len(training.output["checkpoints"]) == 4 and lora_url.split("?")[0].rsplit("/", 1)[1] in {
        c.split("?")[0].rsplit("/", 1)[1] for c in training.output["checkpoints"]
    }  # the recommended checkpoint is one of them

    # scale 0 is the base; at 1 the LoRA draws purple stars (the concept the base has never seen)
    inputs = {"prompt": "a photo of <1>", "lora_urls": lora_url, "seed": 1, "num_outputs": 4}
    base = client.run("lora-studio/lora", input={**inputs, "lora_scales": "0"})
    tuned = client.run("lora-studio/lora", input={**inputs, "lora_scales": "1"})
    base_images, tuned_images = _images(base), _images(tuned)
    photos = tiny_world.concept_images("star", "purple", 6, first_seed=0)
    d_base = tiny_eval.palette_distance(base_images, photos)
    d_tuned = tiny_eval.palette_distance(tuned_images, photos)
    assert d_tuned < 0.5 * d_base, (d_base, d_tuned)
    assert not np.array_equal(np.asarray(base_images[0]), np.asarray(tuned_images[0]))

    page = client.predictions.list()
    assert {p.model for p in page.results} >= {"lora-studio/lora", "lora-studio/lora-training"}

    # the training's destination named its LoRA: carol/stars draws what the URL draws, bit for bit
    assert "published as carol/stars:1" in training.logs
    named = client.run("lora-studio/lora", input={**inputs, "lora_scales": "1", "lora_urls": "carol/stars:1"})
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(_images(named), tuned_images, strict=True))
    # A1111's tag with the name applies it alone, as in A1111: the same pixels again, the tag out of the prompt
    tagged = client.run(
        "lora-studio/lora", input={**inputs, "prompt": "a photo of <1> <lora:carol/stars:1:1>", "lora_urls": ""}
    )
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(_images(tagged), tuned_images, strict=True))
    _names_are_private_until_made_public(service, lora_url, training.output["scales_grid"])


def _names_are_private_until_made_public(service, lora_url: str, grid_url: str) -> None:
    carol, dave = (Api(service.url, service.token(who)) for who in ("carol", "dave"))
    listing = carol("GET", "/v1/loras").json()["results"]
    assert [(x["ref"], x["visibility"], x["latest_version"]) for x in listing] == [("carol/stars", "private", 1)]
    version = listing[0]["versions"][0]
    page = requests.get(f"{service.url}/loras", cookies={TOKEN_COOKIE: service.token("carol")}, timeout=30).text
    assert 'data-lora="carol/stars"' in page and "lora_urls=carol%2Fstars" in page  # "Use" fills the form
    assert re.search(r"data-lora-scores>0\.\d{3} · \d\.\d{2}<", page)  # its report's fidelity and bleed
    sample = re.search(r'<img class="lora-sample" src="([^"]+)"[^>]*data-lora-sample>', page)  # the newest's grid
    assert sample and sample.group(1).split("?")[0] == grid_url.split("?")[0], page  # signed when drawn
    assert requests.get(sample.group(1).replace("&amp;", "&"), timeout=30).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert requests.get(version["urls"]["download"], timeout=30).content == requests.get(lora_url, timeout=30).content
    # another owner: a private name reads exactly as a missing one, in the catalog and in lora_urls
    missing, private = dave("GET", "/v1/loras/carol/nothing"), dave("GET", "/v1/loras/carol/stars")
    assert missing.status_code == private.status_code == 404
    assert missing.json()["detail"].replace("nothing", "X") == private.json()["detail"].replace("stars", "X")
    refused = dave(
        "POST", "/v1/models/lora-studio/lora/predictions", json={"input": {"prompt": "<1>", "lora_urls": "carol/stars"}}
    )
    assert refused.status_code == 422 and "no LoRA named 'carol/stars'" in refused.json()["detail"]
    tag = dave("POST", "/v1/models/lora-studio/lora/predictions", json={"input": {"prompt": "<lora:carol/stars:1>"}})
    assert tag.status_code == 422 and "input.prompt" in tag.text and "no LoRA named 'carol/stars'" in tag.text
    assert dave("PATCH", "/v1/loras/carol/stars", json={"visibility": "public"}).status_code == 404
    # a destination of another owner's is refused before anything runs
    r = dave("POST", "/v1/trainings", json={"destination": "carol/stars", "input": {"instance_data": lora_url}})
    assert r.status_code == 422 and "dave/<name>" in r.json()["detail"]
    assert carol("PATCH", "/v1/loras/carol/stars", json={"visibility": "public"}).json()["visibility"] == "public"
    used = dave.predict("lora-studio/lora", {"prompt": "a photo of <1>", "lora_urls": "carol/stars", "seed": 1})
    assert used["status"] == "succeeded" and used["provenance"]["loras"][0]["sha256"] == version["sha256"]
    assert used["provenance"]["loras"][0]["url"] == "carol/stars"  # as dave wrote it, not the signed URL
    by_tag = dave.predict("lora-studio/lora", {"prompt": "a photo of <1> <lora:carol/stars:0.5>", "seed": 1})
    assert by_tag["status"] == "succeeded", by_tag["error"]
    assert by_tag["input"]["prompt"] == "a photo of <1> <lora:carol/stars:0.5>"  # stored as dave wrote it
    assert [(x["url"], x["scale"]) for x in by_tag["provenance"]["loras"]] == [("carol/stars", 0.5)]
    forked = dave("POST", f"/v1/predictions/{by_tag['id']}/fork", json={})
    assert forked.status_code == 201, forked.text
    again = dave.wait(forked.json()["id"])  # the tag's LoRA once only, pinned to the bytes it used: exact
    assert again["provenance"]["rerun"]["exact"] is True, again["provenance"]["rerun"]
    assert len(again["provenance"]["loras"]) == 1
    # deleted: only by its owner; its file goes, and carol/stars:1 is refused from then on (never other bytes)
    assert dave("DELETE", "/v1/loras/carol/stars/versions/1").status_code == 404  # public, but not dave's
    assert carol("DELETE", "/v1/loras/carol/stars/versions/1").status_code == 204
    assert carol("GET", "/v1/loras/carol/stars").status_code == 404
    assert requests.get(version["urls"]["download"], timeout=30).status_code == 404
    tagged_1 = {"input": {"prompt": "<lora:carol/stars:1:1>"}}
    gone = carol("POST", "/v1/models/lora-studio/lora/predictions", json=tagged_1)
    assert gone.status_code == 422 and "no LoRA named 'carol/stars:1'" in gone.json()["detail"], gone.text


def test_the_loop_on_the_tiny_sdxl_base(service, tmp_path):
    """The same loop with ``base_model`` the tiny SDXL base: trained and drawn on it, its "Use this LoRA" link opens
    the form on it, and the LoRA on the default (SD 1.x) base fails that prediction with both families named."""
    client = replicate.Client(api_token=service.token("erin"), base_url=service.url)
    photos = tiny_world.concept_images("star", "purple", 6, first_seed=0)
    zip_path = zip_images(tmp_path / "stars.zip", photos)
    version = client.models.get("lora-studio/lora-training").latest_version.id
    with zip_path.open("rb") as f:
        training = client.trainings.create(
            version=f"lora-studio/lora-training:{version}",
            destination="erin/xl-stars",
            input={"instance_data": f, "task": "object", "seed": 0, "max_train_steps": 300, "base_model": "tiny-xl"},
        )
    deadline = time.monotonic() + 300
    while training.status not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, training.logs[-2000:]
        time.sleep(1)
        training.reload()
    assert training.status == "succeeded", (training.error, training.logs[-2000:])
    lora_url = training.output["lora"]

    inputs = {"prompt": "a photo of <1>", "lora_urls": lora_url, "seed": 1, "num_outputs": 4, "base_model": "tiny-xl"}
    base = _images(client.run("lora-studio/lora", input={**inputs, "lora_scales": "0"}))
    tuned = _images(client.run("lora-studio/lora", input={**inputs, "lora_scales": "1"}))
    d_base, d_tuned = tiny_eval.palette_distance(base, photos), tiny_eval.palette_distance(tuned, photos)
    assert d_tuned < 0.5 * d_base, (d_base, d_tuned)

    page = requests.get(
        f"{service.url}/predictions/{training.id}", cookies={TOKEN_COOKIE: service.token("erin")}, timeout=30
    ).text
    use = re.search(r'href="([^"]+)" data-use-lora', page)
    assert use and "base_model=tiny-xl" in use.group(1), page[-3000:]

    with pytest.raises(replicate.exceptions.ModelError) as refused:
        client.run("lora-studio/lora", input={**inputs, "base_model": None, "lora_scales": "1"})
    message = str(refused.value)
    assert "made for SDXL" in message and "(SD 1.x" in message and "tiny-xl" in message, message
    again = _images(client.run("lora-studio/lora", input={**inputs, "lora_scales": "1"}))  # the next one is served
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, tuned, strict=True))


def test_an_own_checkpoint_by_url_through_the_official_client(service, tmp_path):
    """``base_model`` as the URL of a single file (the tiny SDXL base exported as a user shares a fine-tune) draws
    what the registry name draws, and a second prediction downloads nothing; a misspelt name is refused before
    anything is queued (422, naming the choices); a VAE given as the base fails that one prediction with a
    sentence, and the next is served."""
    client = replicate.Client(api_token=service.token("frank"), base_url=service.url)
    files = tmp_path / "files"
    single_file.export_single_file(
        checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny-xl")), files / "my-xl.safetensors"
    )
    (files / "vae.safetensors").write_bytes(b"")  # not even a header: what a failed upload leaves
    inputs = {"prompt": "a red circle on a blue background", "seed": 4, "num_outputs": 2}
    named = _images(client.run("lora-studio/lora", input={**inputs, "base_model": "tiny-xl"}))
    with serve_folder(files) as url:
        own_url = f"{url}/my-xl.safetensors"
        own = _images(client.run("lora-studio/lora", input={**inputs, "base_model": own_url}))
        gets = Files.gets["/my-xl.safetensors"]
        again = _images(client.run("lora-studio/lora", input={**inputs, "base_model": own_url}))
        assert Files.gets["/my-xl.safetensors"] == gets  # the worker's checkpoint cache answered
        with pytest.raises(replicate.exceptions.ModelError) as refused:
            client.run("lora-studio/lora", input={**inputs, "base_model": f"{url}/vae.safetensors"})
        assert "'vae.safetensors' is not a complete .safetensors file" in str(refused.value), str(refused.value)
    for a, b, c in zip(named, own, again, strict=True):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1 and np.array_equal(np.asarray(b), c)
    with pytest.raises(replicate.exceptions.ReplicateError) as misspelt:
        client.run("lora-studio/lora", input={**inputs, "base_model": "tiny_xl"})
    assert misspelt.value.status == 422 and "must be one of: tiny, tiny-xl" in str(misspelt.value.detail)
