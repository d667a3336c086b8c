"""Users' own base checkpoints: ``base_model`` as the URL of a single-file .safetensors, as A1111 and Civitai users
bring them, or as a hub id (issue 20 item 6). The embedded bases, exported as the single files a user would share
and served over local HTTP, or on the local hub of ``test_weights_fetch``, are the checkpoints; what is no base (a
pickle, a truncated download, a VAE, a LoRA, a refiner, an inpainting model, one of a size nothing installed has)
fails that one prediction with one sentence."""

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_weights_fetch import COMMIT, TINY, running_hub, tiny_files

from conftest import Files, call_predictor, local_generator, local_trainer, purple_stars, serve_folder, zip_images
from lora_core.base import checkpoints, hub_checkpoints, own_checkpoints, single_file
from lora_core.base.single_file import UNET_PREFIX
from lora_core.lora import lora_file
from lora_core.net import fetch

SD1_TEXT = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The two tiny bases as single files, and files that are no base a user may give instead."""
    root = tmp_path_factory.mktemp("own-checkpoints")
    for name in ("tiny", "tiny-xl"):
        single_file.export_single_file(
            checkpoints.load_pipeline(checkpoints.get_checkpoint(name)), root / f"{name}.safetensors"
        )
    EXPORTED.update({name: (root / f"{name}.safetensors").read_bytes() for name in ("tiny", "tiny-xl")})
    tiny = load_file(root / "tiny.safetensors")
    data = (root / "tiny.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    torch.save({"w": torch.zeros(2)}, root / "pickled.safetensors")  # a pickle under a safetensors name
    torch.save({"w": torch.zeros(2)}, root / "model.ckpt")
    vae = {k.removeprefix(single_file.VAE_PREFIX): v for k, v in tiny.items() if k.startswith(single_file.VAE_PREFIX)}
    save_file(vae, root / "vae.safetensors")  # as sd-vae-ft-mse-original ships
    inpainting = dict(tiny)
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    inpainting[conv_in] = torch.zeros(tiny[conv_in].shape[0], 9, 3, 3)  # latents, mask and masked image
    save_file(inpainting, root / "inpainting.safetensors")
    conv = torch.zeros(32, 4, 3, 3)
    save_file(
        {conv_in: conv, "conditioner.embedders.0.model.token_embedding.weight": torch.zeros(8, 8)},
        root / "refiner.safetensors",
    )
    save_file(
        {conv_in: conv, "cond_stage_model.model.token_embedding.weight": torch.zeros(8, 8)}, root / "sd2.safetensors"
    )
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, root / "lora.safetensors"
    )
    save_file(  # SD 1.5's sizes: 320-wide UNet, 768-wide CLIP (a few rows: only the header is read)
        {
            conv_in: torch.zeros(320, 4, 3, 3),
            UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 768),
            SD1_TEXT: torch.zeros(8, 768),
        },
        root / "sd15-sized.safetensors",
    )
    with serve_folder(root) as url:
        yield root, url


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return local_generator(tmp_path_factory.mktemp("own-cache"))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


@pytest.mark.parametrize("name", ["tiny", "tiny-xl"])
def test_a_single_file_by_url_samples_as_its_registry_base(generator, files, name, capsys):
    """The same pixels as the registry entry; a second prediction downloads nothing and loads nothing."""
    root, url = files
    given = dict(prompt="a red circle on a blue background", seed=3, num_outputs=2)
    registry = [pixels(p) for p in call_predictor(generator, base_model=name, **given)]
    capsys.readouterr()
    own = [pixels(p) for p in call_predictor(generator, base_model=f"{url}/{name}.safetensors", **given)]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(registry, own, strict=True))
    assert f"{name}'s configuration and defaults" in capsys.readouterr().out
    warm, gets = generator.bases.pipeline, Files.gets[f"/{name}.safetensors"]
    again = [pixels(p) for p in call_predictor(generator, base_model=f"{url}/{name}.safetensors", **given)]
    assert Files.gets[f"/{name}.safetensors"] == gets and generator.bases.pipeline is warm
    assert all(np.array_equal(a, b) for a, b in zip(own, again, strict=True))
    sha = hashlib.sha256((root / f"{name}.safetensors").read_bytes()).hexdigest()
    assert generator.bases.base_hash == sha[:12]  # what a LoRA trained on it records as its base


@pytest.mark.parametrize(
    ("file", "says"),
    [
        ("pickled.safetensors", "'pickled.safetensors' holds pickled data, which can run code when loaded"),
        ("model.ckpt", "'model.ckpt' is a pickle-based checkpoint, which can run code when loaded"),
        ("truncated.safetensors", "'truncated.safetensors' is not a complete .safetensors file"),
        ("vae.safetensors", "'vae.safetensors' is a VAE alone, with no UNet"),
        ("inpainting.safetensors", "an inpainting or other 9-channel SD 1.x model"),
        ("refiner.safetensors", "'refiner.safetensors' is an SDXL refiner"),
        ("sd2.safetensors", "'sd2.safetensors' is an SD 2.x checkpoint"),
        ("lora.safetensors", "'lora.safetensors' is a LoRA, not a base checkpoint (give it in lora_urls)"),
        ("missing.safetensors", "the server answered HTTP 404"),
        (
            "sd15-sized.safetensors",
            "is an SD 1.x checkpoint (UNet 320 wide with 768-wide cross-attention, text encoders 768 wide) that no "
            "installed base's configuration fits (installed SD 1.x bases: tiny)",
        ),
    ],
)
def test_what_is_no_base_fails_that_prediction_with_one_sentence(generator, files, file, says):
    _, url = files
    before = pixels(call_predictor(generator, prompt="a green square", seed=1)[0])
    with pytest.raises(checkpoints.CheckpointError) as failed:
        call_predictor(generator, prompt="a green square", seed=1, base_model=f"{url}/{file}")
    message = str(failed.value)
    assert says in message and message.startswith(f"base_model '{file}'") and "\n" not in message
    if file.endswith(".ckpt"):
        assert f"/{file}" not in Files.gets  # refused by its name: not a byte downloaded
    after = pixels(call_predictor(generator, prompt="a green square", seed=1)[0])
    assert np.array_equal(before, after)  # the service keeps serving, the same base


def test_private_addresses_and_misspelt_names_are_refused(generator):
    with pytest.raises(checkpoints.CheckpointError, match="10.1.2.3, a private or local address; refusing"):
        call_predictor(generator, prompt="x", base_model="http://10.1.2.3/model.safetensors")
    with pytest.raises(checkpoints.CheckpointError, match="Unknown base model 'sd15'. Choose one of: tiny, .*URL"):
        call_predictor(generator, prompt="x", base_model="sd15")


def test_a_bad_setting_is_refused_before_the_checkpoint_downloads(generator, files):
    _, url = files
    gets = dict(Files.gets)
    with pytest.raises(ValueError, match="multiple of 8"):
        call_predictor(generator, prompt="x", width=100, base_model=f"{url}/tiny-xl.safetensors?fresh")
    assert Files.gets == gets


def test_checkpoint_downloads_have_their_own_limits_and_cache(monkeypatch, tmp_path):
    """A base never evicts LoRAs (nor the reverse); an operator sets its limits apart from the LoRAs'."""
    monkeypatch.setenv("LORA_STUDIO_CACHE_DIR", str(tmp_path / "loras"))
    monkeypatch.setenv("LORA_STUDIO_CHECKPOINT_CACHE_DIR", str(tmp_path / "bases"))
    monkeypatch.setenv("LORA_STUDIO_MAX_CHECKPOINT_BYTES", str(3 * 2**30))
    monkeypatch.setenv("LORA_STUDIO_ALLOWED_PRIVATE_HOSTS", "10.0.0.5")
    loras, bases = fetch.FetchPolicy.from_env(), fetch.FetchPolicy.for_checkpoints()
    assert bases.cache_dir != loras.cache_dir and bases.max_bytes == 3 * 2**30 > loras.max_bytes
    assert bases.total_timeout_s == 1800 and bases.cache_max_bytes == 40 * 2**30
    assert bases.allowed_private_hosts == loras.allowed_private_hosts == {"10.0.0.5"}
    assert not bases.allow_file_urls


@pytest.mark.medium
def test_a_lora_trained_on_an_own_checkpoint_names_it_and_draws_on_it(files, tmp_path_factory, generator):
    """Training takes the URL too: the LoRA's metadata names the checkpoint (a signed URL's query left out) and its
    hash; with the URL as the base it draws, and scale 0 is that base bit for bit."""
    root, url = files
    trainer = local_trainer(tmp_path_factory.mktemp("own-train-cache"))
    base = f"{url}/tiny.safetensors?X-Amz-Signature=secret"
    zip_path = zip_images(tmp_path_factory.mktemp("own-zip") / "stars.zip", purple_stars())
    out = call_predictor(
        trainer,
        instance_data=zip_path,
        task="object",
        base_model=base,
        seed=0,
        max_train_steps=30,
        checkpoints=1,
        prior_images=0,
        grid_steps=2,
    )
    _, meta = lora_file.read_lora(out.lora)
    sha = hashlib.sha256((root / "tiny.safetensors").read_bytes()).hexdigest()
    assert meta["lora_studio.base_model"] == f"{url}/tiny.safetensors" and "secret" not in str(meta)
    assert meta["lora_studio.base_hash"] == sha[:12] and meta["lora_studio.base_family"] == "sd-1"
    lora_root = tmp_path_factory.mktemp("own-lora")
    (lora_root / "stars.safetensors").write_bytes(out.lora.read_bytes())
    with serve_folder(lora_root) as lora_url:
        given = dict(prompt="a photo of <1>", seed=2, base_model=base, lora_urls=f"{lora_url}/stars.safetensors")
        at_0 = pixels(call_predictor(generator, lora_scales="0", **given)[0])
        at_1 = pixels(call_predictor(generator, lora_scales="1", **given)[0])
        plain = pixels(call_predictor(generator, prompt="a photo of object", seed=2, base_model=base)[0])  # <1> at 0
    assert np.array_equal(at_0, plain) and not np.array_equal(at_1, plain)


# ---- hub ids --------------------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch, tmp_path_factory, files):
    """The local hub of ``test_weights_fetch`` as the deployment's HF_ENDPOINT, with a single-file repository too."""
    running = running_hub(monkeypatch, tmp_path_factory)
    h = next(running)
    h.repos["org/single"] = {"README.md": b"one file", "tiny.safetensors": EXPORTED["tiny"]}
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    yield h
    running.close()


EXPORTED: dict[str, bytes] = {}  # the single-file exports, by base name (filled by the ``files`` fixture)


@pytest.mark.parametrize(
    ("repo", "name"),
    [("org/tiny", "tiny"), ("org/tiny-xl", "tiny-xl"), ("org/single", "tiny"), (f"org/tiny@{COMMIT}", "tiny")],
)
def test_a_hub_id_draws_as_its_registry_base(generator, hub, repo, name, capsys):
    """A diffusers repository (or one holding a single file) by hub id, or pinned to a commit: the registry base's
    pixels; a second prediction asks the hub nothing and loads nothing. Following a branch, the log says how to pin
    the commit it drew on."""
    given = dict(prompt="a yellow star on a black background", seed=5)
    registry = pixels(call_predictor(generator, base_model=name, **given)[0])
    own = pixels(call_predictor(generator, base_model=repo, **given)[0])
    assert np.abs(registry - own).max() <= 1
    log = capsys.readouterr().out
    assert f", commit {COMMIT[:12]}" in log  # from the hub, or the cache: the files of org/tiny at the same commit
    assert (f"to keep drawing on it: {repo}@{COMMIT})" in log) == ("@" not in repo)
    asked, warm = (len(hub.requests), hub.listings), generator.bases.pipeline
    again = pixels(call_predictor(generator, base_model=repo, **given)[0])
    assert (len(hub.requests), hub.listings) == asked and generator.bases.pipeline is warm
    assert np.array_equal(own, again)


@pytest.mark.medium
@pytest.mark.parametrize("repo", ["org/tiny", "org/single"])
def test_a_lora_trained_on_a_hub_branch_names_the_commit(repo, hub, tmp_path_factory):
    """Trained on ``owner/name`` (its main), the LoRA's metadata names ``owner/name@<commit>``: "Use this LoRA"
    then draws on the weights it learned on, wherever main has gone since."""
    trainer = local_trainer(tmp_path_factory.mktemp("hub-train-cache"))
    zip_path = zip_images(tmp_path_factory.mktemp("hub-zip") / "stars.zip", purple_stars())
    given = dict(task="object", seed=0, max_train_steps=4, checkpoints=1, prior_images=0, grid_steps=2)
    out = call_predictor(trainer, instance_data=zip_path, base_model=repo, **given)
    assert lora_file.read_lora(out.lora)[1]["lora_studio.base_model"] == f"{repo}@{COMMIT}"


def test_what_a_hub_id_cannot_give_fails_with_one_sentence(generator, hub, tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match=r"^base_model 'org/nope': .*org/nope") as failed:
        call_predictor(generator, prompt="x", base_model="org/nope")
    assert "\n" not in str(failed.value)
    with pytest.raises(checkpoints.CheckpointError, match=r"^base_model 'org/tiny@v9': .*has no revision 'v9'"):
        call_predictor(generator, prompt="x", base_model="org/tiny@v9")
    small = fetch.FetchPolicy(cache_dir=tmp_path / "small", max_bytes=2**20)
    with pytest.raises(
        checkpoints.CheckpointError, match=r"base_model 'org/tiny': org/tiny is [\d.]+ MB; the limit is 1.0 MB"
    ):
        own_checkpoints.OwnCheckpoints(fetch.Fetcher(small), log=lambda _: None)("org/tiny")
    assert not hub.downloaded()  # refused from the listing: nothing downloaded


def test_a_commit_stays_as_it_was_when_main_moves_on(hub, tmp_path):
    """``owner/name@commit`` draws on that commit for good (exact re-runs): the hub is asked about it once, whatever
    the TTL; a branch is asked again after the TTL and follows the new commit, and a commit no revision names any
    more leaves the cache."""
    cache = hub_checkpoints.HubCache(fetch.FetchPolicy(cache_dir=tmp_path, ttl_s=0), log=lambda _: None)
    first = cache.get("org/tiny")
    new = "feed" * 10
    hub.push("org/tiny", tiny_files(TINY.parent / "tiny-sdxl"), new)
    moved = cache.get("org/tiny")
    assert (first.commit, moved.commit) == (COMMIT, new) and (moved.path / "text_encoder_2").is_dir()
    assert not first.path.exists()  # no revision names COMMIT any more
    pinned = cache.get("org/tiny", COMMIT)
    assert pinned.commit == COMMIT and pinned.downloaded_bytes > 0 and not (pinned.path / "text_encoder_2").exists()
    asked = hub.listings
    again = cache.get("org/tiny", COMMIT)
    assert (again.path, again.downloaded_bytes, hub.listings) == (pinned.path, 0, asked)
    assert (pinned.path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        TINY / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("org/tiny", True),
        ("org/tiny@v1.0", True),
        (f"org/tiny@{COMMIT}", True),
        ("org/tiny@", False),
        ("org/tiny@refs/pr/1", True),  # a pull request's ref
        ("org/tiny@..", False),
        ("org/tiny@v1/../../x", False),
        ("org/tiny@/main", False),
        ("org/tiny@a b", False),
        ("org/tiny@v1@v2", False),
    ],
)
def test_which_hub_ids_the_service_takes(value, ok):
    """The service's check before queueing and the worker's agree: what one takes, the other fetches."""
    from lora_core.service import models

    assert checkpoints.is_hub_id(value) is ok
    assert (models._base_model_problems({"base_model": value}) == []) is ok


def test_a_cache_folder_from_before_revisions_is_still_dropped_by_the_lru(hub, tmp_path):
    """A repository the cache held before revisions (its memo ``main.json``, no ``refs.json``) still counts towards
    the bound and goes first when it was used least recently."""
    old = tmp_path / "hub" / "org--old"
    (old / COMMIT[:12]).mkdir(parents=True)
    (old / COMMIT[:12] / "model.safetensors").write_bytes(bytes(8 * 2**20))
    (old / hub_checkpoints.LEGACY_MEMO).write_text("{}")
    os.utime(old / hub_checkpoints.LEGACY_MEMO, (1, 1))  # used long ago
    policy = fetch.FetchPolicy(cache_dir=tmp_path, cache_max_bytes=12 * 2**20)  # room for org/tiny, not both
    tiny = hub_checkpoints.HubCache(policy, log=lambda _: None).get("org/tiny")
    assert tiny.path.is_dir() and not old.exists()


def test_the_hub_cache_keeps_the_latest_commit_and_drops_the_least_recently_used(hub, tmp_path):
    policy = fetch.FetchPolicy(cache_dir=tmp_path, cache_max_bytes=12 * 2**20, ttl_s=0)  # room for one repository
    cache = hub_checkpoints.HubCache(policy, log=lambda _: None)
    tiny = cache.get("org/tiny")
    assert tiny.layout == "diffusers" and (tiny.path / "model_index.json").is_file() and tiny.downloaded_bytes > 0
    again = cache.get("org/tiny")  # the TTL is over: listed again, nothing downloaded
    assert again.path == tiny.path and again.downloaded_bytes == 0 and hub.listings == 2
    xl = cache.get("org/tiny-xl")
    assert xl.path.is_dir() and not tiny.path.exists()  # past the bound: the older repository went
