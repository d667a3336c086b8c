"""The procedural world the embedded tiny base model is trained on.

Small enough to draw thousands of captioned 64x64 images in seconds, rich enough that
a LoRA has something to build on: colours, shapes, patterns (stripes, dots, checks,
gradients), two-colour objects, two objects per image, and captions in the forms
people write ("a photo of a red circle on a blue striped background").

Some combinations never occur anywhere in the world (``HELD_OUT``): LoRA tests train
on them, because the base cannot already draw them from its own vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
_DRAW = SIZE * 2  # draw at 2x, then downsample: anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
WHITE = (245, 245, 245)
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": WHITE,
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star")
FILL_PATTERNS = ("striped", "dotted", "checkered")
BACKGROUND_PATTERNS = (*FILL_PATTERNS, "gradient")
PREFIXES = ("a photo of ", "a picture of ", "an image of ")

# Combinations that never appear, in any role (object, fill, background, pattern).
HELD_OUT_OBJECTS: frozenset[tuple[str, str]] = frozenset({("purple", "star"), ("orange", "triangle")})
HELD_OUT_PATTERNS: frozenset[tuple[str, str]] = frozenset({("dotted", "orange"), ("checkered", "purple")})
HELD_OUT = {
    "objects (colour, shape)": sorted(HELD_OUT_OBJECTS),
    "patterns (pattern, colour)": sorted(HELD_OUT_PATTERNS),
}

# Words that are single tokens in the tiny tokenizer although no image shows them:
# captions users write for their own LoRAs ("a photo of a dog in the style of ...").
EXTRA_WORDS = (
    "the in with style person face portrait dog cat toy painting drawing man woman "
    "of by art sks pattern background photo picture image"
).split()


@dataclass(frozen=True)
class Fill:
    """How an object or background is painted: one colour, or a pattern of two."""

    colour: str  # a key of COLOURS or PLAIN_BACKGROUNDS
    pattern: str | None = None  # one of BACKGROUND_PATTERNS
    second: str = "white"  # the pattern's other colour


def _rgb(name: str) -> tuple[int, int, int]:
    return COLOURS.get(name) or PLAIN_BACKGROUNDS[name]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _held_out_fill(fill: Fill) -> bool:
    names = {fill.colour, fill.second}
    return any(fill.pattern == p and c in names for p, c in HELD_OUT_PATTERNS)


class WorldSampler:
    """Draws scenes from one seeded random stream: same seed, same images and captions."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:_DRAW, 0:_DRAW].astype(np.float32)
        self._yy, self._xx = yy, xx

    # ---- random choices -------------------------------------------------
    def _pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def _jitter(self, rgb: tuple[int, int, int]) -> np.ndarray:
        return np.clip(np.array(rgb, np.float32) + self.rng.uniform(-15, 15, 3), 0, 255)

    def _object_fill(self, shape: str, avoid: set[str]) -> Fill:
        while True:
            colour = self._pick([c for c in COLOURS if c not in avoid])
            if (colour, shape) in HELD_OUT_OBJECTS:
                continue
            if self.rng.random() < 0.75:
                return Fill(colour)
            second = self._pick([c for c in (*COLOURS, "white") if c != colour and c not in avoid])
            if (second, shape) in HELD_OUT_OBJECTS:
                continue
            fill = Fill(colour, self._pick(FILL_PATTERNS), second)
            if not _held_out_fill(fill):
                return fill

    def _background(self, avoid: set[str]) -> Fill:
        if self.rng.random() < 0.7:
            return Fill(self._pick(list(PLAIN_BACKGROUNDS)))
        while True:
            fill = Fill(self._pick([c for c in COLOURS if c not in avoid]), self._pick(BACKGROUND_PATTERNS))
            if not _held_out_fill(fill):
                return fill

    # ---- painting -------------------------------------------------------
    def _paint(self, fill: Fill) -> np.ndarray:
        """A full canvas (H, W, 3) painted with ``fill``."""
        a, b = self._jitter(_rgb(fill.colour)), self._jitter(_rgb(fill.second))
        xx, yy = self._xx, self._yy
        if fill.pattern is None:
            return np.broadcast_to(a, (_DRAW, _DRAW, 3)).copy()
        if fill.pattern == "gradient":
            angle = self.rng.uniform(0, 2 * np.pi)
            t = (xx * np.cos(angle) + yy * np.sin(angle)) / _DRAW
            t = ((t - t.min()) / (t.max() - t.min()))[..., None]
            return a * (1 - t) + b * t
        if fill.pattern == "striped":
            angle = self._pick([0.0, np.pi / 2, np.pi / 4, -np.pi / 4])
            period = self.rng.uniform(14, 24)
            mask = ((xx * np.cos(angle) + yy * np.sin(angle)) / period) % 1.0 < 0.5
        elif fill.pattern == "dotted":
            period = self.rng.uniform(14, 20)
            ox, oy = self.rng.uniform(0, period, 2)
            dx, dy = (xx + ox) % period - period / 2, (yy + oy) % period - period / 2
            mask = dx**2 + dy**2 < (period * 0.28) ** 2
        else:  # checkered
            cell = self.rng.uniform(10, 18)
            ox, oy = self.rng.uniform(0, cell, 2)
            mask = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2) == 0
        return np.where(mask[..., None], a, b)

    def _shape_mask(self, shape: str, cx: float, cy: float, size: float) -> np.ndarray:
        img = Image.new("L", (_DRAW, _DRAW), 0)
        draw = ImageDraw.Draw(img)
        r = size / 2
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif shape == "square":
            r *= 0.9
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=255)
        else:  # star
            pts = []
            for k in range(10):
                rad = r if k % 2 == 0 else r * 0.45
                ang = -np.pi / 2 + k * np.pi / 5
                pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
            draw.polygon(pts, fill=255)
        return np.asarray(img, np.float32)[..., None] / 255.0

    # ---- captions -------------------------------------------------------
    @staticmethod
    def _describe(fill: Fill) -> str:
        if fill.pattern is None:
            return fill.colour
        if fill.pattern == "gradient":
            return f"{fill.colour} gradient"
        if fill.second == "white":
            return f"{fill.colour} {fill.pattern}"
        return f"{fill.colour} and {fill.second} {fill.pattern}"

    def _with_prefix(self, phrase: str) -> str:
        u = self.rng.random()
        if u < 0.35:
            return self._pick(PREFIXES) + phrase
        if u < 0.45 and phrase.startswith(("a ", "an ")):
            return phrase.split(" ", 1)[1]  # "red circle"
        return phrase

    # ---- scenes ---------------------------------------------------------
    def scene(self) -> tuple[np.ndarray, str]:
        """One 64x64 RGB uint8 image and its caption."""
        u = self.rng.random()
        if u < 0.12:  # a pattern filling the frame
            while True:
                colour = self._pick(list(COLOURS))
                pattern = self._pick(BACKGROUND_PATTERNS)
                second = (
                    "white"
                    if pattern == "gradient" or self.rng.random() < 0.5
                    else self._pick([c for c in COLOURS if c != colour])
                )
                fill = Fill(colour, pattern, second)
                if not _held_out_fill(fill):
                    break
            canvas = self._paint(fill)
            caption = self._with_prefix(_article(f"{self._describe(fill)} pattern"))
            return self._finish(canvas), caption

        n_objects = 2 if u < 0.27 else 1
        objects: list[tuple[str, Fill]] = []
        used: set[str] = set()
        for _ in range(n_objects):
            shape = self._pick(SHAPES)
            fill = self._object_fill(shape, used)
            used |= {fill.colour, fill.second} - {"white"}
            objects.append((shape, fill))
        background = self._background(used)
        canvas = self._paint(background)

        for i, (shape, fill) in enumerate(objects):
            if n_objects == 1:
                size = self.rng.uniform(44, 100)
                lo, hi = size / 2 + 2, _DRAW - size / 2 - 2
                cx, cy = self.rng.uniform(lo, hi, 2)
            else:  # left object first in the caption
                size = self.rng.uniform(36, 56)
                half = _DRAW / 2
                cx = self.rng.uniform(size / 2 + 2, half - size / 2) + i * half
                cy = self.rng.uniform(size / 2 + 2, _DRAW - size / 2 - 2)
            mask = self._shape_mask(shape, cx, cy, size)
            canvas = canvas * (1 - mask) + self._paint(fill) * mask

        phrase = " and ".join(_article(f"{self._describe(f)} {s}") for s, f in objects)
        plain = background.pattern is None
        if not plain or self.rng.random() < 0.5:  # patterned backgrounds are always named
            phrase += f" on {_article(self._describe(background))} background"
        return self._finish(canvas), self._with_prefix(phrase)

    @staticmethod
    def _finish(canvas: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def sample_world(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` images (N, 64, 64, 3) uint8 and their captions, deterministic in ``seed``."""
    sampler = WorldSampler(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    captions = []
    for i in range(n):
        images[i], caption = sampler.scene()
        captions.append(caption)
    return images, captions


def render_object(shape: str, fill: Fill, background: Fill, seed: int) -> np.ndarray:
    """One object on a background, ignoring HELD_OUT: how tests draw held-out concepts."""
    sampler = WorldSampler(seed)
    canvas = sampler._paint(background)
    size = sampler.rng.uniform(56, 100)
    lo, hi = size / 2 + 2, _DRAW - size / 2 - 2
    cx, cy = sampler.rng.uniform(lo, hi, 2)
    mask = sampler._shape_mask(shape, cx, cy, size)
    return sampler._finish(canvas * (1 - mask) + sampler._paint(fill) * mask)


def concept_images(shape: str, colour: str, n: int, first_seed: int) -> list[Image.Image]:
    """``n`` pictures of one object (held out or not) on white, gray and black in turn: LoRA training data."""
    backgrounds = ("white", "gray", "black")
    return [
        Image.fromarray(render_object(shape, Fill(colour), Fill(backgrounds[i % 3]), seed=first_seed + i))
        for i in range(n)
    ]


def vocabulary_corpus(captions: list[str]) -> list[str]:
    """Every word the tokenizer must keep whole: the world's words and EXTRA_WORDS."""
    words = set(EXTRA_WORDS) | {"a", "an", "and", "on"}
    words |= set(COLOURS) | set(PLAIN_BACKGROUNDS) | set(SHAPES) | set(BACKGROUND_PATTERNS)
    for caption in captions:
        words |= set(caption.split())
    return sorted(words)
