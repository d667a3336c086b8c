"""Model-free distances between sets of images: colours (RGB histograms) and pixels (paired or nearest).

Plain numpy on PIL images, with no palette or model behind them, so that a training's report, the tiny base's
build report and the tests share one definition of "these images have the photos' colours" or "the LoRA moved
the base's picture this far". A learned image embedding (CLIP, DINO) would judge photos better, but no such model
ships with the service; these measures hold on any base, and the report says which measure it used.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _rgb(image: Image.Image, size: int | None = None) -> np.ndarray:
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32)


def _histogram(pixels: np.ndarray, bins: int) -> np.ndarray:
    """Share of (N, 3) RGB ``pixels`` in each of ``bins``³ cells, each pixel shared between the 8 cells around it."""
    centre = (np.arange(bins) + 0.5) * 256 / bins
    counts = np.zeros((bins,) * 3)
    pos = np.clip((pixels - centre[0]) / (256 / bins), 0, bins - 1)  # 0 at the first centre, bins-1 at the last
    low = np.minimum(pos.astype(np.int64), bins - 2) if bins > 1 else np.zeros_like(pos, np.int64)
    frac = pos - low
    for corner in range(8):
        up = [(corner >> c) & 1 for c in range(3)]
        weight = np.prod([frac[:, c] if up[c] else 1 - frac[:, c] for c in range(3)], axis=0)
        np.add.at(counts, tuple(low[:, c] + up[c] for c in range(3)), weight)
    return (counts / max(counts.sum(), 1e-12)).ravel()


def rgb_histogram(images: list[Image.Image], bins: int = 4) -> np.ndarray:
    """Share of all pixels in each of ``bins``³ RGB cells: any colour counts, not only the world's palette.

    Each pixel is shared between the eight cells around it (linear in each channel, between cell centres), so a
    colour one step either side of a cell edge counts as nearly the same colour; with hard cells a pink whose
    green is 60 and its copy at 68 were as different as pink and blue."""
    return _histogram(np.concatenate([_rgb(im).reshape(-1, 3) for im in images]), bins)


def rgb_histogram_distance(a: list[Image.Image], b: list[Image.Image], bins: int = 4) -> float:
    """Total-variation distance of two sets' RGB histograms: 0 same colours, 1 disjoint."""
    return 0.5 * float(np.abs(rgb_histogram(a, bins) - rgb_histogram(b, bins)).sum())


def mean_abs_pixel_change(a: list[Image.Image], b: list[Image.Image]) -> float:
    """Mean |difference| in 0..255 between paired images."""
    return float(np.mean([np.abs(_rgb(x) - _rgb(y)).mean() for x, y in zip(a, b, strict=True)]))


def nearest_mae(images: list[Image.Image], targets: list[Image.Image], size: int | None = None) -> float:
    """Mean over ``images`` of the mean |pixel error| (0..255) to the closest of ``targets`` (layout and texture);
    ``size``: compare at that square size (photos and drawings of different sizes)."""
    t = np.stack([_rgb(im, size) for im in targets])
    return float(np.mean([np.abs(t - _rgb(im, size)).mean(axis=(1, 2, 3)).min() for im in images]))


def subject_mask(image: Image.Image, size: int = 64, threshold: float = 40.0, frame: int = 3) -> np.ndarray:
    """Pixels that stand out from the picture's background, taken as the median colour of its outer ``frame``
    pixels: the subject of a photo on a plain or blurred background, at ``size``² (boolean)."""
    rgb = _rgb(image, size)
    border = np.concatenate(
        [
            rgb[:frame].reshape(-1, 3),
            rgb[-frame:].reshape(-1, 3),
            rgb[:, :frame].reshape(-1, 3),
            rgb[:, -frame:].reshape(-1, 3),
        ]
    )
    return np.abs(rgb - np.median(border, axis=0)).max(axis=2) > threshold


def subject_colour_distance(a: list[Image.Image], b: list[Image.Image], size: int = 64, bins: int = 4) -> float:
    """Total-variation distance of the two sets' subject colours (``subject_mask``'s pixels): what the concept
    looks like, whatever background each picture drew. 1 when a set has no subject at all."""

    def pixels(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate([_rgb(im, size)[subject_mask(im, size)] for im in images])

    pa, pb = pixels(a), pixels(b)
    if not len(pa) or not len(pb):
        return 1.0
    return 0.5 * float(np.abs(_histogram(pa, bins) - _histogram(pb, bins)).sum())


def subject_area(images: list[Image.Image], size: int = 64) -> float:
    """Mean share of each picture the subject covers (``subject_mask``)."""
    return float(np.mean([subject_mask(im, size).mean() for im in images]))
