"""Photos -> square training examples for a task: crop, resize, loss mask, caption."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lora_core.training.dataset import InstanceData
from lora_core.training.faces import Box, find_face
from lora_core.training.presets import TaskPreset

CONCEPT_PLACEHOLDERS = ("<1>", "TOK")


class NoFaceError(ValueError):
    """A face task got photos in which no face was found."""


@dataclass
class Example:
    name: str
    image: Image.Image  # square, resolution x resolution, RGB
    mask: np.ndarray | None  # (resolution, resolution) float32 in [0, 1], 1 on the face
    caption: str


def _square_around(box: Box, size: tuple[int, int], grow: float) -> tuple[int, int, int, int]:
    """A square of ``grow`` x the box's larger side, centred on it, kept inside the image."""
    w, h = size
    side = min(int(max(box.w, box.h) * grow), w, h)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    left = int(min(max(cx - side / 2, 0), w - side))
    top = int(min(max(cy - side / 2, 0), h - side))
    return left, top, left + side, top + side


def _center_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side


def _covering_squares(size: tuple[int, int], most: int = 3) -> list[tuple[int, int, int, int]]:
    """Squares along the long side that together cover the whole image (a style is everywhere)."""
    w, h = size
    side = min(w, h)
    n = min(most, -(-max(w, h) // side))
    starts = [round(i * (max(w, h) - side) / max(n - 1, 1)) for i in range(n)]
    return [(s, 0, s + side, side) if w >= h else (0, s, side, s + side) for s in starts]


def caption_for(user_caption: str | None, preset: TaskPreset, tokens: str) -> str:
    """The task template, or the user's caption with ``<1>``/``TOK`` (or a leading template) naming the concept."""
    template = preset.caption_template.format(tokens=tokens)
    if not user_caption:
        return template
    if any(p in user_caption for p in CONCEPT_PLACEHOLDERS):
        for p in CONCEPT_PLACEHOLDERS:
            user_caption = user_caption.replace(p, tokens)
        return user_caption
    return f"{template}, {user_caption}"


def prepare_examples(data: InstanceData, preset: TaskPreset, resolution: int, tokens: str, log=print) -> list[Example]:
    """One example per photo; for ``face``, photos without a face are dropped (and logged)."""
    examples = []
    no_face = []
    for item in data.images:
        image, mask = item.image, None
        caption = caption_for(item.caption, preset, tokens)
        if preset.crop == "whole":
            for crop in _covering_squares(image.size):
                square = image.crop(crop).resize((resolution, resolution), Image.Resampling.LANCZOS)
                examples.append(Example(item.name, square, None, caption))
            continue
        if preset.crop == "face":
            box = find_face(image)
            if box is None:
                no_face.append(item.name)
                continue
            crop = _square_around(box, image.size, grow=2.2)
            scale = resolution / (crop[2] - crop[0])
            mask_img = Image.new("L", (resolution, resolution), 0)
            fx, fy = (box.x - crop[0]) * scale, (box.y - crop[1]) * scale
            ImageDraw.Draw(mask_img).ellipse(
                [fx, fy - 0.15 * box.h * scale, fx + box.w * scale, fy + 1.1 * box.h * scale], fill=255
            )
            mask = np.asarray(mask_img, np.float32) / 255.0
        else:
            crop = _center_square(image.size)
        square = image.crop(crop).resize((resolution, resolution), Image.Resampling.LANCZOS)
        examples.append(Example(item.name, square, mask if preset.mask_loss else None, caption))
    if no_face:
        log(f"no face found in {len(no_face)} of {len(data.images)} photos, not used: {', '.join(no_face[:10])}")
    if not examples:
        raise NoFaceError(
            f"No face was found in any of the {len(data.images)} photos. For the face task, upload "
            "photos where the face is clearly visible and facing the camera, or choose task=object."
        )
    return examples
