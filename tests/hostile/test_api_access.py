"""Who gets in: no token or a wrong one is 401 everywhere; another owner's predictions, trainings, files and
webhook records are 404 (ids are not confirmed to exist); paths under /files and /static cannot climb out;
webhooks to private addresses are refused unless allowed."""

from __future__ import annotations

import http.client
import re

import pytest
import requests

from service_harness import Api

from . import zips
from .conftest import GENERATE, TRAIN, data_uri, still_serves, timed

ENDPOINTS = [
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{GENERATE}"),
    ("GET", "/v1/predictions"),
    ("POST", "/v1/predictions"),
    ("POST", f"/v1/models/{GENERATE}/predictions"),
    ("GET", "/v1/predictions/{id}"),
    ("POST", "/v1/predictions/{id}/cancel"),
    ("POST", "/v1/predictions/{id}/fork"),
    ("DELETE", "/v1/predictions/{id}"),
    ("GET", "/v1/predictions/{id}/webhook-deliveries"),
    ("GET", "/v1/trainings"),
    ("POST", "/v1/trainings"),
    ("DELETE", "/v1/trainings/{training}"),
    ("GET", "/v1/loras"),
    ("GET", "/v1/loras/alice/face"),
    ("PATCH", "/v1/loras/alice/face"),
    ("DELETE", "/v1/loras/alice/face/versions/1"),
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/{file}"),
    ("DELETE", "/v1/files/{file}"),
    ("GET", "/v1/webhooks/default/secret"),
    ("GET", "/v1/tokens"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{token_id}"),
]
BAD_TOKENS = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong": {"Authorization": "Bearer ls_nope"},
    "another scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    "10 kB long": {"Authorization": "Bearer " + "x" * 10_000},
    "SQL in it": {"Authorization": "Bearer ' OR '1'='1"},
    "the worker token's place": {"Authorization": "Bearer internal"},
}


@pytest.fixture(scope="module")
def alices(hardened, alice):
    """A finished prediction, a training, and an uploaded file of Alice's."""
    prediction = still_serves(alice, hardened.files)
    training, _ = timed(alice, TRAIN, {"instance_data": data_uri(zips.make(zips.two_images())), "task": "object"})
    upload = alice("POST", "/v1/files", files={"content": ("secret-notes.txt", b"alice's secret", "text/plain")}).json()
    return {
        "id": prediction["id"],
        "training": training["id"],
        "file": upload["id"],
        "upload": upload,
        "output": prediction["output"][0],
        "token_id": alice("GET", "/v1/tokens").json()["results"][0]["id"],
    }


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_no_token_or_a_wrong_one_is_401_everywhere(hardened, alices, token):
    for method, path in ENDPOINTS:
        r = requests.request(
            method,
            hardened.url + path.format(**alices),
            headers=BAD_TOKENS[token],
            json={"input": {"prompt": "x"}},
            timeout=10,
        )
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.json()["title"] == "Unauthenticated" and "token" in r.json()["detail"]
        assert r.headers.get("WWW-Authenticate") == "Bearer"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/predictions/{id}"),
        ("POST", "/v1/predictions/{id}/cancel"),
        ("POST", "/v1/predictions/{id}/fork"),
        ("GET", "/v1/predictions/{id}/webhook-deliveries"),
        ("GET", "/v1/trainings/{training}"),
        ("POST", "/v1/trainings/{training}/cancel"),
        ("DELETE", "/v1/trainings/{training}"),
        ("DELETE", "/v1/predictions/{id}"),
        ("GET", "/v1/predictions/{training}"),
        ("GET", "/v1/files/{file}"),
        ("DELETE", "/v1/files/{file}"),
        ("DELETE", "/v1/tokens/{token_id}"),
    ],
)
def test_another_owners_things_are_404_to_bob(alice, bob, alices, method, path):
    r = bob(method, path.format(**alices), json={})
    assert r.status_code == 404, (r.status_code, r.text[:200])
    assert "alice" not in r.text and "secret" not in r.text
    # the same answer as for an id that does not exist: no way to tell that it does
    made_up = {k: "z" * len(v) if isinstance(v, str) else v for k, v in alices.items()}
    nothing = bob(method, path.format(**made_up), json={})
    assert (nothing.status_code, nothing.text) == (
        404,
        r.text.replace(alices["id"], made_up["id"])
        .replace(alices["training"], made_up["training"])
        .replace(alices["file"], made_up["file"]),
    )
    # and nothing changed for Alice
    assert alice("GET", f"/v1/files/{alices['file']}").status_code == 200
    assert alice("GET", f"/v1/predictions/{alices['id']}").json()["status"] == "succeeded"


def test_an_owner_lists_makes_and_revokes_their_own_tokens(hardened, alice, bob, alices):
    """One token per machine, each revocable alone: a listing never shows a token, only its first characters."""
    made = alice("POST", "/v1/tokens")
    assert made.status_code == 201 and made.json()["token"].startswith(made.json()["hint"].rstrip("…"))
    second = Api(hardened.url, made.json()["token"])
    listing = second("GET", "/v1/tokens").json()["results"]
    assert made.json()["id"] in {t["id"] for t in listing} and alices["token_id"] in {t["id"] for t in listing}
    assert made.json()["token"] not in second("GET", "/v1/tokens").text
    assert alices["token_id"] not in bob("GET", "/v1/tokens").text  # nor does another owner's listing hold them
    assert alice("DELETE", f"/v1/tokens/{made.json()['id']}").status_code == 204
    assert second("GET", "/v1/predictions").status_code == 401  # revoked at once
    assert alice("GET", "/v1/predictions").status_code == 200  # the other token stands
    assert alice("DELETE", f"/v1/tokens/{made.json()['id']}").status_code == 404


def test_bob_cannot_list_or_download_alices_files(hardened, alice, bob, alices):
    assert alices["id"] not in bob("GET", "/v1/predictions").text
    assert alices["file"] not in bob("GET", "/v1/files").text
    unsigned = alices["upload"]["urls"]["download"].split("?")[0]
    assert bob("GET", unsigned).status_code == 404  # his token is not Alice's
    assert requests.get(unsigned, timeout=10).status_code == 404  # no token, no signature
    assert alice("GET", unsigned).content == b"alice's secret"  # the owner's token works
    # a valid signature for one file does not open another
    other_sig = alices["output"].split("?")[1]
    assert requests.get(f"{unsigned}?{other_sig}", timeout=10).status_code == 404
    assert requests.get(alices["output"], timeout=10).status_code == 200  # the link Alice was given works
    page = requests.get(
        f"{hardened.url}/predictions/{alices['id']}", cookies={"lora_studio_token": "ls_nope"}, timeout=10
    )
    assert page.status_code == 401 and "alice" not in page.text


def test_bob_cannot_use_alices_files_as_inputs(hardened, alice, bob, alices):
    """As a training upload (refused when asked) or as a LoRA URL (the worker is not let in)."""
    r = bob(
        "POST",
        f"/v1/models/{TRAIN}/predictions",
        json={"input": {"instance_data": alices["upload"]["urls"]["get"], "task": "object"}},
    )
    assert r.status_code == 422 and "no such file" in r.json()["invalid_fields"][0]["description"]
    lora = bob.predict(
        GENERATE, {"prompt": "a photo of <1>", "lora_urls": alices["upload"]["urls"]["get"], "num_inference_steps": 2}
    )
    assert lora["status"] == "failed" and "answered HTTP 401" in lora["error"], lora["error"]
    assert "alice's secret" not in lora["logs"] + lora["error"]


TRAVERSALS = [
    "/files/../../etc/passwd",
    "/files/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2f..%2fetc%2fpasswd",
    "/files/{file}/..%2f..%2f..%2fsecret",
    "/files/{file}/../../secret",
    "/files/{file}/%2e%2e%2fsecret",
    "/files/{file}/secret-notes.txt/../../../secret",
    "/files/{file}/..\\..\\secret",
    "/static/../config.py",
    "/static/%2e%2e/config.py",
    "/static/..%2fconfig.py",
    "/static/%2e%2e%2f%2e%2e%2fservice.log",
    "/static/....//....//secret",
    "/files//etc/passwd",
    "/files/{file}/%00secret",
    "/v1/files/..%2f..%2fsecret",
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_paths_cannot_climb_out_of_files_or_static(hardened, alice, alices, raw):
    """Sent byte for byte (no client normalises the dots away), with Alice's token: still nothing."""
    secret = (hardened.data_dir / "secret").read_text().strip()
    connection = http.client.HTTPConnection("127.0.0.1", int(hardened.url.rsplit(":", 1)[1]), timeout=10)
    connection.request("GET", raw.format(**alices), headers={"Authorization": alice.session.headers["Authorization"]})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in (400, 404), (response.status, body[:200])
    assert secret.encode() not in body and b"root:" not in body and b"ServiceConfig" not in body
    assert b"alice's secret" not in body


@pytest.mark.parametrize(
    "hook,message",
    [
        ("http://169.254.169.254/latest/meta-data/", r"resolves to 169\.254\.169\.254, a private"),
        ("http://10.0.0.1/hook", r"resolves to 10\.0\.0\.1, a private"),
        ("http://127.0.0.1/hook", r"resolves to 127\.0\.0\.1, a private"),
        ("http://127.0.0.1:{secret_port}/hook", r"resolves to 127\.0\.0\.1, a private"),
        ("http://[::1]:8080/hook", r"resolves to ::1, a private"),
        ("http://localhost:{secret_port}/hook", r"'localhost' resolves to .*, a private"),
        ("http://[::ffff:10.0.0.1]/hook", r"resolves to 10\.0\.0\.1, a private"),
        ("ftp://example.com/hook", r"must be an http:// or https:// URL"),
        ("file:///etc/passwd", r"must be an http:// or https:// URL"),
        ("http://no-such-host.invalid/hook", r"cannot resolve host 'no-such-host\.invalid'"),
    ],
)
def test_webhooks_to_private_addresses_are_refused(hardened, alice, hook, message):
    r = alice(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        json={"input": {"prompt": "x"}, "webhook": hook.format(secret_port=hardened.secret.port)},
    )
    assert r.status_code == 422, r.text
    assert r.json()["invalid_fields"][0]["field"] == "webhook"
    assert re.search(message, r.json()["detail"]), r.json()["detail"]
    assert hardened.secret.log.hits == []


def test_a_webhook_to_an_allowed_private_port_is_accepted(hardened, alice):
    r = alice(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        json={
            "input": {"prompt": "x", "num_inference_steps": 1},
            "webhook": f"http://127.0.0.1:{hardened.hook_port}/hook",
        },
    )
    assert r.status_code == 201, r.text
    assert alice.wait(r.json()["id"])["status"] == "succeeded"
