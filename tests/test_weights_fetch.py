"""``lora-studio weights fetch`` against a local HTTP server that answers like the Hugging Face hub.

The hub serves the committed tiny base (``weights/tiny-sd``) as repository ``org/tiny``, plus files a pipeline
never loads (a pickle UNet, a top-level ``.ckpt``, an fp16 twin), so every test compares real bytes.
"""

import hashlib
import itertools
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest

from lora_core import progress
from lora_core.base import checkpoints
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


def tiny_files() -> dict[str, bytes]:
    return {p.relative_to(TINY).as_posix(): p.read_bytes() for p in sorted(TINY.rglob("*")) if p.is_file()}


NEEDED = {k: v for k, v in tiny_files().items() if k != "build_info.json"}  # the pipeline never reads build_info


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    """Repositories of files, the tree API and ``resolve`` with ``Range``; records what the client asked for."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.extra_rows: list[dict] = []
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of each download
        self.auth: list[str | None] = []
        self.ignore_range = False
        self.drop_after: dict[str, int] = {}  # path → bytes sent before its next answer is cut off
        self.fail_once: dict[str, int] = {}  # path → HTTP status of its next answer
        self.corrupt: set[str] = set()
        self.lock = threading.Lock()
        self.url = ""

    def listing(self, repo: str) -> list[dict]:
        files = self.repos[repo]
        rows = [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": d}
            for d in sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        ]
        for path, data in files.items():
            row = {"type": "file", "path": path, "size": len(data)}
            if path.endswith((".safetensors", ".bin", ".ckpt")):  # LFS: sha256 of the content
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}"
                row |= {
                    "oid": git_sha1(pointer.encode()),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
                }
            else:
                row["oid"] = git_sha1(data)
            rows.append(row)
        return rows + self.extra_rows

    def ranges(self, path: str) -> list[tuple[int, int]]:
        """The ``[start, end)`` asked for by each request of ``path`` (a request without Range is the whole file)."""
        size = len(NEEDED.get(path, b""))
        out = []
        for p, header in self.requests:
            if p == path:
                a, b = re.fullmatch(r"bytes=(\d+)-(\d*)", header).groups() if header else (0, size - 1)
                out.append((int(a), int(b) + 1 if b != "" else size))
        return out


def handler_for(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hub.auth.append(self.headers.get("Authorization"))
            tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/?]+)\?recursive=true", self.path)
            if tree and tree[1] in hub.repos:
                return self.answer(200, json.dumps(hub.listing(tree[1])).encode(), "application/json")
            file = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path)
            path = unquote(file[3]) if file else ""
            data = hub.repos.get(file[1], {}).get(path) if file else None
            if data is None:
                return self.answer(404, b"not found")
            header = self.headers.get("Range")
            with hub.lock:
                hub.requests.append((path, header))
                fail, cut = hub.fail_once.pop(path, None), hub.drop_after.pop(path, None)
            if fail:
                return self.answer(fail, b"try again")
            if path in hub.corrupt:
                data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :]
            start, end, status = 0, len(data), 200
            if header and not hub.ignore_range:
                a, b = re.fullmatch(r"bytes=(\d+)-(\d*)", header).groups()
                start, end, status = int(a), min(len(data), int(b) + 1 if b else len(data)), 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            body = data[start:end]
            if cut is not None:  # a dropped connection: fewer bytes than announced
                self.wfile.write(body[:cut])
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # dropped connections are on purpose
        pass


@pytest.fixture
def hub(monkeypatch):
    h = Hub()
    h.repos["org/tiny"] = tiny_files() | EXTRA
    server = QuietServer(("127.0.0.1", 0), handler_for(h))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    h.url = f"http://127.0.0.1:{server.server_address[1]}"
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
    for var in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    yield h
    server.shutdown()
    server.server_close()


def fetch(hub: Hub, dest, name="tiny-hub", **options):
    lines: list[str] = []
    summary = fetch_checkpoint(name, FetchOptions(endpoint=hub.url, backoff_s=0, **options), dest, log=lines.append)
    return summary, lines


def files_under(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_full_fetch_gives_the_same_bytes_and_skips_what_the_pipeline_does_not_load(hub, tmp_path):
    summary, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED  # no .partial or sidecar left either
    assert summary.skipped == {
        "build_info.json": "not loaded by the pipeline",
        "v1-5.ckpt": "pickle",
        "unet/diffusion_pytorch_model.bin": "pickle",
        "unet/diffusion_pytorch_model.fp16.safetensors": "fp16 variant",
    }
    assert {path for path, _ in hub.requests} == set(NEEDED)  # nothing skipped was downloaded
    text = summary.text()
    assert f"-> {tmp_path / 'tiny-hub'}" in text
    assert "12 files fetched, 0 already present, 4 skipped as unneeded" in text
    assert "pickle: unet/diffusion_pytorch_model.bin, v1-5.ckpt" in text
    assert "fp16 variant: unet/diffusion_pytorch_model.fp16.safetensors" in text
    assert "checksums verified for all 12 files (3 sha256, 9 git sha1)" in text
    assert re.search(r"\d+\.\d MB downloaded in [\d.]+s \([\d.]+ MB/s\)", text)
    assert summary.bytes_downloaded == summary.bytes_total == sum(map(len, NEEDED.values()))
    assert f"fetched {UNET} (6.5 MB, sha256 ok)" in lines


def test_big_files_come_in_parallel_ranges_with_progress_lines(hub, tmp_path):
    summary, lines = fetch(hub, tmp_path, split_above_bytes=100_000, part_bytes=2**20)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    size = len(NEEDED[UNET])
    ranges = sorted(hub.ranges(UNET))
    assert len(ranges) == 7 and all(h for p, h in hub.requests if p == UNET)  # 6.5 MB in 1 MB ranges
    assert ranges[0][0] == 0 and ranges[-1][1] == size and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert len(hub.ranges(VAE)) == 4  # under 4 MB: one range per connection
    assert len(hub.ranges("unet/config.json")) == 1  # small files: one stream
    unet_progress = [m for line in lines if (m := progress.LINE.match(line)) and UNET in line]
    assert [float(m["percent"]) for m in unet_progress][-1] == 100.0
    percents = [0.0] + [float(m["percent"]) for m in unet_progress]
    assert max(b - a for a, b in itertools.pairwise(percents)) <= 10.1 and len(percents) == 11  # every 10 %
    assert all(m["total"] == str(-(-len(NEEDED[UNET]) // 1024)) for m in unet_progress)  # KB under 10 MB


def test_a_dropped_connection_is_retried_from_the_last_byte_received(hub, tmp_path):
    hub.drop_after[UNET] = 3_000_000
    summary, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    (first, second) = hub.ranges(UNET)
    assert first == (0, len(NEEDED[UNET])) and 0 < second[0] <= 3_000_000 and second[1] == len(NEEDED[UNET])
    assert any(line.startswith(f"{UNET}: ") and "retrying" in line for line in lines)


def test_an_interrupted_ranged_download_resumes_only_the_missing_bytes(hub, tmp_path):
    hub.drop_after[UNET] = 300_000
    with pytest.raises(WeightsFetchError, match=f"{UNET}: .*run the command again"):
        fetch(hub, tmp_path, split_above_bytes=100_000, part_bytes=2**20, attempts=1, connections=2)
    folder, size = tmp_path / "tiny-hub", len(NEEDED[UNET])
    assert not (folder / UNET).exists()
    sidecar = json.loads((folder / (UNET + ".partial.json")).read_text())
    done = [tuple(r) for r in sidecar["done"]]
    assert sidecar["size"] == size and 0 < sum(b - a for a, b in done) < size

    hub.requests.clear()
    summary, _ = fetch(hub, tmp_path, split_above_bytes=100_000, part_bytes=2**20)
    assert files_under(folder) == NEEDED
    asked = hub.ranges(UNET)
    assert sum(b - a for a, b in asked) == size - sum(b - a for a, b in done)
    assert not any(a < d1 and d0 < b for a, b in asked for d0, d1 in done)  # no byte fetched twice
    assert UNET in summary.fetched


def test_a_partial_file_continues_with_a_range_request(hub, tmp_path):
    half = len(NEEDED[VAE]) // 2
    (tmp_path / "tiny-hub" / "vae").mkdir(parents=True)
    (tmp_path / "tiny-hub" / (VAE + ".partial")).write_bytes(NEEDED[VAE][:half])
    summary, lines = fetch(hub, tmp_path)
    assert hub.requests.count((VAE, f"bytes={half}-{len(NEEDED[VAE]) - 1}")) == 1
    assert hub.ranges(VAE) == [(half, len(NEEDED[VAE]))]
    assert any(line.startswith(f"resuming {VAE}") for line in lines)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert summary.bytes_downloaded == summary.bytes_total - half


def test_a_second_run_downloads_nothing(hub, tmp_path):
    fetch(hub, tmp_path)
    hub.requests.clear()
    summary, lines = fetch(hub, tmp_path)
    assert hub.requests == [] and summary.fetched == [] and sorted(summary.present) == sorted(NEEDED)
    assert "0 files fetched, 12 already present" in summary.text() and f"already present {UNET}" in lines
    assert summary.bytes_downloaded == 0


@pytest.mark.parametrize("path, split", [(UNET, 64 * 2**20), (UNET, 100_000), ("unet/config.json", 64 * 2**20)])
def test_a_corrupted_byte_fails_the_checksum_and_leaves_no_file(hub, tmp_path, path, split):
    hub.corrupt.add(path)
    with pytest.raises(WeightsFetchError, match=re.escape(path) + " failed its checksum check: its (sha256|git-sha1)"):
        fetch(hub, tmp_path, split_above_bytes=split)
    leftovers = [p.name for p in (tmp_path / "tiny-hub" / "unet").iterdir()]
    assert not any(name.startswith(path.split("/")[1]) for name in leftovers), leftovers


@pytest.mark.parametrize("evil", ["../../evil.txt", "unet/../../evil.safetensors", "ABSOLUTE", "unet//x.json"])
def test_a_hostile_listing_is_refused_before_anything_is_written(hub, tmp_path, evil):
    evil = evil.replace("ABSOLUTE", str(tmp_path / "outside" / "x.json"))
    hub.extra_rows.append({"type": "file", "path": evil, "size": 5, "oid": git_sha1(b"evil!")})
    with pytest.raises(WeightsFetchError, match="unsafe path"):
        fetch(hub, tmp_path / "a" / "b" / "weights")
    assert list(tmp_path.rglob("*")) == [] and hub.requests == []


def test_a_symlinked_folder_pointing_outside_is_refused(hub, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "weights" / "tiny-hub").mkdir(parents=True)
    (tmp_path / "weights" / "tiny-hub" / "unet").symlink_to(tmp_path / "outside")
    with pytest.raises(WeightsFetchError, match="outside"):
        fetch(hub, tmp_path / "weights")
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_server_that_ignores_range_still_gives_the_right_files(hub, tmp_path):
    hub.ignore_range = True
    vocab = "tokenizer/vocab.json"
    (tmp_path / "tiny-hub" / "tokenizer").mkdir(parents=True)
    (tmp_path / "tiny-hub" / (vocab + ".partial")).write_bytes(NEEDED[vocab][:1000])
    summary, lines = fetch(hub, tmp_path, split_above_bytes=100_000)
    assert files_under(tmp_path / "tiny-hub") == NEEDED
    assert f"{UNET}: the server ignores Range requests; fetching it as one stream" in lines
    assert sorted(summary.fetched) == sorted(NEEDED)


def test_5xx_answers_are_retried(hub, tmp_path):
    hub.fail_once[UNET] = 503
    _, lines = fetch(hub, tmp_path)
    assert files_under(tmp_path / "tiny-hub") == NEEDED and len(hub.ranges(UNET)) == 2
    assert f"{UNET}: HTTP 503; retrying (1/2)" in lines


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
    assert set(hub.auth) == {"Bearer hf_secret"}


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
    assert err.startswith("error: Unknown base model 'nope'. Choose one of: tiny, sd-1.5,") and "tiny-hub" in err
    assert main(["weights", "fetch", "tiny", "--dest", str(tmp_path)]) == 2
    assert "ships with the repository" in capsys.readouterr().err
    assert main(["weights", "fetch", "tiny-sd", "--source", "org/tiny", "--dest", str(tmp_path)]) == 2
    assert "weights/tiny-sd belongs to base model 'tiny'" in capsys.readouterr().err
    assert (
        main(["weights", "fetch", "mine", "--source", "org/tiny", "--endpoint", hub.url, "--dest", str(tmp_path)]) == 0
    )
    assert files_under(tmp_path / "mine") == NEEDED
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]
