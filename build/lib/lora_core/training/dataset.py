"""Safe intake of a user's ``instance_data`` zip: images (and caption files) in memory.

Nothing is extracted to disk, so no entry name can write anywhere; every limit is
checked on the zip's directory before a byte is decompressed, and again while reading
(declared sizes can lie). Problems that make the upload unusable raise ``DatasetError``
with a sentence naming the entry; a single unreadable image is skipped and reported.
"""

from __future__ import annotations

import io
import posixpath
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SKIPPED_NAMES = ("__MACOSX/", "Thumbs.db", "desktop.ini")


class DatasetError(ValueError):
    """The upload cannot be used; the message tells the person what to fix."""


@dataclass(frozen=True)
class IntakeLimits:
    max_zip_bytes: int = 500 * 2**20
    max_entries: int = 500
    max_total_bytes: int = 1 * 2**30  # uncompressed, all entries
    max_entry_bytes: int = 100 * 2**20
    max_ratio: float = 200.0  # uncompressed / compressed, per entry
    max_pixels: int = 50_000_000  # per image, read from its header before decoding
    max_side: int = 1024  # images are downscaled to this on intake, bounding memory
    min_images: int = 3
    max_images: int = 100


@dataclass
class InstanceImage:
    name: str
    image: Image.Image  # RGB, upright (EXIF applied), alpha flattened on white
    caption: str | None = None


@dataclass
class InstanceData:
    images: list[InstanceImage]
    skipped: list[str] = field(default_factory=list)  # "name: reason"

    @property
    def captioned(self) -> int:
        return sum(i.caption is not None for i in self.images)


def _check_entry(info: zipfile.ZipInfo, limits: IntakeLimits) -> None:
    name = info.filename
    if info.flag_bits & 0x1:
        raise DatasetError(f"The zip is password-protected ({name!r}); upload an unencrypted zip.")
    normal = posixpath.normpath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or normal.split("/")[0] == "..":
        raise DatasetError(f"The zip contains an unsafe path {name!r} (absolute or outside the archive).")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetError(f"The zip contains a symbolic link {name!r}; include the files themselves.")
    if name.lower().endswith((".zip", ".tar", ".gz", ".7z", ".rar")):
        raise DatasetError(f"The zip contains another archive {name!r}; put the images directly in one zip.")
    if info.file_size > limits.max_entry_bytes:
        raise DatasetError(
            f"{name!r} is {info.file_size / 2**20:.0f} MB uncompressed; "
            f"the limit per file is {limits.max_entry_bytes / 2**20:.0f} MB."
        )
    if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise DatasetError(
            f"{name!r} decompresses {info.file_size / max(info.compress_size, 1):.0f}x (a zip bomb?); refusing it."
        )


def _is_skipped(name: str) -> bool:
    base = posixpath.basename(name.rstrip("/"))
    return name.endswith("/") or base.startswith(".") or any(s in name for s in SKIPPED_NAMES)


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes, never more than it declared (a lying header is a corrupt zip)."""
    with archive.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise DatasetError(f"{info.filename!r} is larger than the zip declares; the zip is corrupt.")
    return data


def decode_image(data: bytes, name: str, limits: IntakeLimits) -> Image.Image:
    """Upright RGB, alpha on white, at most ``max_side``; pixel bombs refused from the header."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own guard, past ~179 megapixels
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(pixels.group(1)) / 1e6:.0f} megapixels)" if pixels else ""
        raise DatasetError(
            f"{name!r} declares an enormous image{size}; the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        ) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise DatasetError(
            f"{name!r} is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        )
    image.draft("RGB", (limits.max_side, limits.max_side))  # JPEG: decode at reduced scale
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    image = image.convert("RGB")
    image.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    return image


def read_instance_zip(
    path: Path, limits: IntakeLimits = IntakeLimits(), log: Callable[[str], None] = print
) -> InstanceData:
    """Images and captions of ``path``; raises ``DatasetError`` before any decoding if the zip is unsafe."""
    size = path.stat().st_size
    if size > limits.max_zip_bytes:
        raise DatasetError(f"The zip is {size / 2**20:.0f} MB; the limit is {limits.max_zip_bytes / 2**20:.0f} MB.")
    if size == 0:
        raise DatasetError("The uploaded file is empty.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise DatasetError("The upload is not a readable .zip file; zip your images and upload the .zip.") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > limits.max_entries:
            raise DatasetError(f"The zip has {len(entries)} entries; the limit is {limits.max_entries}.")
        for info in entries:
            _check_entry(info, limits)
        total = sum(i.file_size for i in entries)
        if total > limits.max_total_bytes:
            raise DatasetError(
                f"The zip holds {total / 2**20:.0f} MB uncompressed; "
                f"the limit is {limits.max_total_bytes / 2**20:.0f} MB."
            )
        files = {posixpath.normpath(i.filename.replace("\\", "/")): i for i in entries if not _is_skipped(i.filename)}
        image_names = sorted(n for n in files if n.lower().endswith(IMAGE_SUFFIXES))
        if len(image_names) > limits.max_images:
            raise DatasetError(f"The zip has {len(image_names)} images; the limit is {limits.max_images}.")
        data = InstanceData(images=[])
        try:
            for name in image_names:
                try:
                    image = decode_image(_read(archive, files[name]), name, limits)
                except DatasetError:
                    raise
                except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
                    data.skipped.append(f"{name}: not a readable image ({type(e).__name__})")
                    continue
                caption_info = files.get(posixpath.splitext(name)[0] + ".txt")
                caption = None
                if caption_info is not None:
                    caption = _read(archive, caption_info).decode("utf-8", errors="replace").strip()[:500] or None
                data.images.append(InstanceImage(name=name, image=image, caption=caption))
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
            raise DatasetError(f"The zip is corrupt ({e}); re-create it and upload again.") from None
    for line in data.skipped:
        log(f"skipped {line}")
    others = sorted(set(files) - set(image_names) - {posixpath.splitext(n)[0] + ".txt" for n in image_names})
    if others:
        log(
            f"ignored {len(others)} file(s) that are not images: "
            f"{', '.join(others[:5])}{' …' if len(others) > 5 else ''}"
        )
    if len(data.images) < limits.min_images:
        found = f"found {len(data.images)} usable image(s)" + (f", skipped {len(data.skipped)}" if data.skipped else "")
        raise DatasetError(f"Training needs at least {limits.min_images} images (jpg, png or webp); {found}.")
    log(
        f"read {len(data.images)} images"
        + (
            f", {data.captioned} with caption files"
            if data.captioned
            else ", no caption files (captions come from the task template)"
        )
    )
    return data
