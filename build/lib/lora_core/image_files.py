"""Writing generated images to files in the format the user asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image

OutputFormat = Literal["png", "webp", "jpg"]
_PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}


def save_images(images: list, folder: Path, fmt: OutputFormat = "png", stem: str = "out") -> list[Path]:
    """One file per image, ``{stem}-{i}.{fmt}``; lossy formats at quality 95."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{stem}-{i}.{fmt}"
        options = {} if fmt == "png" else {"quality": 95}
        image.convert("RGB").save(path, _PIL_FORMAT[fmt], **options)
        paths.append(path)
    return paths


def grid(rows: list[list[Image.Image]], scale: int = 2, labels: list[str] | None = None) -> Image.Image:
    """Rows of equally sized images pasted into one picture, each row optionally labelled on its left."""
    from PIL import ImageDraw

    w, h = rows[0][0].size
    margin = 270 if labels else 0
    out = Image.new("RGB", (margin + w * len(rows[0]) * scale, h * len(rows) * scale), "white")
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        if labels:
            draw.text((6, r * h * scale + h * scale // 2 - 6), labels[r], fill="black")
        for c, im in enumerate(row):
            out.paste(
                im.resize((w * scale, h * scale), Image.Resampling.NEAREST), (margin + c * w * scale, r * h * scale)
            )
    return out
