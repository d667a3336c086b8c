"""Zip intake: good uploads read right, hostile ones fail fast with their own message."""

import io
import stat
import struct
import zipfile
import zlib

import pytest
from PIL import Image

from lora_core.training.dataset import DatasetError, IntakeLimits, read_instance_zip


def png_bytes(colour=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path, entries, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in entries.items():
            if isinstance(data, zipfile.ZipInfo):
                z.writestr(data, b"target")
            else:
                z.writestr(name, data)
    return path


def three_images():
    return {f"img{i}.png": png_bytes() for i in range(3)}


def test_reads_images_captions_exif_and_alpha_and_skips_junk(tmp_path):
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a phone photo taken upright
    Image.new("RGB", (60, 20), (0, 0, 255)).save(jpeg, "JPEG", exif=exif)
    entries = {
        "photos/a.jpg": jpeg.getvalue(),
        "photos/a.txt": "a photo of my mug\n",
        "b.png": png_bytes((0, 0, 0, 0), mode="RGBA"),  # fully transparent -> white
        "c.webp": png_bytes(),
        "__MACOSX/._a.jpg": b"junk",
        ".hidden.png": b"junk",
        "notes.md": b"hello",
        "folder/": b"",
    }
    logs = []
    data = read_instance_zip(make_zip(tmp_path / "in.zip", entries), log=logs.append)
    by_name = {i.name: i for i in data.images}
    assert sorted(by_name) == ["b.png", "c.webp", "photos/a.jpg"]
    assert by_name["photos/a.jpg"].image.size == (20, 60)  # EXIF orientation applied
    assert by_name["photos/a.jpg"].caption == "a photo of my mug"
    assert by_name["b.png"].image.getpixel((0, 0)) == (255, 255, 255)
    assert all(i.image.mode == "RGB" for i in data.images)
    assert any("1 with caption files" in line for line in logs)
    assert any("notes.md" in line for line in logs)


def test_large_images_are_downscaled_on_intake(tmp_path):
    entries = {f"{i}.png": png_bytes(size=(3000, 1500)) for i in range(3)}
    data = read_instance_zip(make_zip(tmp_path / "big.zip", entries), IntakeLimits(max_side=512))
    assert data.images[0].image.size == (512, 256)


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    truncated = png_bytes(size=(64, 64))[:60]
    entries = {**three_images(), "broken.png": truncated, "empty.jpg": b""}
    logs = []
    data = read_instance_zip(make_zip(tmp_path / "in.zip", entries), log=logs.append)
    assert len(data.images) == 3 and len(data.skipped) == 2
    assert any("broken.png" in line for line in logs)


def _symlink_entry():
    info = zipfile.ZipInfo("link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _bomb_png(width=30000, height=30000):
    """A valid PNG header declaring a huge image, with a tiny compressed body."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


HOSTILE = {
    "not a zip": (b"this is plain text", "not a readable .zip"),
    "empty file": (b"", "empty"),
    "traversal": ({**three_images(), "../evil.png": png_bytes()}, "unsafe path"),
    "absolute": ({**three_images(), "/etc/evil.png": png_bytes()}, "unsafe path"),
    "symlink": ({**three_images(), "link.png": _symlink_entry()}, "symbolic link"),
    "nested zip": ({**three_images(), "more.zip": b"PK\x03\x04"}, "another archive"),
    "too few images": ({"a.png": png_bytes(), "b.png": png_bytes()}, r"at least 3 images .*; found 2 usable"),
    "only non-images": ({"a.txt": b"x", "b.pdf": b"%PDF"}, "found 0 usable"),
    "pixel bomb": ({**three_images(), "bomb.png": _bomb_png()}, "megapixels|enormous"),
    "high ratio member": ({**three_images(), "zeros.png": b"\0" * (50 * 2**20)}, "zip bomb"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_zip_fails_with_its_own_message_and_writes_nothing(tmp_path, case):
    content, message = HOSTILE[case]
    path = tmp_path / "upload.zip"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        make_zip(path, content)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetError, match=message):
        read_instance_zip(path, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_limits_on_entries_and_total_size_are_checked_before_decompressing(tmp_path):
    many = make_zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(20)})
    with pytest.raises(DatasetError, match="20 entries; the limit is 10"):
        read_instance_zip(many, IntakeLimits(max_entries=10))
    with pytest.raises(DatasetError, match="uncompressed"):
        read_instance_zip(make_zip(tmp_path / "big.zip", three_images()), IntakeLimits(max_total_bytes=100))


def test_encrypted_zip_is_refused(tmp_path):
    path = make_zip(tmp_path / "enc.zip", three_images(), compression=zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    # set the "encrypted" flag bit in every local and central header
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := raw.find(sig, start)) != -1:
            raw[i + offset] |= 0x1
            start = i + 4
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="password-protected"):
        read_instance_zip(path)


def test_a_500_megapixel_image_is_refused_from_its_header(tmp_path):
    path = make_zip(tmp_path / "huge.zip", {**three_images(), "huge.png": _bomb_png(25000, 20000)})
    with pytest.raises(DatasetError, match="500 megapixels"):
        read_instance_zip(path)
