"""URL fetching against a real HTTP server on 127.0.0.1 (and a test resolver for other names)."""

import base64
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lora_core.net.fetch import Fetcher, FetchError, FetchPolicy, system_resolver

BODY = b"lora-bytes-" * 1000


class Handler(http.server.BaseHTTPRequestHandler):
    counts: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.counts[self.path] = Handler.counts.get(self.path, 0) + 1
        if self.path.startswith("/file"):
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.end_headers()
                return
            time.sleep(0.2 if "slowish" in self.path else 0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/huge-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(5 * 2**30))
            self.end_headers()
        elif self.path == "/huge-undeclared":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(2000):
                    self.wfile.write(b"x" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.5)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/to-internal":
            self.send_response(302)
            self.send_header("Location", "http://internal.test/secret")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def names_resolver(host, port):
    """Names used by the tests; anything else through the system."""
    return {"internal.test": ["10.0.0.1"], "metadata.test": ["169.254.169.254"], "public.test": ["127.0.0.1"]}.get(
        host
    ) or system_resolver(host, port)


def fetcher(tmp_path, **policy):
    options = {"cache_dir": tmp_path / "cache", "allowed_private_hosts": frozenset({"127.0.0.1"}), **policy}
    return Fetcher(FetchPolicy(**options), resolver=names_resolver, log=lambda _: None)


def test_second_fetch_of_a_url_downloads_nothing(server, tmp_path):
    f = fetcher(tmp_path)
    first = f.fetch(f"{server}/file-a")
    second = fetcher(tmp_path).fetch(f"{server}/file-a")  # another process, same disk cache
    assert first.path.read_bytes() == BODY and first.downloaded_bytes == len(BODY)
    assert second.downloaded_bytes == 0 and second.path == first.path
    assert Handler.counts["/file-a"] == 1


def test_concurrent_predictions_fetch_once(server, tmp_path):
    url = f"{server}/file-b-slowish"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fetcher(tmp_path).fetch(url), range(4)))
    assert len({r.sha256 for r in results}) == 1
    assert Handler.counts["/file-b-slowish"] == 1
    assert not list((tmp_path / "cache" / "blobs").glob(".*partial"))


def test_expired_entries_revalidate_with_etag_and_download_nothing(server, tmp_path):
    fetcher(tmp_path, ttl_s=0).fetch(f"{server}/file-c")
    again = fetcher(tmp_path, ttl_s=0).fetch(f"{server}/file-c")
    assert again.downloaded_bytes == 0 and Handler.counts["/file-c"] == 2  # one 200, one 304


def test_lru_bound_evicts_old_blobs(server, tmp_path):
    f = fetcher(tmp_path, cache_max_bytes=len(BODY) + 10)
    old = f.fetch("data:application/octet-stream;base64," + base64.b64encode(b"old" * 100).decode())
    time.sleep(0.01)
    new = f.fetch(f"{server}/file-d")
    assert new.path.exists() and not old.path.exists()


@pytest.mark.parametrize(
    "path,policy,message",
    [
        ("/huge-declared", {}, "the limit is 1024 MB"),
        ("/huge-undeclared", {"max_bytes": 2**20}, "exceeded the 1 MB limit"),
        ("/trickle", {"total_timeout_s": 1.5}, "took longer than 2s|timed out"),
        ("/loop", {}, "more than 5 redirects"),
        ("/to-internal", {}, "resolves to 10.0.0.1"),
        ("/missing", {}, "HTTP 404"),
    ],
)
def test_bad_servers_fail_fast_and_leave_no_partial_file(server, tmp_path, path, policy, message):
    started = time.monotonic()
    with pytest.raises(FetchError, match=message):
        fetcher(tmp_path, **policy).fetch(server + path)
    assert time.monotonic() - started < 10
    assert not [p for p in (tmp_path / "cache" / "blobs").iterdir()]


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://127.0.0.1:9/x", "resolves to 127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "resolves to 169.254.169.254"),
        ("http://10.0.0.1/x", "resolves to 10.0.0.1"),
        ("http://[::1]/x", "resolves to ::1"),
        ("http://internal.test/x", "resolves to 10.0.0.1"),
        ("http://metadata.test/x", "resolves to 169.254.169.254"),
        ("ftp://example.com/x.safetensors", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "file:// URLs are disabled"),
        ("x.safetensors", "unsupported URL scheme"),
    ],
)
def test_private_addresses_and_other_schemes_are_refused(tmp_path, url, message):
    f = Fetcher(FetchPolicy(cache_dir=tmp_path / "cache"), resolver=names_resolver, log=lambda _: None)
    with pytest.raises(FetchError, match=message):
        f.fetch(url)


def test_data_and_enabled_file_urls(tmp_path):
    f = fetcher(tmp_path, allow_file_urls=True)
    data = f.fetch("data:application/octet-stream;base64," + base64.b64encode(b"abc").decode())
    assert data.path.read_bytes() == b"abc"
    local = tmp_path / "my.safetensors"
    local.write_bytes(b"xyz")
    assert f.fetch(local.as_uri()).path == local
    with pytest.raises(FetchError, match="not valid base64"):
        f.fetch("data:application/octet-stream;base64,!!!")


def test_the_policy_comes_from_the_environment_and_a_bad_value_names_its_variable(monkeypatch, tmp_path):
    from lora_core.env_settings import EnvSettingsError
    from lora_core.lora.binding import BindingCache

    monkeypatch.setenv("LORA_STUDIO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LORA_STUDIO_ALLOWED_PRIVATE_HOSTS", " 127.0.0.1, 10.0.0.5:8000 ,")
    monkeypatch.setenv("LORA_STUDIO_ALLOW_FILE_URLS", "1")
    monkeypatch.setenv("LORA_STUDIO_LORA_TIMEOUT_S", "3")
    monkeypatch.setenv("LORA_STUDIO_MAX_LORA_BYTES", "")  # set but empty: the default
    policy = FetchPolicy.from_env()
    assert policy.cache_dir == tmp_path and policy.allow_file_urls and policy.total_timeout_s == 3
    assert policy.allowed_private_hosts == {"127.0.0.1", "10.0.0.5:8000"} and policy.max_bytes == 2**30
    monkeypatch.setenv("LORA_STUDIO_MAX_LORA_BYTES", "lots")
    monkeypatch.setenv("LORA_STUDIO_LORA_READ_TIMEOUT_S", "-1")
    with pytest.raises(EnvSettingsError) as e:
        FetchPolicy.from_env()
    assert "LORA_STUDIO_MAX_LORA_BYTES: Input should be a valid integer" in str(e.value)
    assert "LORA_STUDIO_LORA_READ_TIMEOUT_S: Input should be greater than 0 (got '-1')" in str(e.value)
    monkeypatch.setenv("LORA_STUDIO_ADAPTER_CACHE_MB", "1.5")
    assert BindingCache.from_env().max_bytes == int(1.5 * 2**20)
    monkeypatch.setenv("LORA_STUDIO_ADAPTER_CACHE_MB", "-2")
    with pytest.raises(EnvSettingsError, match="LORA_STUDIO_ADAPTER_CACHE_MB: Input should be greater than or equal"):
        BindingCache.from_env()
