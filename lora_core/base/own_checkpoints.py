"""A user's own base checkpoint: ``base_model`` as the URL of a single ``.safetensors`` or a hub id (issue 20).

A1111's and Civitai's users bring fine-tunes as one file in the original layout (CompVis for SD 1.x, SGM for SDXL).
Such a file comes through the guarded fetcher under checkpoint limits (``FetchPolicy.for_checkpoints``: size and
time caps, no private addresses, its own cache by SHA-256 under an LRU bound). Its header alone says what it is
(``safe_open`` reads no tensor and unpickles nothing): the family from its text encoders' key prefixes
(``Family.single_file_text``), its sizes from a few shapes. It borrows the configs, sampling defaults and training
settings of the installed registry base of that family with those sizes: a fine-tune of SD 1.5 samples and trains
as SD 1.5 does. A file that is none of that (a pickle, a truncated file, a VAE, a LoRA, an SDXL refiner, SD 2.x,
an inpainting model) fails the prediction with one sentence saying what it is. A hub id brings a diffusers folder
(or a single file) through ``hub_checkpoints``; a folder has its own configs and takes the settings of the registry
base of its sizes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from lora_core.base import hub_checkpoints
from lora_core.base.checkpoints import (
    PICKLE_SUFFIXES,
    REGISTRY,
    Checkpoint,
    CheckpointError,
    holds_pickle,
    is_hub_id,
    resolve,
    split_hub_id,
)
from lora_core.base.hub_download import size_text
from lora_core.base.single_file import UNET_PREFIX
from lora_core.catalog import families
from lora_core.net import fetch

UNET_IN = UNET_PREFIX + "input_blocks.0.0.weight"  # conv_in: (width, latent channels, 3, 3)

# files that hold none of the families, told by a key, in words a person knows
_NOT_A_BASE = (
    ("cond_stage_model.model.", "an SD 2.x checkpoint (OpenCLIP text encoder), which this service does not run"),
    ("conditioner.embedders.0.model.", "an SDXL refiner, which only refines another base's images"),
)


@dataclass(frozen=True)
class FileSizes:
    """What decides which configuration a single file loads with."""

    family: families.Family
    latent_channels: int  # 4; 9 for an inpainting model
    unet_width: int  # the first block's channels: 320 for SD 1.5 and SDXL
    cross_attention_dim: int  # 768 for SD 1.x, 2048 for SDXL
    text_widths: tuple[int, ...]  # each text encoder's, in the family's order

    def describe(self) -> str:
        return (
            f"UNet {self.unet_width} wide with {self.cross_attention_dim}-wide cross-attention, "
            f"text encoders {' and '.join(map(str, self.text_widths))} wide"
        )


def read_sizes(path: Path, label: str) -> FileSizes:
    """The family and sizes of the single file at ``path``, from its header; one sentence when it is no base."""
    from safetensors import SafetensorError, safe_open

    with path.open("rb") as f:
        if holds_pickle(f.read(9)):
            raise CheckpointError(f"{label} holds pickled data, which can run code when loaded; give a .safetensors")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())

            def shape(key: str) -> list[int]:
                return list(f.get_slice(key).get_shape())

            found = {
                name: [
                    next((k for k in keys if k.startswith(p) and k.endswith("token_embedding.weight")), None)
                    for p in family.single_file_text
                ]
                for name, family in families.FAMILIES.items()
            }
            fitting = [families.FAMILIES[n] for n, ks in found.items() if all(ks)]
            if not fitting or UNET_IN not in keys:
                raise CheckpointError(f"{label} is {_what_else(keys)}; give an SD 1.x or SDXL checkpoint")
            family = max(fitting, key=lambda fam: len(fam.single_file_text))
            cross = next((k for k in keys if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
            if cross is None:
                raise CheckpointError(f"{label} has a UNet without cross-attention; it is no text-to-image base")
            width, channels = shape(UNET_IN)[:2]
            text_widths = tuple(shape(k)[1] for k in found[family.name] if k)
            sizes = FileSizes(family, channels, width, shape(cross)[1], text_widths)
    except SafetensorError as e:
        raise CheckpointError(f"{label} is not a complete .safetensors file (truncated or damaged: {e})") from None
    if sizes.latent_channels != 4:
        raise CheckpointError(
            f"{label} is an inpainting or other {sizes.latent_channels}-channel {family.title} model; "
            "give a text-to-image checkpoint (its UNet takes 4 latent channels)"
        )
    return sizes


def _what_else(keys: list[str]) -> str:
    """What a file that holds no known base is, as far as its key names tell."""
    for prefix, what in _NOT_A_BASE:
        if any(k.startswith(prefix) for k in keys):
            return what
    if any("lora_down" in k or "lora_A" in k or "lora.down" in k for k in keys):
        return "a LoRA, not a base checkpoint (give it in lora_urls)"
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        vae = any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys)
        return "a VAE alone, with no UNet" if vae else "no checkpoint in the original single-file layout (no UNet)"
    return "a checkpoint with a UNet but no text encoder of SD 1.x or SDXL"


def config_sizes(folder: Path, family: families.Family) -> tuple[int, int, int, tuple[int, ...]]:
    """(latent channels, UNet width, cross-attention width, text widths) of a diffusers folder's configs."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    cross = unet["cross_attention_dim"]
    texts = tuple(
        json.loads((folder / encoder / "config.json").read_text())["hidden_size"] for encoder in family.text_encoders
    )
    return unet["in_channels"], unet["block_out_channels"][0], cross if isinstance(cross, int) else cross[0], texts


def installed_fit(
    family: families.Family, sizes: tuple[int, int, int, tuple[int, ...]], root: Path | None = None
) -> tuple[tuple[Checkpoint, Path] | None, list[str]]:
    """(the first installed registry base of ``family`` with ``sizes`` and its config folder, or None; the names of
    the installed bases of that family)."""
    installed = []
    for checkpoint in REGISTRY.values():
        if checkpoint.family != family.name:
            continue
        try:
            path, config = resolve(checkpoint, root)
        except CheckpointError:
            continue
        installed.append(checkpoint.name)
        if config_sizes(config or path, family) == sizes:
            return (checkpoint, config or path), installed
    return None, installed


def fitting_base(sizes: FileSizes, label: str, root: Path | None = None) -> tuple[Checkpoint, Path]:
    """The first installed registry base of the file's family with its sizes, and that base's config folder."""
    wanted = (sizes.latent_channels, sizes.unet_width, sizes.cross_attention_dim, sizes.text_widths)
    fit, installed = installed_fit(sizes.family, wanted, root)
    if fit is None:
        raise CheckpointError(
            f"{label} is an {sizes.family.title} checkpoint ({sizes.describe()}) that no installed base's "
            f"configuration fits (installed {sizes.family.title} bases: {', '.join(installed) or 'none'})"
        )
    return fit


def folder_checkpoint(path: Path, label: str, root: Path | None = None) -> tuple[families.Family, Checkpoint]:
    """(family, the registry base whose settings it takes) of a diffusers pipeline folder: the installed one with its
    sizes, else the family's full-size entry (its settings are data, installed or not)."""
    index = json.loads((path / "model_index.json").read_text())
    family = next((f for f in families.FAMILIES.values() if f.pipeline_class == index.get("_class_name")), None)
    if family is None:
        raise CheckpointError(
            f"{label} is a {index.get('_class_name')!r} pipeline; give an SD 1.x or SDXL text-to-image one"
        )
    sizes = config_sizes(path, family)
    if sizes[0] != 4:
        raise CheckpointError(f"{label} is an inpainting or other {sizes[0]}-channel model; give a text-to-image one")
    if family.name == "sd-1" and sizes[2] == 1024:
        raise CheckpointError(f"{label} is an SD 2.x pipeline (1024-wide cross-attention), which is not run here")
    fit, _ = installed_fit(family, sizes, root)
    return family, fit[0] if fit else next(c for c in REGISTRY.values() if c.family == family.name and c.source)


def recorded_name(checkpoint: Checkpoint) -> str:
    """How a LoRA's metadata names the base it was trained on, so "Use this LoRA" draws on the same weights: a
    registry base by its name, a user's own by the ``source`` ``OwnCheckpoints`` gave it (a URL without its query, a
    hub id at the commit it was trained on)."""
    if checkpoint.name not in REGISTRY and checkpoint.source:
        return checkpoint.source
    return checkpoint.name


def shareable(url: str) -> str:
    """``url`` without its query and fragment: a signed URL's token does not go into files that others see."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


def _link(target: Path, link: Path) -> Path:
    """``link`` pointing at ``target``, replaced atomically (concurrent predictions may make the same one)."""
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    return link


class OwnCheckpoints:
    """``base_model`` URLs and hub ids to ``Checkpoint``s, for ``WarmPipelineCache(own=...)``. A second prediction
    with the same one downloads nothing (the caches, asked again after their TTL) and loads nothing (the warm
    pipeline is keyed by its files)."""

    def __init__(self, fetcher: fetch.Fetcher, root: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.fetcher, self.root, self.log = fetcher, root, log

    @classmethod
    def from_env(cls, log: Callable[[str], None] = print) -> OwnCheckpoints:
        return cls(fetch.Fetcher(fetch.FetchPolicy.for_checkpoints(), log=log), log=log)

    def _named(self, fetched: fetch.FetchedFile) -> Path:
        """The fetched blob under a ``.safetensors`` name: diffusers' ``from_single_file`` picks its reader by the
        name's suffix (any other goes to ``torch.load``). A symbolic link, so that the cache's LRU bound still frees
        the blob's space."""
        return _link(fetched.path, self.fetcher.policy.cache_dir / "named" / f"{fetched.sha256}.safetensors")

    def __call__(self, value: str) -> Checkpoint:
        """The checkpoint at URL or hub id ``value``, fetched or found in the cache."""
        return self._from_url(value) if "://" in value[:12] else self._from_hub(value)

    def _from_url(self, url: str) -> Checkpoint:
        name = unquote(PurePosixPath(urlsplit(url).path).name) or "checkpoint"
        label = f"base_model {name[:100]!r}"
        if PurePosixPath(name.lower()).suffix in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{label} is a pickle-based checkpoint, which can run code when loaded; convert it to .safetensors"
            )
        try:
            fetched = self.fetcher.fetch(url)
        except fetch.FetchError as e:
            raise CheckpointError(f"{label}: {e}") from None
        source = f"{'the cache' if fetched.downloaded_bytes == 0 else 'a download'}, sha256 {fetched.sha256[:12]}"
        return self._single_file(fetched.path, self._named(fetched), label, url, source, shareable(url), fetched.sha256)

    def _single_file(
        self, path: Path, named: Path, label: str, value: str, found_in: str, origin: str, sha256: str | None
    ) -> Checkpoint:
        """``found_in``: where the log says it came from; ``origin``: where it comes from again (``recorded_name``)."""
        sizes = read_sizes(path, label)
        base, folder = fitting_base(sizes, label, self.root)
        self.log(
            f"{label}: {size_text(path.stat().st_size)} from {found_in}, {sizes.family.title} ({sizes.describe()}): "
            f"{base.name}'s configuration and defaults"
        )
        return base.model_copy(
            update=dict(
                name=value,
                description=f"{label}: an {sizes.family.title} checkpoint of yours, with {base.name}'s configuration",
                layout="single_file",
                path=str(named),
                config=str(folder),
                source=origin,
                sha256=sha256,
            )
        )

    def _from_hub(self, value: str) -> Checkpoint:
        from lora_core.base.hub_listing import HubError
        from lora_core.base.weights_fetch import WeightsFetchError

        label = f"base_model {value[:120]!r}"
        if not is_hub_id(value):
            raise CheckpointError(
                f"{label} is neither a base model's name, a URL nor a hub id like 'owner/name' or 'owner/name@revision'"
            )
        repo, revision = split_hub_id(value)
        try:
            files = hub_checkpoints.HubCache(self.fetcher.policy, self.log).get(repo, revision)
        except (HubError, WeightsFetchError) as e:
            raise CheckpointError(f"{label}: {e}") from None
        except OSError as e:  # a full or read-only cache disk: the operator's to fix, said in one line
            raise CheckpointError(f"{label}: the checkpoint cache cannot store it ({e})") from None
        source = f"{'the cache' if files.downloaded_bytes == 0 else 'the hub'}, commit {files.commit[:12]}"
        pinned = f"{repo}@{files.commit}"  # what a LoRA trained on it names (``recorded_name``)
        if revision != files.commit:  # a branch or tag moves; the commit is what a re-run needs
            source += f" (to keep drawing on it: {pinned})"
        if files.layout == "single_file":
            return self._single_file(files.path, files.path, label, value, source, pinned, None)
        family, base = folder_checkpoint(files.path, label, self.root)
        self.log(f"{label}: an {family.title} pipeline from {source}: {base.name}'s defaults")
        return base.model_copy(
            update=dict(
                name=value,
                description=f"{label}: an {family.title} pipeline from the hub, with {base.name}'s defaults",
                family=family.name,
                layout="diffusers",
                path=str(files.path),
                config=None,
                source=pinned,
                sha256=None,
            )
        )
