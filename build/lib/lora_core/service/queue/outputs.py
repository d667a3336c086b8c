"""Prediction outputs between the worker, the database and the user.

Stored form: the worker's output with every file replaced by ``{"$file": id}``. Workers hand
files over as URLs of their uploads to the service (``--upload-url``), or as ``data:`` URIs
(a Cog server started without an upload URL); both become file records of the prediction.
What users see: each ``{"$file": id}`` as a signed URL of the service.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

DATA_URI = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.S)


def walk(value: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(value, list):
        return [walk(v, leaf) for v in value]
    if isinstance(value, dict) and set(value) != {"$file"}:
        return {k: walk(v, leaf) for k, v in value.items()}
    return leaf(value)


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """(content type, bytes) of a ``data:`` URI; ``ValueError`` if it is not one."""
    match = DATA_URI.match(uri)
    if not match:
        raise ValueError("not a data: URI")
    payload = uri[match.end() :]
    try:
        data = base64.b64decode(payload, validate=True) if match["b64"] else unquote(payload).encode()
    except (binascii.Error, ValueError):
        raise ValueError("data: URI is not valid base64") from None
    return match["type"] or "application/octet-stream", data


def to_refs(output: Any, upload_prefix: str, uploaded: set[str], save_data: Callable[[str, str, bytes], str]) -> Any:
    """The worker's output with its files as ``{"$file": id}``.

    ``uploaded`` holds the ids of the files this prediction's worker uploaded (the URL's last part);
    a URL under ``upload_prefix`` that is not one of them becomes None (not this prediction's).
    ``save_data(name, content_type, bytes)`` stores a ``data:`` URI and returns its file id; Cog's server
    sends files inside an object output this way, without their names, so the name is the output's
    key (or ``output-N``) with an extension from the bytes.
    """

    def convert(value: Any, hint: str) -> Any:
        if isinstance(value, list):
            return [convert(v, f"{hint}-{i}" if hint != "output" else f"output-{i}") for i, v in enumerate(value)]
        if isinstance(value, dict) and set(value) != {"$file"}:
            return {k: convert(v, k) for k, v in value.items()}
        if isinstance(value, str) and value.startswith(upload_prefix):
            file_id = value[len(upload_prefix) :].split("/")[0].split("?")[0]
            return {"$file": file_id} if file_id in uploaded else None
        if isinstance(value, str) and value.startswith("data:"):
            content_type, data = decode_data_uri(value)
            return {"$file": save_data(hint + _extension(content_type, data), content_type, data)}
        return value

    return convert(output, "output")


def _extension(content_type: str, data: bytes) -> str:
    known = {
        "image/png": ".png",
        "image/webp": ".webp",
        "image/jpeg": ".jpg",
        "application/zip": ".zip",
        "text/plain": ".txt",
        "application/json": ".json",
    }
    if content_type in known:
        return known[content_type]
    if len(data) > 10 and data[8:10] == b'{"' and int.from_bytes(data[:8], "little") < len(data):
        return ".safetensors"  # an 8-byte header length, then the JSON header
    return ".bin"


def render(output: Any, url_of: Callable[[str], str | None]) -> Any:
    """Stored output -> what the API shows: file refs become URLs."""
    return walk(output, lambda v: url_of(v["$file"]) if isinstance(v, dict) else v)


def file_ids(output: Any) -> list[str]:
    found: list[str] = []
    walk(output, lambda v: found.append(v["$file"]) if isinstance(v, dict) else None)
    return found
