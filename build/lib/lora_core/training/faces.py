"""Finding faces offline with OpenCV's bundled Haar cascade (no model download)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from PIL import Image


class Box(NamedTuple):
    x: int
    y: int
    w: int
    h: int


@functools.lru_cache(maxsize=1)
def _detector():
    import cv2

    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def find_face(image: Image.Image) -> Box | None:
    """The largest frontal face, or None. Detection runs on a copy at most 640 px wide."""
    import cv2

    scale = min(1.0, 640 / max(image.size))
    small = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)))
    gray = cv2.cvtColor(np.asarray(small.convert("RGB")), cv2.COLOR_RGB2GRAY)
    found = _detector().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda b: b[2] * b[3])
    return Box(*(round(v / scale) for v in (x, y, w, h)))
