"""Which content type a stored file gets, and whether a browser may show it inline.

The security property: nothing a user uploads can run as a script on the service's origin. So a stored type is
one bare ``type/subtype`` from a short list (no parameters, no CR/LF: a header can never be split or confused), an
image type only when the bytes are that image, and only raster images whose first bytes match are ever served
inline. Everything else is an attachment, and every file response carries a sandboxing CSP (``headers``), so even
a browser that ignores both renders it in an opaque origin without the page's cookies.
"""

from __future__ import annotations

import re

OCTET_STREAM = "application/octet-stream"

# The raster images browsers decode without running anything, by their magic bytes.
_IMAGE_MAGIC: dict[str, tuple[tuple[int, bytes], ...]] = {
    "image/png": ((0, b"\x89PNG\r\n\x1a\n"),),
    "image/jpeg": ((0, b"\xff\xd8\xff"),),
    "image/gif": ((0, b"GIF87a"), (0, b"GIF89a")),
    "image/webp": ((0, b"RIFF"), (8, b"WEBP")),
}
INLINE = frozenset(_IMAGE_MAGIC)

# What may be stored as declared (always served as an attachment unless it is an inline image); anything else is
# stored as application/octet-stream. SVG and HTML are absent on purpose: they are documents that run scripts.
STORABLE = INLINE | {
    OCTET_STREAM,
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/gzip",
    "application/json",
    "text/plain",
    "text/csv",
    "application/x-safetensors",
}
_BARE = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,63}/[a-z0-9][a-z0-9.+_-]{0,63}")


def image_type(head: bytes) -> str | None:
    """The inline image type these first bytes are, if any."""
    for kind, marks in _IMAGE_MAGIC.items():
        if all(head[offset : offset + len(magic)] == magic for offset, magic in marks):
            return kind
    return None


def stored_type(declared: str | None, head: bytes) -> str:
    """The type to store for a file whose uploader (or worker) declared ``declared`` and whose bytes start with
    ``head``: bare, from ``STORABLE``, and an image type only if the bytes are that image."""
    bare = (declared or "").split(";", 1)[0].strip().lower()
    if not _BARE.fullmatch(bare) or bare not in STORABLE:
        bare = OCTET_STREAM
    if bare in INLINE and image_type(head) != bare:
        return image_type(head) or OCTET_STREAM
    return bare


def served_inline(stored: str, head: bytes) -> bool:
    """Shown in the browser (an ``<img>`` of the pages, a click on an output) rather than downloaded: only a raster
    image whose bytes match its stored type, checked again when served whatever the database says."""
    return stored in INLINE and image_type(head) == stored


def headers(stored: str, head: bytes, name: str) -> dict[str, str]:
    """The security headers of a file response."""
    out = {
        # Even if a browser rendered the bytes as a document, it runs in an opaque origin: no scripts, no cookies,
        # no requests anywhere.
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if not served_inline(stored, head):
        out["Content-Disposition"] = f'attachment; filename="{_ascii_name(name)}"'
    return out


def _ascii_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120] or "file"
