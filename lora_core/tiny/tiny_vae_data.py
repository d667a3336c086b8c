"""Pictures beyond the tiny world, so its VAE reconstructs any colour and texture, not only the world's six.

The world (``tiny_world``) paints with six colours and three greys; a VAE trained only on it maps every other
colour to the nearest of them, and no LoRA on the base can then learn a concept in its own colours. These
pictures cover the RGB cube (flat colours, gradients, two-colour patterns in random colours) and real photo
crops that ship offline inside installed packages (scikit-image's and matplotlib's sample images). Photos are
split into ``TRAIN_PHOTOS`` and ``HELD_OUT_PHOTOS``: the held-out ones are what the round-trip test measures, and
every photo the presets are tested with (astronaut, chelsea, coffee; brick, grass, gravel) is held out, so
those tests stay honest.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image

from lora_core.tiny.tiny_world import SIZE

TRAIN_PHOTOS = (
    "rocket",
    "colorwheel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "logo",
    "stereo_motorcycle",
    "grace_hopper",
    "camera",
    "coins",
    "moon",
)
HELD_OUT_PHOTOS = ("astronaut", "chelsea", "coffee", "brick", "grass", "gravel")


@cache
def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from an installed package (no network: only images its wheel carries)."""
    if name == "grace_hopper":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return np.asarray(Image.open(path).convert("RGB"))
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo pairs
        image = image[0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def photo_crop(rng: np.random.Generator, names: tuple[str, ...] = TRAIN_PHOTOS) -> np.ndarray:
    """A random square crop of a random photo, 1/8 to all of its short side, resized to SIZE (sometimes flipped)."""
    return named_photo_crop(rng, names)[1]


def named_photo_crop(rng: np.random.Generator, names: tuple[str, ...]) -> tuple[str, np.ndarray]:
    """``photo_crop`` and the name of the photo it came from."""
    name = names[rng.integers(len(names))]
    image = photo(name)
    h, w = image.shape[:2]
    side = int(rng.uniform(0.125, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(image[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    out = np.asarray(crop)
    return name, out[:, ::-1].copy() if rng.random() < 0.5 else out


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _two(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    return np.where(mask[..., None], a, b)


def _grid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    return y * np.cos(angle) + x * np.sin(angle), y * -np.sin(angle) + x * np.cos(angle)


def flat(rng: np.random.Generator) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (SIZE, SIZE, 3)).copy()


def gradient(rng: np.random.Generator) -> np.ndarray:
    u, _ = _grid(rng)
    t = ((u - u.min()) / (u.max() - u.min()))[..., None]
    return _colour(rng) * (1 - t) + _colour(rng) * t


def stripes(rng: np.random.Generator) -> np.ndarray:
    u, _ = _grid(rng)
    return _two(rng, (u / rng.uniform(3, 16)) % 2 < 1)


def checks(rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(rng)
    period = rng.uniform(4, 16)
    return _two(rng, ((u // period) + (v // period)) % 2 == 0)


def dots(rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(rng)
    period = rng.uniform(6, 16)
    return _two(rng, ((u % period - period / 2) ** 2 + (v % period - period / 2) ** 2) < (period * 0.3) ** 2)


def disc(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx, r = rng.uniform(8, SIZE - 8, 2).tolist() + [rng.uniform(5, SIZE / 2)]
    return _two(rng, (y - cy) ** 2 + (x - cx) ** 2 < r**2)


def noise(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise: many colours and soft edges in one picture."""
    small = rng.integers(0, 256, (int(rng.integers(2, 9)),) * 2 + (3,)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32)


SYNTHETIC: tuple[Callable[[np.random.Generator], np.ndarray], ...] = (
    flat,
    gradient,
    stripes,
    checks,
    dots,
    disc,
    noise,
)


def colour_pictures(n: int, seed: int, photo_share: float = 0.4) -> np.ndarray:
    """``n`` SIZE x SIZE RGB uint8 pictures, ``photo_share`` of them photo crops and the rest synthetic in random
    colours. Same ``n`` and ``seed``, same pictures."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        if rng.random() < photo_share:
            out[i] = photo_crop(rng)
        else:
            picture = SYNTHETIC[rng.integers(len(SYNTHETIC))](rng)
            out[i] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
    return out


def held_out_crops(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Crops of the photos no training ever sees (what the round-trip figures are measured on), and the photo each
    came from."""
    rng = np.random.default_rng(seed)
    names, crops = zip(*(named_photo_crop(rng, HELD_OUT_PHOTOS) for _ in range(n)), strict=True)
    return np.stack(crops), list(names)


def saturated_colours(n: int, seed: int) -> np.ndarray:
    """Flat pictures of random saturated colours (HSV saturation and value ≥ 0.6): where a swapped hue shows."""
    import colorsys

    rng = np.random.default_rng(seed)
    rgb = [colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)) for _ in range(n)]
    return np.stack([np.broadcast_to(np.rint(np.array(c) * 255), (SIZE, SIZE, 3)) for c in rgb]).astype(np.uint8)
