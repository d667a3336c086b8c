"""``lora-studio weights fetch`` against a local HTTP server that answers like the Hugging Face hub.

The hub serves the committed tiny base (``weights/tiny-sd``) as repository ``org/tiny``, plus files a pipeline
never loads (a pickle UNet, a top-level ``.ckpt``, an fp16 twin), so every test compares real bytes. It answers what
``huggingface_hub`` asks: the listing (``/api/models/{repo}/revision/{rev}?blobs=true``), then per file a HEAD and a
GET on ``/{repo}/resolve/{commit}/{path}`` (only at the listed commit: downloads must be pinned to it).
"""

import hashlib
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from huggingface_hub import constants as hf_constants

from lora_core import progress
from lora_core.base import checkpoints, hub_download
from lora_core.base.weights_fetch import FetchOptions, WeightsFetchError, fetch_checkpoint
from lora_core.cli import main

TINY = checkpoints.DEFAULT_WEIGHTS_DIR / "tiny-sd"
UNET = "unet/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"
FP16 = bytes(range(256)) * 300
EXTRA = {
    "unet/diffusion_pytorch_model.bin": b"\x80\x02" + b"pickled" * 100,
    "v1-5.ckpt": b"PK\x03\x04" + bytes(500),
    "unet/diffusion_pytorch_model.fp16.safetensors": FP16,
}
COMMIT = "c0ffee" * 6 + "beef"


def tiny_files(folder: Path = TINY) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


NEEDED = {k: v for k, v in tiny_files().items() if k != "build_info.json"}  # the pipeline never reads build_info


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".bin", ".ckpt"))


class Hub:
    """Repositories of files behind the hub's API and ``resolve``; records what the client asked for and can
    misbehave on cue."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}  # each repository's files at its head (COMMIT unless pushed)
        self.heads: dict[str, str] = {}
        self.past: dict[tuple[str, str], dict[str, bytes]] = {}  # (repository, commit) → the files then
        self.extra_rows: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header) on resolve
        self.listings = 0
        self.auth: list[tuple[str, str | None]] = []  # (URL path, Authorization header) of every request
        self.cdn = ""  # when set, LFS files are redirected there, as huggingface.co does
        self.ignore_range = False
        # (method, path or "listing") → what its next answers do: an HTTP status, or ("drop", n): n bytes then cut
        self.faults: dict[tuple[str, str], list] = {}
        self.corrupt: set[str] = set()
        self.lock = threading.Lock()
        self.url = ""
        self.cache = Path()

    def at(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """The commit ``revision`` names in ``repo`` ("main" or a commit) and its files; None if there is none."""
        head = self.heads.get(repo, COMMIT)
        if repo in self.repos and revision in ("main", head):
            return head, self.repos[repo]
        return (revision, self.past[repo, revision]) if (repo, revision) in self.past else None

    def push(self, repo: str, files: dict[str, bytes], commit: str) -> None:
        """A new commit on ``main``; the one before stays reachable by its id."""
        self.past[repo, self.heads.get(repo, COMMIT)] = self.repos[repo]
        self.repos[repo], self.heads[repo] = files, commit

    def listing(self, repo: str, revision: str = "main") -> dict:
        rows = []
        commit, files = self.at(repo, revision) or ("", {})
        for path, data in files.items():
            row: dict = {"rfilename": path, "size": len(data), "blobId": git_sha1(data)}
            if is_lfs(path):  # the blob id is then the pointer's; the content's sha256 is in lfs
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                row |= {
                    "blobId": git_sha1(pointer.encode()),
                    "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134},
                }
            rows.append(row)
        return {"id": repo, "sha": commit, "private": False, "siblings": rows + self.extra_rows}

    def fault(self, method: str, path: str):
        with self.lock:
            queue = self.faults.get((method, path))
            return queue.pop(0) if queue else None

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path``."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def downloaded(self) -> set[str]:
        return {p for m, p, _ in self.requests if m == "GET"}


def handler_for(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self.serve("HEAD")

        def do_GET(self) -> None:
            self.serve("GET")

        def serve(self, method: str) -> None:
            url = urlsplit(self.path)
            hub.auth.append((url.path, self.headers.get("Authorization")))
            api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", url.path)
            if api and method == "GET":
                hub.listings += 1
                if api[1] not in hub.repos:
                    return self.answer(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                if hub.at(api[1], unquote(api[2])) is None:
                    return self.answer(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                if fail := hub.fault("GET", "listing"):
                    return self.answer(fail, b"try again")
                assert parse_qs(url.query).get("blobs") == ["true"], url.query  # sizes and hashes are asked for
                listing = hub.listing(api[1], unquote(api[2]))
                return self.answer(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
            file = re.fullmatch(r"/(cdn/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url.path)
            path = unquote(file[4]) if file else ""
            # files are asked for at the listing's commit, never at "main"
            found = hub.at(file[2], unquote(file[3])) if file and unquote(file[3]) != "main" else None
            commit, files = found or (COMMIT, {})
            data = files.get(path)
            if data is None:
                return self.answer(404, b"not found", {"X-Error-Code": "EntryNotFound"} if file else {})
            if hub.cdn and is_lfs(path) and not file[1]:
                sha = hashlib.sha256(data).hexdigest()
                return self.answer(
                    302,
                    b"",
                    {
                        "Location": f"{hub.cdn}/cdn{url.path}",
                        "X-Repo-Commit": commit,
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data)),
                    },
                )
            header = self.headers.get("Range")
            with hub.lock:
                hub.requests.append((method, path, header))
            fault = hub.fault(method, path)
            if isinstance(fault, int):
                return self.answer(fault, b"try again")
            if path in hub.corrupt:
                data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]
            start, end, status = 0, len(data), 200
            if header and method == "GET" and not hub.ignore_range:
                a, b = re.fullmatch(r"bytes=(\d+)-(\d*)", header).groups()
                start, end, status = int(a), min(len(data), int(b) + 1 if b else len(data)), 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("X-Repo-Commit", commit)
            if is_lfs(path):  # what the hub says of an LFS file (it would also redirect to a CDN)
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(files[path]).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_sha1(files[path])}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if method == "HEAD":
                return
            body = data[start:end]
            if fault is not None:  # ("drop", n): a dropped connection, fewer bytes than announced
                self.wfile.write(body[: fault[1]])
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in ({"Content-Type": "text/plain"} | (headers or {})).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # dropped connections are on purpose
        pass


@pytest.fixture
def hub(monkeypatch, tmp_path_factory):
    yield from running_hub(monkeypatch, tmp_path_factory)


def running_hub(monkeypatch, tmp_path_factory):
    """A local hub with ``org/tiny`` and ``org/tiny-xl`` (the embedded bases, with files a pipeline does not load)
    and registry entries fetched from it, until the generator is closed (``hub``; ``test_own_checkpoints``)."""
    h = Hub()
    h.repos["org/tiny"] = tiny_files() | EXTRA
    h.repos["org/tiny-xl"] = tiny_files(TINY.parent / "tiny-sdxl") | {"text_encoder_2/pytorch_model.bin": b"\x80\x02"}
    server = QuietServer(("127.0.0.1", 0), handler_for(h))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    h.url = f"http://127.0.0.1:{server.server_address[1]}"
    # huggingface_hub's own cache: read when it may hold a file, never written; the tests check that
    h.cache = tmp_path_factory.mktemp("hf") / "hub-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(h.cache))
    defaults = checkpoints.REGISTRY["tiny"].defaults
    monkeypatch.setitem(
        checkpoints.REGISTRY,
        "tiny-hub",
        checkpoints.Checkpoint(
            name="tiny-hub",
            description="the tiny base on a local hub",
            layout="diffusers",
            path="tiny-hub",
            source="org/tiny",
            defaults=defaults,
        ),
    )
    monkeypatch.setitem(
        checkpoints.REGISTRY,
        "single-hub",
        checkpoints.Checkpoint(
            name="single-hub",
            description="one .safetensors file",
            layout="single_file",
            path="single-hub.safetensors",
            config="cfg",
            source="org/single",
            defaults=defaults,
        ),
    )
    monkeypatch.setitem(
        checkpoints.REGISTRY,
        "xl-hub",
        checkpoints.Checkpoint(
            name="xl-hub",
            description="the tiny SDXL base on a local hub",
            family="sdxl",
            layout="diffusers",
            path="xl-hub",
            source="org/tiny-xl",
            defaults=defaults,
        ),
    )
    for var in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    yield h
    server.shutdown()
    server.server_close()


def fetch(hub: Hub, dest, name="tiny-hub", **options):
    lines: list[str] = []
    options = {"endpoint": hub.url, "backoff_s": 0} | options
    summary = fetch_checkpoint(name, FetchOptions(**options), dest, log=lines.append)
    return summary, lines


def files_under(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_full_fetch_gives_the_same_bytes_and_skips_what_the_pipeline_does_not_load(hub, tmp_path):
    summary, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED  # nothing of the library's (.cache/huggingface) either
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny-hub"]  # the staging folder is gone
    assert not hub.cache.exists()  # huggingface_hub's cache was not written to
    assert summary.skipped == {
        "build_info.json": "not loaded by the pipeline",
        "v1-5.ckpt": "pickle",
        "unet/diffusion_pytorch_model.bin": "pickle",
        "unet/diffusion_pytorch_model.fp16.safetensors": "fp16 variant",
    }
    assert hub.downloaded() == set(NEEDED) and hub.listings == 1  # nothing skipped was downloaded
    assert summary.commit == COMMIT
    text = summary.text()
    assert f"org/tiny@main (commit {COMMIT[:12]}) -> {tmp_path / 'tiny-hub'}" in text
    assert "12 files fetched, 0 already present, 4 skipped as unneeded" in text
    assert "pickle: unet/diffusion_pytorch_model.bin, v1-5.ckpt" in text
    assert "fp16 variant: unet/diffusion_pytorch_model.fp16.safetensors" in text
    assert "checksums verified for all 12 files (3 sha256, 9 git sha1)" in text
    assert re.search(r"\d+\.\d MB downloaded in [\d.]+s \([\d.]+ MB/s\)", text)
    assert summary.bytes_downloaded == summary.bytes_total == sum(map(len, NEEDED.values()))
    assert f"fetched {UNET} (6.5 MB, sha256 ok)" in lines


def test_an_sdxl_repository_gives_both_text_encoders_and_tokenizers_and_loads(hub, tmp_path):
    """The family decides the folders: an SDXL repo's second text encoder and tokenizer come too (its pickle
    twin does not), and the folder loads as the registry entry's pipeline and draws."""
    summary, _ = fetch(hub, tmp_path, name="xl-hub")
    expected = {k: v for k, v in tiny_files(TINY.parent / "tiny-sdxl").items() if k != "build_info.json"}
    assert files_under(tmp_path / "xl-hub") == expected
    assert {"text_encoder_2/model.safetensors", "tokenizer_2/vocab.json"} <= set(expected)
    assert summary.skipped["text_encoder_2/pytorch_model.bin"] == "pickle"
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("xl-hub"), root=tmp_path)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"


def test_files_of_a_megabyte_and_more_log_progress_lines_every_10_percent(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)  # 10 MB by default: one step here
    _, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    unet_progress = [m for line in lines if (m := progress.LINE.match(line)) and UNET in line]
    percents = [0.0] + [float(m["percent"]) for m in unet_progress]
    assert percents[-1] == 100.0 and percents == sorted(percents)
    assert max(b - a for a, b in itertools.pairwise(percents)) <= 10.1 and len(percents) == 11  # every 10 %
    assert all(m["total"] == str(-(-len(NEEDED[UNET]) // 1024)) for m in unet_progress)  # KB under 10 MB
    big = {path for path, data in NEEDED.items() if len(data) >= hub_download.PROGRESS_FROM_BYTES}
    with_progress = {path for path in NEEDED for line in lines if progress.LINE.match(line) and path in line}
    assert UNET in big and with_progress == big  # files under 1 MB get their "fetched" line only


@pytest.mark.parametrize("chunk, resumed_at", [(2**20, 2 * 2**20), (10 * 2**20, None)])
def test_a_dropped_connection_resumes_from_the_last_complete_chunk(hub, tmp_path, monkeypatch, chunk, resumed_at):
    """huggingface_hub writes in chunks (10 MB by default) and asks again from the last one it wrote: with 1 MB chunks
    a connection dropped after 3,000,000 bytes resumes at 2 MB; with the default, this 6.5 MB file starts over."""
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.faults[("GET", UNET)] = [("drop", 3_000_000)]
    summary, _ = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert hub.gets(UNET) == [None, f"bytes={resumed_at}-" if resumed_at else None]
    assert UNET in summary.fetched


def test_an_interrupted_run_keeps_the_finished_files_and_fetches_the_rest_again(hub, tmp_path):
    """Nothing resumes across runs (huggingface_hub deletes its temporary file when a download fails): the next run
    fetches the unfinished file from its first byte, and only what is missing."""
    hub.faults[("GET", UNET)] = [("drop", 3_000_000), 503]  # the library resumes after the drop; the 503 ends it
    with pytest.raises(WeightsFetchError, match=f"{UNET}: HTTP 503 from .*gave up after 1 attempts; trying again"):
        fetch(hub, tmp_path, attempts=1)
    folder = tmp_path / "tiny-hub"
    assert not (folder / UNET).exists() and list(tmp_path.iterdir()) == [folder]  # no partial file, no staging
    kept = files_under(folder)
    assert kept and kept == {path: NEEDED[path] for path in kept}  # what is there is finished and right

    hub.requests.clear()
    summary, lines = fetch(hub, tmp_path)
    assert files_under(folder) == NEEDED
    assert hub.downloaded() == set(NEEDED) - set(kept) and hub.gets(UNET) == [None]  # from byte 0
    assert sorted(summary.present) == sorted(kept) and f"already present {next(iter(kept))}" in lines


def test_what_a_killed_run_left_in_the_staging_folder_is_not_trusted(hub, tmp_path):
    """A run killed between the library's rename and our check leaves a file and its ``.metadata`` (same commit) that
    hf_hub_download would hand back as is: the staging folder is emptied first."""
    staging = tmp_path / ".tiny-hub.fetching"
    (staging / "unet").mkdir(parents=True)
    (staging / UNET).write_bytes(b"not the unet")
    (staging / ".cache/huggingface/download/unet").mkdir(parents=True)
    (staging / ".cache/huggingface/download" / (UNET + ".metadata")).write_text(f"{COMMIT}\nx\n{time.time()}\n")
    fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED and not staging.exists()


def test_a_second_run_downloads_nothing(hub, tmp_path):
    fetch(hub, tmp_path)
    hub.requests.clear()
    summary, lines = fetch(hub, tmp_path)
    assert hub.requests == [] and summary.fetched == [] and sorted(summary.present) == sorted(NEEDED)
    assert hub.listings == 2  # only the listing, to learn the commit and the hashes
    assert "0 files fetched, 12 already present" in summary.text() and f"already present {UNET}" in lines
    assert summary.bytes_downloaded == 0


@pytest.mark.parametrize("path", [UNET, "unet/config.json"])
def test_a_corrupted_byte_fails_the_checksum_and_leaves_no_file(hub, tmp_path, path):
    """huggingface_hub checks only the length; the listing's sha256 (LFS) or git sha1 catches the flipped byte."""
    hub.corrupt.add(path)
    with pytest.raises(WeightsFetchError, match=re.escape(path) + " failed its checksum check: its (sha256|git-sha1)"):
        fetch(hub, tmp_path)
    folder = tmp_path / "tiny-hub"
    assert not (folder / path).exists() and not (tmp_path / ".tiny-hub.fetching").exists()  # nor in staging
    assert all(data == NEEDED[rel] for rel, data in files_under(folder).items())  # what is there is right


@pytest.mark.parametrize("evil", ["../../evil.txt", "unet/../../evil.safetensors", "ABSOLUTE", "unet//x.json"])
def test_a_hostile_listing_is_refused_before_anything_is_written(hub, tmp_path, evil):
    evil = evil.replace("ABSOLUTE", str(tmp_path / "outside" / "x.json"))
    hub.extra_rows.append({"rfilename": evil, "size": 5, "blobId": git_sha1(b"evil!")})
    with pytest.raises(WeightsFetchError, match="unsafe path"):
        fetch(hub, tmp_path / "a" / "b" / "weights")
    assert list(tmp_path.rglob("*")) == [] and hub.requests == []


def test_a_symlinked_folder_pointing_outside_is_refused(hub, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "weights" / "tiny-hub").mkdir(parents=True)
    (tmp_path / "weights" / "tiny-hub" / "unet").symlink_to(tmp_path / "outside")
    with pytest.raises(WeightsFetchError, match="outside"):
        fetch(hub, tmp_path / "weights")
    assert list((tmp_path / "outside").iterdir()) == [] and hub.requests == []


def test_a_server_that_ignores_range_still_gives_the_right_files(hub, tmp_path, monkeypatch):
    """The library resumes a dropped download with Range; answered with the whole file (200), it starts over."""
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 2**20)
    hub.ignore_range = True
    hub.faults[("GET", UNET)] = [("drop", 3_000_000)]
    summary, _ = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert hub.gets(UNET) == [None, f"bytes={2 * 2**20}-"]
    assert sorted(summary.fetched) == sorted(NEEDED)


def test_5xx_answers_are_retried(hub, tmp_path):
    """The listing and a download's GET are retried here; a HEAD by huggingface_hub itself."""
    hub.faults |= {("GET", "listing"): [503], ("HEAD", VAE): [502], ("GET", UNET): [503]}
    _, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert hub.gets(UNET) == [None, None] and [m for m, p, _ in hub.requests if p == VAE] == ["HEAD", "HEAD", "GET"]
    assert "listing org/tiny: HTTP 503; retrying (1/2)" in lines and f"{UNET}: HTTP 503; retrying (1/2)" in lines


def test_an_unknown_repository_or_revision_is_explained(hub, tmp_path):
    with pytest.raises(WeightsFetchError, match=f"listing org/nope: org/nope is not on {hub.url}, or it is private"):
        fetch(hub, tmp_path, source="org/nope")
    with pytest.raises(WeightsFetchError, match=f"listing org/tiny: org/tiny has no revision 'v9' on {hub.url}"):
        fetch(hub, tmp_path, revision="v9")
    with pytest.raises(WeightsFetchError, match="HTTP 404 from"):
        fetch(hub, tmp_path, endpoint=hub.url + "/not-a-hub")
    assert list(tmp_path.iterdir()) == []


def test_the_fp16_variant_is_taken_under_the_plain_name_when_asked(hub, tmp_path):
    summary, _ = fetch(hub, tmp_path, variant="fp16")
    assert (tmp_path / "tiny-hub" / UNET).read_bytes() == FP16
    assert not (tmp_path / "tiny-hub" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert summary.skipped[UNET] == "replaced by its fp16 variant"


def test_hf_endpoint_and_hf_token_come_from_the_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fetch_checkpoint("tiny-hub", FetchOptions.from_env(backoff_s=0), tmp_path, log=lambda line: None)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert {auth for _, auth in hub.auth} == {"Bearer hf_secret"}
    assert len(hub.auth) == 1 + 2 * len(NEEDED)  # the listing, a HEAD and a GET per file


def test_the_token_does_not_follow_a_redirect_to_a_cdn(hub, tmp_path):
    """huggingface.co redirects LFS files to a CDN on another host: the token must stay with the hub."""
    hub.cdn = hub.url.replace("127.0.0.1", "localhost")  # another origin, same server
    fetch(hub, tmp_path, token="hf_secret")
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    cdn = [auth for path, auth in hub.auth if path.startswith("/cdn/")]
    assert len(cdn) == 3 and set(cdn) == {None}  # the three safetensors, without the token
    assert {auth for path, auth in hub.auth if not path.startswith("/cdn/")} == {"Bearer hf_secret"}


def test_a_single_file_checkpoint_needs_its_config_folder_and_one_chosen_file(hub, tmp_path):
    hub.repos["org/single"] = {"single.safetensors": NEEDED[VAE], "single.ckpt": b"\x80\x02", "other.safetensors": FP16}
    with pytest.raises(WeightsFetchError, match="run `lora-studio weights fetch cfg --dest"):
        fetch(hub, tmp_path, name="single-hub")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "model_index.json").write_bytes(NEEDED["model_index.json"])
    summary, _ = fetch(hub, tmp_path, name="single-hub")  # two candidates: the one named like the repo wins
    assert (tmp_path / "single-hub.safetensors").read_bytes() == NEEDED[VAE]
    assert summary.skipped == {
        "single.ckpt": "not the chosen single file",
        "other.safetensors": "not the chosen single file",
    }
    summary, _ = fetch(hub, tmp_path, name="single-hub", file="other.safetensors")
    assert (tmp_path / "single-hub.safetensors").read_bytes() == FP16
    del hub.repos["org/single"]["single.safetensors"]
    hub.repos["org/single"]["third.safetensors"] = b"x"
    with pytest.raises(WeightsFetchError, match=r"2 top-level .safetensors files \(.*\); choose one with --file"):
        fetch(hub, tmp_path, name="single-hub")
    with pytest.raises(WeightsFetchError, match="pickle"):
        fetch(hub, tmp_path, name="single-hub", file="single.ckpt")


def test_the_cli_fetches_and_prints_the_summary(hub, tmp_path, capsys):
    assert main(["weights", "fetch", "tiny-hub", "--endpoint", hub.url, "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12 files fetched, 0 already present, 4 skipped as unneeded" in out and "checksums verified" in out
    assert files_under(tmp_path / "tiny-hub") == NEEDED


def test_the_cli_explains_unknown_names_and_the_embedded_base(hub, tmp_path, capsys):
    assert main(["weights", "fetch", "nope", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Unknown base model 'nope'. Choose one of: tiny, tiny-xl, sd-1.5,")
    assert "sdxl-1.0" in err and "tiny-hub" in err
    for embedded in ("tiny", "tiny-xl"):
        assert main(["weights", "fetch", embedded, "--dest", str(tmp_path)]) == 2
        assert "ships with the repository" in capsys.readouterr().err
    assert main(["weights", "fetch", "tiny-sd", "--source", "org/tiny", "--dest", str(tmp_path)]) == 2
    assert "weights/tiny-sd belongs to base model 'tiny'" in capsys.readouterr().err
    assert (
        main(["weights", "fetch", "mine", "--source", "org/tiny", "--endpoint", hub.url, "--dest", str(tmp_path)]) == 0
    )
    assert files_under(tmp_path / "mine") == NEEDED
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]
