"""A predictor's named output files handed to Cog's upload URL (``lora_core.net.cog_uploads``), against a real
HTTP server speaking Cog's upload protocol: PUT ``{url}{name}``, the answer's ``Location`` is the output."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lora_core.net import cog_uploads


@pytest.fixture
def store():
    """An upload endpoint keeping what it receives; ``/full/`` answers 507 as the service's does."""
    received: dict[str, tuple[str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/full/"):
                self.send_response(507)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "could not store the output: the file store is full"}')
                return
            received[self.path] = (self.headers["Content-Type"], body)
            self.send_response(201)
            if self.path.startswith("/nolocation/"):
                self.end_headers()
                return
            self.send_header("Location", f"http://files.example/{hashlib.sha256(body).hexdigest()[:8]}?sig=abc")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_files_go_to_the_upload_url_and_come_back_as_its_locations(store, tmp_path, monkeypatch):
    url, received = store
    lora, grid = tmp_path / "lora.safetensors", tmp_path / "scales grid.png"
    lora.write_bytes(b"x" * 100_000)
    grid.write_bytes(b"\x89PNG")
    monkeypatch.setenv(cog_uploads.ENV, f"{url}/uploads/key")  # no trailing slash: one is added, as Cog does
    lines: list[str] = []
    out = cog_uploads.deliver({"lora": lora, "scales_grid": grid}, log=lines.append)
    digest = hashlib.sha256(lora.read_bytes()).hexdigest()[:8]
    assert out["lora"] == f"http://files.example/{digest}"  # the query (a signature) dropped, as Cog does
    assert received["/uploads/key/lora.safetensors"] == ("application/octet-stream", lora.read_bytes())
    assert received["/uploads/key/scales%20grid.png"] == ("image/png", b"\x89PNG")
    assert lines[0].startswith("uploaded lora (0.1 MB) in ")


def test_a_file_named_twice_is_uploaded_once_and_both_name_its_url(store, tmp_path, monkeypatch):
    url, received = store
    first, second = tmp_path / "step400.safetensors", tmp_path / "step800.safetensors"
    first.write_bytes(b"a" * 10)
    second.write_bytes(b"b" * 10)
    monkeypatch.setenv(cog_uploads.ENV, f"{url}/uploads/key/")
    lines: list[str] = []
    out = cog_uploads.deliver({"lora": second, "checkpoints": [first, second]}, log=lines.append)
    assert out["checkpoints"][1] == out["lora"] != out["checkpoints"][0]
    assert sorted(received) == ["/uploads/key/step400.safetensors", "/uploads/key/step800.safetensors"]
    assert len(lines) == 2  # two uploads, not three


def test_without_an_upload_url_the_paths_stay_for_cog_to_inline(tmp_path, monkeypatch):
    monkeypatch.delenv(cog_uploads.ENV, raising=False)
    lora = tmp_path / "lora.safetensors"
    assert cog_uploads.deliver({"lora": lora}) == {"lora": lora}


def test_a_refused_or_unreachable_upload_fails_with_a_sentence(store, tmp_path, monkeypatch):
    url, _ = store
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"x")
    monkeypatch.setenv(cog_uploads.ENV, f"{url}/full/")
    with pytest.raises(cog_uploads.UploadError, match=r"lora.safetensors was refused \(HTTP 507: could not store"):
        cog_uploads.deliver({"lora": lora})
    monkeypatch.setenv(cog_uploads.ENV, "http://127.0.0.1:9/internal/workers/w/uploads/KEY123/")  # nothing listens
    with pytest.raises(cog_uploads.UploadError, match="could not hand the output file lora.safetensors over") as e:
        cog_uploads.deliver({"lora": lora})
    assert "KEY123" not in str(e.value) and "<upload URL>/lora.safetensors" in str(e.value)  # users read errors
    monkeypatch.setenv(cog_uploads.ENV, f"{url}/nolocation/KEY123/")  # never the request's own URL as the output
    with pytest.raises(cog_uploads.UploadError, match="gave no Location") as e:
        cog_uploads.deliver({"lora": lora})
    assert "KEY123" not in str(e.value)
