"""A predictor's named output files, handed to Cog's upload URL by the predictor itself, streamed.

Cog's server (coglet 0.23) uploads a file output only when it is the whole output or an item of a list: the
``Path`` fields of an object output (the training's ``lora``, ``lora_a1111``, ``scales_grid``) go out base64-encoded
inside the final webhook's JSON, whatever ``--upload-url`` says (coglet's ``output.rs``). A LoRA of a few hundred
MB then becomes a JSON string a third larger, held whole by Cog's server, the agent and the service. So a predictor
with an object output puts its files to the same upload URL itself, by the same protocol (``PUT {url}{name}``, the
answer's ``Location`` is the output's value, its query dropped), reading each file from disk in blocks; the object
then holds URLs, as on Replicate. Without an upload URL (``cog predict``, a bare ``cog.server.http``) the fields stay
``Path``s and Cog inlines them as before.

``COG_UPLOAD_URL`` is where the upload URL lives in the Cog server's environment (``workers/cog_serve`` exports
it to the predictor's process; the URL carries the worker's key, so it never goes on a command line).
"""

from __future__ import annotations

import mimetypes
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests

ENV = "COG_UPLOAD_URL"
TIMEOUT_S = (10.0, 900.0)  # connect; then the whole file is stored (an S3 store of a big LoRA) before the answer


class UploadError(RuntimeError):
    """An output file the upload URL did not take: the prediction fails with this sentence."""


def upload_url() -> str | None:
    return os.environ.get(ENV) or None


def put_file(endpoint: str, path: Path, session: requests.Session | None = None) -> str:
    """PUT one file to ``{endpoint}{its name}`` as Cog's server does; the stored file's URL (``Location``)."""
    url = endpoint if endpoint.endswith("/") else endpoint + "/"
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    with path.open("rb") as body:  # a file object: requests sends Content-Length and streams it
        try:
            r = (session or requests).put(
                url + quote(path.name), data=body, headers={"Content-Type": content_type}, timeout=TIMEOUT_S
            )
        except requests.RequestException as e:  # its text names the URL, whose path holds the worker's key
            reason = str(e).replace(url, "<upload URL>/").replace(urlsplit(url).path, "<upload URL>/")
            raise UploadError(
                f"could not hand the output file {path.name} over: {reason or type(e).__name__}"
            ) from None
    if not r.ok:
        detail = ""
        try:
            detail = f": {r.json().get('detail')}"
        except (ValueError, AttributeError):  # not JSON, or not an object
            pass
        raise UploadError(f"the output file {path.name} was refused (HTTP {r.status_code}{detail})")
    if not r.headers.get("Location"):  # the request's own URL holds the worker's key: never an output
        raise UploadError(f"the output file {path.name} was stored but the upload URL gave no Location for it")
    return urlunsplit(urlsplit(r.headers["Location"])._replace(query=""))


def deliver(
    files: Mapping[str, Path | list[Path]], log: Callable[[str], None] = print
) -> dict[str, Path | str | list[Path] | list[str]]:
    """Each named file (or list of files) as its uploaded URL when an upload URL is set, else as the path (Cog
    inlines it). A file named twice (a training's ``lora`` is also one of its ``checkpoints``) is uploaded once and
    both name the same URL: stored once, removed once."""
    endpoint = upload_url()
    if endpoint is None:
        return dict(files)
    out: dict[str, Path | str | list[Path] | list[str]] = {}
    uploaded: dict[Path, str] = {}
    with requests.Session() as session:

        def one(name: str, path: Path) -> str:
            key = Path(path).resolve()
            if key not in uploaded:
                started, size = time.monotonic(), path.stat().st_size
                uploaded[key] = put_file(endpoint, Path(path), session)
                log(f"uploaded {name} ({size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
            return uploaded[key]

        for name, value in files.items():
            if isinstance(value, list):
                out[name] = [one(f"{name}[{i}]", p) for i, p in enumerate(value)]
            else:
                out[name] = one(name, value)
    return out
