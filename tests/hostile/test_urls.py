"""Hostile URLs: LoRA files a stranger points the generator at, and training uploads given by URL.

Each fails only its own prediction, fast, with a sentence; refused addresses are never connected to (the
"secret" server, a good LoRA on a port that is not allowed, must see no request); downloads past the cap
or the time limit are cut off (the server sees the client hang up); nothing is left behind.
"""

from __future__ import annotations

import re
import time

import pytest

from lora_core.net.fetch import Fetcher, FetchError, FetchPolicy, system_resolver

from .conftest import GENERATE, TRAIN, Footprint, still_serves, timed
from .servers import wait_for

FILES = "{files}"
SECRET = "127.0.0.1:{secret_port}"
LORA_CASES = {
    "a pickle renamed .safetensors": (f"{FILES}/pickle.safetensors", r"is a pickle .* only \.safetensors LoRAs"),
    "a truncated safetensors": (f"{FILES}/truncated.safetensors", r"truncated or corrupt: tensor .* claims bytes"),
    "a header claiming huge tensors": (
        f"{FILES}/huge-claim.safetensors",
        r"claims bytes 0\.\.68719476736 but the "
        r"file holds 64 bytes",
    ),
    "a LoRA for another base family": (
        f"{FILES}/other-base.safetensors",
        r"does not fit this base model: it was "
        r"made for SDXL",
    ),
    "a 5 GB body, declared": (f"{FILES}/5gb-declared.safetensors", r"the file is 5120 MB; the limit is 4 MB"),
    "a 5 GB body, undeclared": (f"{FILES}/5gb-undeclared.safetensors", r"exceeded the 4 MB limit; aborted"),
    "one byte a second (body)": (f"{FILES}/trickle-body.safetensors", r"took longer than 3s; aborted"),
    "one byte a second (headers)": (f"{FILES}/trickle-headers.safetensors", r"took longer than 3s; aborted"),
    "a redirect loop": (f"{FILES}/loop", r"more than 5 redirects"),
    "a redirect to 10.0.0.1": (f"{FILES}/redirect-to-private", r"'10\.0\.0\.1' resolves to 10\.0\.0\.1, a private"),
    "a redirect to another local port": (f"{FILES}/redirect-to-loopback", r"resolves to 127\.0\.0\.1, a private"),
    "http://127.0.0.1": ("http://127.0.0.1/lora.safetensors", r"resolves to 127\.0\.0\.1, a private or local"),
    "127.0.0.1 on a port not allowed": (f"http://{SECRET}/good.safetensors", r"resolves to 127\.0\.0\.1, a private"),
    "http://169.254.169.254": ("http://169.254.169.254/latest/meta-data/", r"resolves to 169\.254\.169\.254"),
    "http://10.0.0.1": ("http://10.0.0.1/lora.safetensors", r"resolves to 10\.0\.0\.1, a private or local"),
    "http://[::1]": ("http://[::1]/lora.safetensors", r"resolves to ::1, a private or local"),
    "a hostname resolving to a private address": (
        "http://localhost:{secret_port}/good.safetensors",
        r"host 'localhost' resolves to (127\.0\.0\.1|::1), a private",
    ),
    "IPv4-mapped IPv6 loopback": (
        "http://[::ffff:127.0.0.1]:{secret_port}/good.safetensors",
        r"resolves to 127\.0\.0\.1, a private",
    ),
    "loopback as a decimal number": (
        "http://2130706433:{secret_port}/good.safetensors",
        r"resolves to 127\.0\.0\.1, a private",
    ),
    "0.0.0.0 (this host)": ("http://0.0.0.0:{secret_port}/good.safetensors", r"resolves to 0\.0\.0\.0, a private"),
    "NAT64 of loopback": ("http://[64:ff9b::7f00:1]:{secret_port}/good.safetensors", r"resolves to 64:ff9b::7f00:1"),
    "6to4 of 10.0.0.1": ("http://[2002:a00:1::1]/lora.safetensors", r"resolves to 2002:a00:1::1, a private"),
    "ftp:": ("ftp://example.com/lora.safetensors", r"unsupported URL scheme 'ftp'"),
    "gopher: (to a local Redis)": ("gopher://127.0.0.1:6379/_FLUSHALL", r"unsupported URL scheme 'gopher'"),
    "file: when not enabled": ("file:///etc/passwd", r"file:// URLs are disabled on this server"),
    "a file that is not there": (f"{FILES}/missing.safetensors", r"answered HTTP 404"),
}


def _url(template: str, hardened) -> str:
    return template.format(files=hardened.files.url, secret_port=hardened.secret.port)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.medium) if "a second" in c else c for c in LORA_CASES]
)
def test_a_hostile_lora_url_fails_its_own_prediction_fast(hardened, alice, case):
    template, message = LORA_CASES[case]
    url = _url(template, hardened)
    footprint = Footprint(hardened)
    result, seconds = timed(alice, GENERATE, {"prompt": "a photo of <1>", "lora_urls": url, "num_inference_steps": 2})
    assert result["status"] == "failed", result
    assert re.search(message, result["error"]), result["error"]
    assert re.match(r"(FetchError|LoRAFileError): ", result["error"]), result["error"]
    assert seconds < 10, f"{case} took {seconds:.1f}s"
    assert hardened.secret.log.hits == [], "a refused address was connected to"
    assert footprint.strays() == []
    still_serves(alice, hardened.files)


@pytest.mark.parametrize(
    "path",
    [
        "/5gb-declared.safetensors",
        "/5gb-undeclared.safetensors",
        pytest.param("/trickle-body.safetensors", marks=pytest.mark.medium),  # waits out the 3 s deadline
        pytest.param("/trickle-headers.safetensors", marks=pytest.mark.medium),
    ],
)
def test_downloads_past_the_cap_or_the_time_limit_are_cut_off(hardened, alice, path):
    """The server sees the client hang up: the download is aborted, not read to its end in the background."""
    hardened.files.log.hits.clear()
    result, _ = timed(
        alice, GENERATE, {"prompt": "x", "lora_urls": hardened.files.url + path, "num_inference_steps": 2}
    )
    assert result["status"] == "failed"
    hit = hardened.files.log.of(path)[-1]
    wait_for(lambda: hit.finished, 10, f"the server to notice the client left {path}")
    assert hit.closed_by_client and hit.sent < 64 * 2**20, hit
    assert hit.finished - hit.started < 8, hit


def test_parameters_are_checked_before_anything_is_downloaded(hardened, alice):
    hardened.files.log.hits.clear()
    good = f"{hardened.files.url}/good.safetensors"
    result, _ = timed(alice, GENERATE, {"prompt": "<1> and <3>", "lora_urls": f"{good}|{good}"})
    assert result["status"] == "failed" and "mentions <3>, but 2 LoRA URL(s)" in result["error"]
    assert hardened.files.log.hits == []


# ---- training uploads given by URL: fetched by the service itself, never by Cog's server -------------------------


def test_an_upload_url_redirecting_to_a_private_address_is_refused(hardened, alice):
    """Cog's server follows redirects anywhere; the service fetches outside input URLs itself, checking each hop."""
    result, seconds = timed(
        alice, TRAIN, {"instance_data": f"{hardened.files.url}/redirect-to-loopback", "task": "object"}
    )
    assert result["status"] == "failed", result
    assert re.search(r"input instance_data: host '127\.0\.0\.1' resolves to 127\.0\.0\.1, a private", result["error"])
    assert hardened.secret.log.hits == [] and seconds < 10


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://10.0.0.1/photos.zip", r"resolves to 10\.0\.0\.1, a private"),
        ("http://localhost:{secret_port}/photos.zip", r"host 'localhost' resolves to .*, a private"),
        ("ftp://example.com/photos.zip", r"must be an https:// URL, a data: URI or a file uploaded"),
    ],
)
def test_upload_urls_to_private_addresses_are_refused_when_asked(hardened, alice, url, message):
    r = alice(
        "POST",
        f"/v1/models/{TRAIN}/predictions",
        json={"input": {"instance_data": _url(url, hardened), "task": "object"}},
    )
    assert r.status_code == 422 and r.json()["invalid_fields"][0]["field"] == "input.instance_data"
    assert re.search(message, r.json()["detail"]), r.json()
    assert hardened.secret.log.hits == []


def test_an_upload_url_past_the_time_limit_fails_cleanly(hardened, alice):
    """The service's own fetch of an outside upload has the same caps; the training fails with its message."""
    result, _ = timed(alice, TRAIN, {"instance_data": f"{hardened.files.url}/missing.zip", "task": "object"})
    assert result["status"] == "failed" and "input instance_data: the server answered HTTP 404" in result["error"]
    still_serves(alice, hardened.files)


# ---- the same rules in the fetcher itself, with a test resolver for names -------------------------------------

NAMES = {
    "internal.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "v6-private.test": ["fd00::1"],
}


def resolver(host: str, port: int) -> list[str]:
    return NAMES.get(host) or system_resolver(host, port)


@pytest.mark.parametrize(
    "host,address",
    [
        ("internal.test", "10.0.0.1"),
        ("metadata.test", "169.254.169.254"),
        ("mixed.test", "10.0.0.1"),
        ("v6-private.test", "fd00::1"),
    ],
)
def test_a_name_resolving_to_a_private_address_is_refused(tmp_path, host, address):
    """A name with any private address among its answers is refused (a public first answer is no pass)."""
    fetcher = Fetcher(FetchPolicy(cache_dir=tmp_path / "cache"), resolver=resolver, log=lambda _: None)
    started = time.monotonic()
    with pytest.raises(FetchError, match=rf"host '{host}' resolves to {re.escape(address)}, a private"):
        fetcher.fetch(f"http://{host}/lora.safetensors")
    assert time.monotonic() - started < 1
    assert not list((tmp_path / "cache" / "urls").glob("*.json"))  # nothing cached for it


def test_refused_urls_leave_a_bounded_number_of_files(tmp_path):
    """Each distinct URL used to leave a lock file forever: an unbounded pile a stranger could grow at will."""
    fetcher = Fetcher(FetchPolicy(cache_dir=tmp_path / "cache"), resolver=resolver, log=lambda _: None)
    for i in range(1000):
        with pytest.raises(FetchError):
            fetcher.fetch(f"http://internal.test/{i}.safetensors")
    assert len(list((tmp_path / "cache").rglob("*"))) <= 2 + 256
