"""Prior images: what the base draws for everyday prompts, mixed into every training batch so that prompts without
the new tokens keep the base's look (DreamBooth's prior preservation, its "class images").

Too few and the LoRA learns those few pictures instead of the base's habits: with 16 on the tiny base, prompts
without the token drifted 0.37-1.13 of a seed change (12 runs), with 96 0.24-0.43. Their seeds are fixed, so a set
depends only on the base, the size and the library versions: it is drawn once and kept, in memory (a warm worker's
next training starts without redrawing it) and on disk beside the LoRA cache (a restarted worker, or the next
process on the machine, reads it back). 96 images took 30 s on a 2-core CPU; reading them back, milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from lora_core.base import checkpoints, sampling
from lora_core.progress import Progress
from lora_core.training import preprocess

_KEPT_IN_MEMORY = 2
_memory: dict[str, list[preprocess.Example]] = {}


def cache_dir() -> Path:
    """Beside the LoRA download cache (``LORA_STUDIO_CACHE_DIR``): ``…/priors``."""
    loras = Path(os.environ.get("LORA_STUDIO_CACHE_DIR", Path.home() / ".cache" / "lora-studio" / "loras"))
    return loras.parent / "priors"


def prior_examples(
    pipe,
    checkpoint: checkpoints.Checkpoint,
    resolution: int,
    base_hash: str,
    count: int | None = None,
    folder: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[preprocess.Example]:
    """``count`` images (default ``checkpoint.prior_images``) spread over its prior prompts, at ``resolution``;
    from the caches when there. Drawing them logs progress lines (a minute or more of a GPU training)."""
    import diffusers
    import torch

    count = checkpoint.prior_images if count is None else count
    prompts = len(checkpoint.prior_prompts)
    per_prompt = [count // prompts + (i < count % prompts) for i in range(prompts)]  # the first prompts get the rest
    recipe = {
        "base": base_hash,
        "checkpoint": checkpoint.name,
        "resolution": resolution,
        "prompts": list(checkpoint.prior_prompts),
        "per_prompt": per_prompt,
        "defaults": checkpoint.defaults.model_dump(),
        "seeds": "1000*(i+1)+k",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
    if key in _memory:
        _memory[key] = _memory.pop(key)  # most recently used last
        return _memory[key]
    folder = (folder or cache_dir()) / key
    examples = _read(folder) or _write(folder, recipe, _draw(pipe, checkpoint, resolution, per_prompt, log))
    _memory[key] = examples
    while len(_memory) > _KEPT_IN_MEMORY:
        _memory.pop(next(iter(_memory)))
    return examples


def _draw(
    pipe, checkpoint: checkpoints.Checkpoint, resolution: int, per_prompt: list[int], log: Callable[[str], None]
) -> list[preprocess.Example]:
    examples: list[preprocess.Example] = []
    progress = Progress(sum(per_prompt), log, what="prior images")
    for i, (prompt, images) in enumerate(zip(checkpoint.prior_prompts, per_prompt, strict=True)):
        for first in range(0, images, sampling.MAX_OUTPUTS):
            count = min(sampling.MAX_OUTPUTS, images - first)
            request = sampling.resolve_request(
                checkpoint.defaults,
                prompt=prompt,
                seed=1000 * (i + 1) + first,
                num_outputs=count,
                width=resolution,
                height=resolution,
            )
            examples += [
                preprocess.Example(f"prior-{i}-{first + k}", image, None, prompt)
                for k, image in enumerate(sampling.sample(pipe, request, one_pass=True))
            ]
            progress.step(len(examples))
    return examples


def _read(folder: Path) -> list[preprocess.Example] | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        examples = []
        for entry in index["images"]:
            with Image.open(folder / entry["file"]) as image:
                examples.append(preprocess.Example(entry["name"], image.convert("RGB"), None, entry["prompt"]))
        return examples
    except (OSError, ValueError, KeyError):
        return None  # not there, or half there: draw again


def _write(folder: Path, recipe: dict, examples: list[preprocess.Example]) -> list[preprocess.Example]:
    """Lossless PNGs and an index, made in a temporary folder and renamed into place (readers never see half)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".priors-", dir=folder.parent))
        images = []
        for n, example in enumerate(examples):
            example.image.save(tmp / f"{n:04d}.png")
            images.append({"file": f"{n:04d}.png", "name": example.name, "prompt": example.caption})
        (tmp / "index.json").write_text(json.dumps({"recipe": recipe, "images": images}))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first: theirs is the same
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only or full disk: the images are still good for this training
    return examples
