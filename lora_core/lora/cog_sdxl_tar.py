"""Replicate's SDXL trainer's output, ``trained_model.tar``, read as one LoRA.

cog-sdxl (replicate/cog-sdxl) writes a plain tar of ``lora.safetensors`` (the UNet's attention LoRA in
attention-processor names), ``embeddings.pti`` (a safetensors of the new tokens' vectors, ``text_encoders_0`` and
``text_encoders_1``) and ``special_params.json`` (the prompt word those tokens stand for). Its users hold the tar's
URL; here it is one entry of ``lora_urls``, its concept ``<k>`` like any other. Only those two members are read,
by exact name, each copied out in chunks and vetted as any LoRA file before a tensor is read; no path from the
archive is ever written, so a hostile member name goes nowhere. cog-sdxl trains SDXL only: the file says so in
kohya's words, so the family check refuses it on an SD 1.x base with the usual sentence.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import torch

from lora_core.catalog import families

LORA, EMBEDDINGS = "lora.safetensors", "embeddings.pti"
FULL_UNET = "unet.safetensors"  # cog-sdxl with is_lora=false: a fine-tune of the UNet's attention, not a LoRA


def is_tar(path: Path) -> bool:
    """A POSIX tar (ustar or pax, as Python's tarfile writes): ``ustar`` at byte 257."""
    with Path(path).open("rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"


def read(path: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LoRA's tensors (its layers and its token vectors) and the LoRA file's metadata."""
    from lora_core.lora.lora_file import LoRAFileError, check_safetensors, read_lora

    with tempfile.TemporaryDirectory(prefix="cog-sdxl-") as tmp:
        found, names = _copy_members(Path(path), Path(tmp), name)
        if LORA not in found:
            what = (
                f"holds {FULL_UNET}, a fine-tune of the UNet rather than a LoRA (cog-sdxl's is_lora=false)"
                if FULL_UNET in names
                else f"has no {LORA}"
            )
            raise LoRAFileError(f"{name} is a tar that {what}; give cog-sdxl's LoRA output or a .safetensors LoRA.")
        if is_tar(found[LORA]):  # a tar in a tar: never unpacked further
            raise LoRAFileError(f"{name}'s {LORA} is itself a tar, not safetensors.")
        tensors, metadata = read_lora(found[LORA], name=f"{name}'s {LORA}")
        if EMBEDDINGS in found:
            check_safetensors(found[EMBEDDINGS], f"{name}'s {EMBEDDINGS}")
            from safetensors.torch import load_file

            vectors = load_file(found[EMBEDDINGS])
            unknown = sorted(set(vectors) - {"text_encoders_0", "text_encoders_1"})
            if unknown:
                raise LoRAFileError(f"{name}'s {EMBEDDINGS} holds {', '.join(unknown[:3])}, not cog-sdxl's vectors.")
            tensors.update(vectors)
    return tensors, {"ss_base_model_version": families.FAMILIES["sdxl"].kohya_version, **metadata}


def _copy_members(path: Path, into: Path, name: str) -> tuple[dict[str, Path], set[str]]:
    """The LoRA's regular members, copied to fixed names under ``into``, and the names of every member (a full
    UNet fine-tune is only named in the refusal, never copied)."""
    from lora_core.lora.lora_file import LoRAFileError

    wanted = {LORA, EMBEDDINGS}
    found: dict[str, Path] = {}
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:  # headers one after another: nothing is read that is not asked for
                member_name = member.name.removeprefix("./")
                names.add(member_name)
                if member_name in wanted and member_name not in found and member.isreg():
                    source = tar.extractfile(member)
                    if source is None:
                        continue
                    target = into / member_name
                    with target.open("wb") as out:
                        shutil.copyfileobj(source, out, 1024 * 1024)
                    found[member_name] = target
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LoRAFileError(f"{name} is not a readable tar ({type(e).__name__}: truncated or damaged).") from None
    return found, names
