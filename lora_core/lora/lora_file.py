"""The LoRA ``.safetensors`` file: one portable file with the LoRA, its tokens and metadata.

Layout (readable by plain diffusers after splitting off the embeddings):
- ``unet.<module>.lora_A.weight`` / ``lora_B.weight``: PEFT/diffusers names, alpha = rank;
- ``text_encoder.<module>.lora_A.weight`` / ``lora_B.weight`` (SDXL: ``text_encoder_2.`` too): when the text
  encoders trained;
- the new tokens' (num_tokens, hidden) embeddings per text encoder: ``emb_params`` (SD 1.x, diffusers'
  textual-inversion key) or ``clip_l`` and ``clip_g`` (SDXL, kohya's and diffusers' advanced script's);
- string metadata: ``lora_studio.*`` (ours), ``ss_*`` (kohya) and ``modelspec.*`` (shown by A1111/Civitai).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lora_core import __version__
from lora_core.base import checkpoints
from lora_core.catalog import families
from lora_core.lora import cog_sdxl_tar

FORMAT_VERSION = "1"
EMBEDDINGS_KEY = families.SD1.embedding_keys["text_encoder"]
# the keys token vectors are stored under -> the text encoder they are for: ours and kohya's per family (SD 1.x
# ``emb_params``, SDXL ``clip_l``/``clip_g``), and cog-sdxl's ``embeddings.safetensors``
EMBEDDING_ENCODER = {
    **{key: encoder for f in families.FAMILIES.values() for encoder, key in f.embedding_keys.items()},
    "text_encoders_0": "text_encoder",
    "text_encoders_1": "text_encoder_2",
}
SOFTWARE = f"lora_core {__version__}"


def lora_metadata(
    *,
    base_model: str,
    base_family: str,
    base_hash: str,
    task: str,
    rank: int,
    alpha: int,
    tokens: list[str],
    init_word: str,
    resolution: int,
    steps: int,
    seed: int,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """String -> string metadata: what a person (or a tool) needs to use and re-make the LoRA. ``base_family`` is a
    key of ``families.FAMILIES``: kohya's and the model-spec's names for it come from there."""
    family = families.FAMILIES[base_family]
    trigger = "".join(tokens)
    meta = {
        "lora_studio.format_version": FORMAT_VERSION,
        "lora_studio.base_model": base_model,
        "lora_studio.base_family": base_family,
        "lora_studio.base_hash": base_hash,
        "lora_studio.task": task,
        "lora_studio.rank": str(rank),
        "lora_studio.alpha": str(alpha),
        "lora_studio.tokens": json.dumps(tokens),
        "lora_studio.init_word": init_word,
        "lora_studio.resolution": str(resolution),
        "lora_studio.steps": str(steps),
        "lora_studio.seed": str(seed),
        "lora_studio.software": SOFTWARE,
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": family.kohya_version,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": str(steps),
        "ss_seed": str(seed),
        "ss_sd_model_name": base_model,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{family.modelspec_architecture}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": f"{task} LoRA",
        "modelspec.trigger_phrase": trigger,
    }
    meta.update(extra or {})
    return meta


def pack_trained(
    unet: dict[str, torch.Tensor],
    text_encoders: dict[str, dict[str, torch.Tensor]],
    embeddings: dict[str, torch.Tensor],
    family: families.Family = families.SD1,
) -> dict[str, torch.Tensor]:
    """The tensors of one file, from a training run's PEFT state dicts (per text encoder that trained a LoRA) and
    token vectors per text encoder, stored under the family's keys (SD 1.x ``emb_params``, SDXL ``clip_l``/``clip_g``:
    what diffusers' and kohya's embedding loaders read)."""
    tensors = {f"unet.{k}": v for k, v in unet.items()}
    for encoder, state in text_encoders.items():
        tensors.update({f"{encoder}.{k}": v for k, v in state.items()})
    for encoder, rows in embeddings.items():
        tensors[family.embedding_keys[encoder]] = rows
    return {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}


def embedding_file(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], family: families.Family, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The new tokens alone, as a textual-inversion file (tensors, metadata): ComfyUI ignores the embeddings bundled
    in a LoRA file (``bundle_emb.*``: "lora key not loaded"), so its users load this one as ``embedding:<name>``;
    A1111 reads it as a textual inversion. Keys per family (``emb_params``; SDXL ``clip_l``/``clip_g``), as both
    tools read them."""
    vectors = {key: tensors[key] for key in family.embedding_keys.values()}
    kept = {k: v for k, v in metadata.items() if k.startswith("lora_studio.")}
    return vectors, {
        **kept,
        "lora_studio.key_format": "textual-inversion",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{family.modelspec_architecture}/textual-inversion",
        "modelspec.title": name,
        "modelspec.trigger_phrase": name,
    }


def write_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(tensors, tmp, metadata={"format": "pt", **metadata})
    tmp.replace(path)
    return path


class LoRAFileError(ValueError):
    """The file cannot be used as a LoRA; the message says why."""


_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
MAX_HEADER_BYTES = 16 * 2**20
# names a LoRA's tensors have in any layout ``lora_formats`` reads (cloneofsimo's embeddings are flagged in metadata)
_LORA_KEY = re.compile(rf"lora|^({'|'.join(EMBEDDING_ENCODER)})$|^bundle_emb\.|:\d+:(up|down)$")


def check_safetensors(path: Path, name: str = "") -> dict:
    """Validate ``path`` as safetensors from its header alone; returns the parsed header.

    Runs before any tensor is read: pickles, truncated files and headers that claim more
    data than the file holds are refused with a sentence, not a stack trace.
    """
    path = Path(path)
    name = name or path.name
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
        if checkpoints.holds_pickle(head):
            raise LoRAFileError(
                f"{name} is a pickle (.ckpt/.pt/.bin), which can run code when loaded; only "
                ".safetensors LoRAs are accepted. Convert it to safetensors first."
            )
        head = head[:8]
        f.seek(8)
        if len(head) < 8:
            raise LoRAFileError(f"{name} is too short to be a safetensors file ({size} bytes).")
        header_len = int.from_bytes(head, "little")
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise LoRAFileError(
                f"{name} is not a valid safetensors file (its header length is wrong: truncated or not safetensors)."
            )
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LoRAFileError(f"{name} is not a valid safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise LoRAFileError(f"{name} is not a valid safetensors file (unreadable header).")
    data_size = size - 8 - header_len
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            expected = count * _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise LoRAFileError(f"{name} has a malformed entry for tensor {key!r}.") from None
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise LoRAFileError(
                f"{name} is truncated or corrupt: tensor {key!r} claims bytes {begin}..{end} "
                f"but the file holds {data_size} bytes of data."
            )
    return header


def read_lora(path: Path, name: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file, after ``check_safetensors`` has vetted its header (or of cog-sdxl's tar,
    ``cog_sdxl_tar``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if Path(path).stat().st_size > 262 and cog_sdxl_tar.is_tar(path):
        return cog_sdxl_tar.read(path, name or Path(path).name)

    header = check_safetensors(path, name)
    metadata = header.get("__metadata__") or {}  # already parsed with the header: no second read
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise LoRAFileError(f"{name or path.name} could not be read as safetensors ({e}).") from None
    if not any(_LORA_KEY.search(k) or metadata.get(k) == "<embed>" for k in tensors):
        raise LoRAFileError(f"{name or path.name} holds {len(header) - 1} tensors but none of them is a LoRA weight.")
    return tensors, metadata


def family_of(metadata: dict[str, str]) -> str:
    """The base family a file says it was made for, in words a person knows."""
    family = metadata.get("lora_studio.base_family") or metadata.get("ss_base_model_version") or ""
    return families.title_of(family)


def declared_family(metadata: dict[str, str]) -> families.Family | None:
    """The known family a file's metadata names (ours, kohya's ``ss_base_model_version`` or the model-spec's
    architecture), or None when it names none we know. What decides when layers alone cannot: the tiny bases share
    UNet shapes across families, so an SD 1.x LoRA of the UNet alone would fit the tiny SDXL base."""
    spec = metadata.get("modelspec.architecture", "").split("/", 1)[0]
    for family in families.FAMILIES.values():
        if metadata.get("lora_studio.base_family") == family.name:
            return family
        if metadata.get("ss_base_model_version") == family.kohya_version or spec == family.modelspec_architecture:
            return family
    return None
