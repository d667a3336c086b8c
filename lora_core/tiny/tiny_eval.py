"""Measures of what the tiny base draws: dominant colour, shape, colour histograms.

Plain numpy on PIL images, so tests, the build report and the README grid share one
definition of "the image is red" or "the LoRA moved half-way".
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from lora_core.tiny import tiny_world

_PALETTE_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in tiny_world.COLOURS.items()}


def _hsv(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("HSV"), np.float32) / 255.0


def _palette_counts(image: Image.Image) -> tuple[np.ndarray, int]:
    """Vivid pixels per palette colour (nearest hue), and the image's pixel count."""
    hsv = _hsv(image).reshape(-1, 3)
    vivid = hsv[(hsv[:, 1] > 0.4) & (hsv[:, 2] > 0.3)]
    hues = np.array(list(_PALETTE_HUES.values()))
    distance = np.abs(vivid[:, :1] - hues[None, :])
    distance = np.minimum(distance, 1 - distance)  # hue is circular
    return np.bincount(distance.argmin(axis=1), minlength=len(hues)), len(hsv)


def dominant_colour(image: Image.Image, min_fraction: float = 0.03) -> str | None:
    """The palette colour covering most vivid pixels, or None if hardly any pixel is vivid."""
    counts, total = _palette_counts(image)
    if counts.sum() < min_fraction * total:
        return None
    return list(_PALETTE_HUES)[int(counts.argmax())]


def palette_histogram(images: list[Image.Image]) -> np.ndarray:
    """Share of each palette colour among the vivid pixels of a set of images (backgrounds excluded)."""
    counts = np.sum([_palette_counts(im)[0] for im in images], axis=0)
    return counts / max(counts.sum(), 1)


def palette_distance(a: list[Image.Image], b: list[Image.Image]) -> float:
    """Total-variation distance of two sets' palette histograms: 0 same colours, 1 disjoint."""
    return 0.5 * float(np.abs(palette_histogram(a) - palette_histogram(b)).sum())


def object_mask(image: Image.Image, background: tuple[int, int, int] = tiny_world.WHITE) -> np.ndarray:
    """Pixels that differ clearly from a plain background."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    return np.abs(rgb - np.array(background, np.float32)).max(axis=2) > 60


def shape_features(image: Image.Image) -> np.ndarray | None:
    """(fill ratio of the bounding box, vertical centre of mass within it): tell the four shapes apart."""
    mask = object_mask(image)
    if mask.sum() < 30:
        return None
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = mask.sum() / ((y1 - y0) * (x1 - x0))
    centre = (ys.mean() - y0) / (y1 - y0)
    return np.array([fill, centre])


def shape_prototypes(seeds: range = range(8)) -> dict[str, np.ndarray]:
    """Mean features of each shape as the world draws it (solid red on white)."""
    out = {}
    for shape in tiny_world.SHAPES:
        feats = [
            shape_features(
                Image.fromarray(tiny_world.render_object(shape, tiny_world.Fill("red"), tiny_world.Fill("white"), seed))
            )
            for seed in seeds
        ]
        out[shape] = np.mean([f for f in feats if f is not None], axis=0)
    return out


def classify_shape(image: Image.Image, prototypes: dict[str, np.ndarray]) -> str | None:
    feats = shape_features(image)
    if feats is None:
        return None
    return min(prototypes, key=lambda s: float(np.sum((prototypes[s] - feats) ** 2)))


def mean_abs_error(originals: np.ndarray, copies: np.ndarray) -> float:
    """Mean |difference| per channel in 0..255 between two uint8 (N, H, W, 3) stacks."""
    return float(np.abs(originals.astype(np.float32) - copies.astype(np.float32)).mean())


def codec_baselines(pictures: np.ndarray) -> dict[str, float]:
    """What plain codecs keep of uint8 (N, 64, 64, 3) pictures, as ``mean_abs_error``: the yardsticks the VAE's
    round trip is read against, measured on the same pictures. An 18x18 thumbnail (bicubic back up) holds 972 numbers,
    about the 16x16x4 latents' 1,024; JPEG at quality 30 takes about a kilobyte and a quarter a picture."""
    import io

    from PIL import Image

    size = pictures.shape[1]
    thumbs, jpegs, sizes = [], [], []
    for picture in pictures:
        image = Image.fromarray(picture)
        small = image.resize((18, 18), Image.Resampling.LANCZOS)
        thumbs.append(np.asarray(small.resize((size, size), Image.Resampling.BICUBIC)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=30)
        sizes.append(buffer.tell())
        jpegs.append(np.asarray(Image.open(buffer).convert("RGB")))
    return {
        "thumbnail_18": round(mean_abs_error(pictures, np.stack(thumbs)), 2),
        "jpeg_q30": round(mean_abs_error(pictures, np.stack(jpegs)), 2),
        "jpeg_q30_bytes": round(float(np.mean(sizes))),
    }


def hue_errors_deg(originals: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """Per picture, the hue distance in degrees between the mean colours of a flat original and its copy: a
    swapped colour family (cyan drawn blue, purple drawn green) is tens of degrees."""

    def hues(stack: np.ndarray) -> np.ndarray:
        means = stack.reshape(len(stack), -1, 3).mean(axis=1) / 255
        return np.array([colorsys.rgb_to_hsv(*m)[0] for m in means])

    d = np.abs(hues(originals) - hues(copies))
    return np.minimum(d, 1 - d) * 360
