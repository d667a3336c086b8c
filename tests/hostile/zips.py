"""Hostile zip uploads, made in memory: each one a way a stranger's .zip can try to hurt the trainer."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

from PIL import Image


def png(colour=(200, 30, 30), size=(48, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size=(256, 256)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels, with a tiny body: a pixel bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def make(entries: dict, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries.items():
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"img0.png")
            else:
                z.writestr(name, data)
    return buf.getvalue()


def two_images() -> dict:
    return {f"img{i}.png": png((40 * i, 90, 200)) for i in range(2)}


def three_images() -> dict:
    return {f"img{i}.png": png((40 * i, 90, 200)) for i in range(3)}


def symlink_entry(name: str = "link.png") -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _patch_central(raw: bytes, sizes: dict[str, tuple[int, int]]) -> bytes:
    """Rewrite the sizes the central directory declares for some entries: (compressed, uncompressed)."""
    out = bytearray(raw)
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) != -1:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        name = bytes(out[at + 46 : at + 46 + name_len]).decode()
        if name in sizes:
            struct.pack_into("<II", out, at + 20, *sizes[name])
        at += 4
    return bytes(out)


def encrypted() -> bytes:
    """Three images with the "encrypted" flag set in every header (what a password-protected zip has)."""
    raw = bytearray(make(three_images(), zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = 0
        while (at := raw.find(signature, at)) != -1:
            raw[at + offset] |= 0x1
            at += 4
    return bytes(raw)


def declares_huge_member() -> bytes:
    """A 1 KB zip whose directory says one member unpacks to 3.7 GB."""
    return _patch_central(make({**three_images(), "big.png": b"x" * 100}), {"big.png": (20, 4_000_000_000)})


def declares_huge_total() -> bytes:
    """Twelve members of 95 MB each by the directory (each under the per-file limit and ratio): 1.1 GB in all."""
    entries = {f"part{i}.png": b"y" * 100 for i in range(12)}
    return _patch_central(make(entries), {f"part{i}.png": (1_000_000, 95 * 2**20) for i in range(12)})


def high_ratio_member() -> bytes:
    """50 MB of zeros deflated to ~50 KB: the ratio of a zip bomb."""
    return make({**three_images(), "zeros.png": b"\0" * (50 * 2**20)})


def lies_small() -> bytes:
    """A member declaring 1,000 bytes that inflates to 20 MB (the local and central headers both lie)."""
    raw = make({**three_images(), "liar.png": b"\0" * (20 * 2**20)})
    out = bytearray(_patch_central(raw, {}))
    at = 0
    while (at := out.find(b"PK\x03\x04", at)) != -1:  # local header: sizes at +18 (compressed) and +22 (size)
        name_len = struct.unpack_from("<H", out, at + 26)[0]
        if bytes(out[at + 30 : at + 30 + name_len]) == b"liar.png":
            struct.pack_into("<I", out, at + 22, 1000)
        at += 4
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) != -1:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        if bytes(out[at + 46 : at + 46 + name_len]) == b"liar.png":
            struct.pack_into("<I", out, at + 24, 1000)
        at += 4
    return bytes(out)


def many_entries(n: int = 501) -> bytes:
    return make({f"{i:04d}.txt": b"" for i in range(n)}, zipfile.ZIP_STORED)


def truncated_jpeg() -> bytes:
    whole = jpeg()
    return make({**two_images(), "truncated.jpg": whole[: len(whole) // 2]})
