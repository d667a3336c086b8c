"""Reading any LoRA file layout into one form: per-module ``(down, up, alpha)`` plus token embeddings.

Layouts understood (the names say which; no model is touched here, only a table of its
module names and weight shapes):
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (ours), ``….lora.down.weight``,
  ``base_model.model.<module>…`` (PEFT ``save_pretrained``) and the old attention-processor names
  (``…attn1.processor.to_q_lora.down.weight``);
- kohya / A1111 / Civitai: ``lora_unet_<module_with_underscores>.lora_down.weight`` + ``.alpha`` (SDXL's text
  encoders ``lora_te1_``/``lora_te2_``), with A1111 bundled embeddings ``bundle_emb.<name>.string_to_param.*``
  (SDXL: ``bundle_emb.<name>.clip_l``/``clip_g``); the UNet's blocks named as diffusers does
  (``down_blocks_1_attentions_0``) or as the original LDM/SGM code did (``input_blocks_4_1``, via diffusers' mapping);
- cloneofsimo/lora (Replicate's first LoRA models): ``unet:<i>:up`` / ``:down`` numbered in module
  order, the targeted block classes in the metadata, embeddings stored under their token names.

Token embeddings are per text encoder: SD 1.x has one, SDXL two (``emb_params`` / ``clip_l``+``clip_g``, and
cog-sdxl's ``text_encoders_0``/``_1``).

Anything else (LoHa, LoKr, DoRA, full diffs) is refused by name rather than half-applied.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from lora_core.catalog import families
from lora_core.lora.lora_file import EMBEDDING_ENCODER

CLONEOFSIMO_EMBED_FLAG = "<embed>"
_CLONEOFSIMO_KEY = re.compile(r"^(unet|text_encoder):(\d+):(up|down)$")
_UNSUPPORTED = {
    "hada_w": "LoHa",
    "lokr_w": "LoKr",
    "dora_scale": "DoRA",
    "lora_mid": "LoCon with CP decomposition",
    ".diff": "full weight difference",
    "lora_B.bias": "LoRA with bias",
}


@dataclass(frozen=True)
class ModuleTable:
    """The base's modules, as data: ``component.path`` -> class name in model order, weight shapes of
    every Linear (2-D) and Conv2d (4-D). Components are its family's ``lora_components``."""

    classes: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    family: families.FamilyName = "sd-1"

    @property
    def family_spec(self) -> families.Family:
        return families.FAMILIES[self.family]


@dataclass(frozen=True)
class Layer:
    """One module's LoRA, shaped for its base module: delta W = up @ down * alpha / rank."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class Contents:
    """What a LoRA file holds, bound to module paths of one base."""

    layers: dict[str, Layer]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # text encoder -> (tokens, its hidden)
    tokens: list[str] = field(default_factory=list)
    layout: str = ""


class LayerMismatch(ValueError):
    """The file's layers do not exist in the base or have other shapes; ``str()`` gives an example."""


class UnsupportedLayout(ValueError):
    """The file is a LoRA variant or layout that is not applied; ``str()`` says which."""


def read_contents(tensors: dict[str, torch.Tensor], metadata: dict[str, str], table: ModuleTable) -> Contents:
    """The file's layers resolved against ``table`` and its embeddings; raises the two errors above."""
    tensors = dict(tensors)
    embeddings, tokens = _pop_embeddings(tensors, metadata)
    for key in tensors:
        for marker, variant in _UNSUPPORTED.items():
            if marker in key:
                raise UnsupportedLayout(f"it is a {variant} file (tensor {key!r}); only plain LoRA is applied")
    if not tensors:
        layers, layout = {}, "embeddings only"
    elif any(_CLONEOFSIMO_KEY.match(k) for k in tensors):
        layers, layout = _cloneofsimo(tensors, metadata, table), "cloneofsimo/lora"
    elif any(k.startswith("lora_") for k in tensors):
        layers, layout = _kohya(tensors, table), "kohya/A1111"
    else:
        layers, layout = _diffusers(tensors, metadata, table), "diffusers/PEFT"
    return Contents(layers, embeddings, tokens, layout)


# --- embeddings -------------------------------------------------------------------------------------------------


def _natural(token: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", token)]


_BUNDLE_ENCODER = {vector: encoder for f in families.FAMILIES.values() for encoder, vector in f.bundle_vectors.items()}


def _pop_embeddings(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Removes the embedding tensors from ``tensors``; returns them per text encoder as rows (all with the same
    number of rows), and one token name per row."""
    tokens = json.loads(metadata.get("lora_studio.tokens", "[]"))
    parts: dict[str, list[torch.Tensor]] = {}
    for key in [k for k in tensors if k in EMBEDDING_ENCODER]:  # ours, diffusers', kohya's, cog-sdxl's
        parts.setdefault(EMBEDDING_ENCODER[key], []).append(tensors.pop(key))
    for key in [k for k in tensors if k.startswith("bundle_emb.")]:  # A1111's bundled embeddings, in file order
        # ``bundle_emb.<name>.<vector>``: the vector names ``lora_convert`` writes (``Family.bundle_vectors``);
        # any other vector is SD 1.x's single text encoder, as A1111 reads it
        encoder = next((e for vector, e in _BUNDLE_ENCODER.items() if key.endswith("." + vector)), "text_encoder")
        parts.setdefault(encoder, []).append(tensors.pop(key))
    if not parts:  # cloneofsimo: one vector per token, stored under the token
        keys = tokens = sorted((k for k in tensors if metadata.get(k) == CLONEOFSIMO_EMBED_FLAG), key=_natural)
        if keys:
            parts["text_encoder"] = [tensors.pop(k) for k in keys]
    embeddings = {
        encoder: torch.cat([part.reshape(-1, part.shape[-1]) for part in rows]) for encoder, rows in parts.items()
    }
    counts = {encoder: len(rows) for encoder, rows in embeddings.items()}
    if len(set(counts.values())) > 1:
        raise UnsupportedLayout(f"its token embeddings have different numbers of tokens per text encoder ({counts})")
    rows = next(iter(counts.values()), 0)
    if len(tokens) != rows:
        tokens = [f"<t{i}>" for i in range(rows)]
    return embeddings, tokens


# --- fitting layers to the base ------------------------------------------------------------------------------------


def _fit(
    path: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None, table: ModuleTable, source: str
) -> Layer:
    """``Layer`` for module ``path``, reshaped to its kind (a 1x1 conv LoRA fits a Linear and back)."""
    shape = table.shapes.get(path)
    if shape is None:
        raise LayerMismatch(f"the base has no layer for {source!r}")
    rank = down.shape[0]
    if len(shape) == 2:
        down, up = down.reshape(rank, -1), up.reshape(up.shape[0], -1)
        fits = down.shape == (rank, shape[1]) and up.shape == (shape[0], rank)
    else:
        if down.dim() == 2:
            down, up = down.reshape(*down.shape, 1, 1), up.reshape(*up.shape, 1, 1)
        fits = down.shape == (rank, *shape[1:]) and up.shape[:2] == (shape[0], rank) and up.shape[2:] == (1, 1)
    if not fits:
        raise LayerMismatch(
            f"{source!r} has shapes {tuple(down.shape)} / {tuple(up.shape)}, the base's layer {tuple(shape)}"
        )
    return Layer(down, up, float(alpha) if alpha is not None else float(rank))


def _alpha(tensors: dict[str, torch.Tensor], stem: str) -> float | None:
    value = tensors.get(stem + ".alpha")
    return None if value is None else float(value.reshape(-1)[0])


# --- diffusers / PEFT --------------------------------------------------------------------------------------------

_DIFFUSERS_PAIRS = (
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
    ("_lora.down.weight", "_lora.up.weight"),
)
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")  # diffusers' old attention-processor files


def _diffusers_alphas(metadata: dict[str, str], components: tuple[str, ...]) -> dict[str, float]:
    """``lora_alpha`` per component from diffusers' ``lora_adapter_metadata`` (absent: alpha = rank)."""
    try:
        meta = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return {}
    alphas = {}
    for key, value in meta.items():
        component, _, name = key.rpartition(".")
        if name == "lora_alpha" and isinstance(value, (int, float)) and component in components:
            alphas[component] = float(value)
    return alphas


def _module_path(stem: str, table: ModuleTable) -> str:
    """``<component>.<module>`` for a file's module name, whatever its prefix (none: whichever component has it)."""
    stem = _PROCESSOR.sub(lambda m: "." + {"to_out": "to_out.0"}.get(m.group(1), m.group(1)), stem)
    components = table.family_spec.lora_components
    # longest first: ``text_encoder_2.`` before ``text_encoder.``
    prefixes = [(f"{c}.", c) for c in sorted(components, key=len, reverse=True)] + [("base_model.model.", "")]
    prefix, component = next(((p, c) for p, c in prefixes if stem.startswith(p)), ("", ""))
    rest = stem[len(prefix) :]
    candidates = [f"{component}.{rest}"] if component else [f"{c}.{rest}" for c in components]
    # transformers 5 dropped the ``text_model.`` level of ``CLIPTextModel`` (not of ``CLIPTextModelWithProjection``)
    candidates += [c.replace(".text_model.", ".", 1) for c in candidates if not c.startswith("unet.")]
    return next((c for c in candidates if c in table.shapes), candidates[0])


def _diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], table: ModuleTable) -> dict[str, Layer]:
    alphas = _diffusers_alphas(metadata, table.family_spec.lora_components)
    layers: dict[str, Layer] = {}
    used: set[str] = set()
    for key in tensors:
        pair = next((p for p in _DIFFUSERS_PAIRS if key.endswith(p[0])), None)
        if pair is None:
            continue
        stem = key[: -len(pair[0])]
        up_key = stem + pair[1]
        if up_key not in tensors:
            raise LayerMismatch(f"{key!r} has no matching {up_key!r}")
        path = _module_path(stem, table)
        alpha = _alpha(tensors, stem)
        if alpha is None:
            alpha = alphas.get(path.split(".", 1)[0])
        layers[path] = _fit(path, tensors[key], tensors[up_key], alpha, table, stem)
        used |= {key, up_key, stem + ".alpha"}
    _refuse_leftovers(tensors, used)
    return layers


# --- kohya / A1111 -------------------------------------------------------------------------------------------------


def _kohya_names(table: ModuleTable) -> dict[str, str]:
    """``lora_unet_down_blocks_0_…`` / ``lora_te_text_model_encoder_…`` (SDXL ``lora_te1_``, ``lora_te2_``) ->
    module path."""
    prefixes = table.family_spec.kohya_prefixes
    names = {}
    for path in table.shapes:
        component, module = path.split(".", 1)
        names[prefixes[component] + module.replace(".", "_")] = path
        if component != "unet" and not module.startswith("text_model."):  # transformers 5 dropped this level
            names[prefixes[component] + "text_model_" + module.replace(".", "_")] = path
    return names


def _ldm_to_diffusers_blocks(tensors: dict[str, torch.Tensor], table: ModuleTable) -> dict[str, torch.Tensor]:
    """Older kohya files name the UNet's blocks as the original LDM code did (``lora_unet_input_blocks_4_1_…``,
    ``middle_block``, ``output_blocks``). diffusers' own mapping (what ``lora_state_dict(unet_config=…)`` uses)
    renumbers them (``input_blocks_1_attentions_0_…``, from the UNet's ``layers_per_block``) and the block words
    are then renamed as its ``_convert_unet_lora_key`` does. The rest of that conversion (string heuristics whose
    result is checked nowhere) is not used: ``_kohya_names`` matches every name exactly against the base."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    if not any(p in k for k in tensors for p in _LDM_BLOCKS):
        return tensors
    resnets = {p for p in table.classes if re.fullmatch(r"unet\.down_blocks\.0\.resnets\.\d+", p)}
    mapped = _maybe_map_sgm_blocks_to_diffusers(dict(tensors), SimpleNamespace(layers_per_block=len(resnets)))
    out = {}
    for key, value in mapped.items():
        for ldm, ours in _LDM_BLOCKS.items():
            key = key.replace(ldm, ours)
        out[key] = value
    return out


_LDM_BLOCKS = {"_input_blocks_": "_down_blocks_", "_middle_block_": "_mid_block_", "_output_blocks_": "_up_blocks_"}


def _kohya(tensors: dict[str, torch.Tensor], table: ModuleTable) -> dict[str, Layer]:
    tensors = _ldm_to_diffusers_blocks(tensors, table)
    names = _kohya_names(table)
    layers: dict[str, Layer] = {}
    used: set[str] = set()
    for key in tensors:
        if not key.endswith(".lora_down.weight"):
            continue
        stem = key[: -len(".lora_down.weight")]
        up_key = stem + ".lora_up.weight"
        if up_key not in tensors:
            raise LayerMismatch(f"{key!r} has no matching {up_key!r}")
        if stem not in names:
            raise LayerMismatch(f"the base has no layer for {stem!r}")
        layers[names[stem]] = _fit(names[stem], tensors[key], tensors[up_key], _alpha(tensors, stem), table, stem)
        used |= {key, up_key, stem + ".alpha"}
    _refuse_leftovers(tensors, used)
    return layers


def _refuse_leftovers(tensors: dict[str, torch.Tensor], used: set[str]) -> None:
    leftovers = sorted(set(tensors) - used)
    if leftovers:
        raise UnsupportedLayout(
            f"{len(leftovers)} of its tensors are not LoRA pairs this service applies (e.g. {leftovers[0]!r})"
        )


# --- cloneofsimo/lora ----------------------------------------------------------------------------------------------


def _targets_in_order(table: ModuleTable, component: str, ancestors: set[str], legacy: bool) -> list[str]:
    """Module paths in the order cloneofsimo's ``_find_modules`` numbers them: every Linear/Conv2d under each
    module whose class is in ``ancestors``, ancestors in model order. ``legacy``: the order of diffusers
    before 0.13, whose transformer blocks registered ``attn1, ff, attn2`` (files of that era number so)."""
    prefix = component + "."
    found = [p for p, c in table.classes.items() if p.startswith(prefix) and c in ancestors]
    if legacy:
        rank = {"attn1": 0, "ff": 1, "attn2": 2}
        first: dict[str, int] = {}

        def order(item: tuple[int, str]) -> tuple[int, int, int]:
            i, path = item
            m = re.match(r"(.*\.transformer_blocks\.\d+)\.(attn1|ff|attn2)(\.|$)", path)
            if not m:
                return i, 0, i
            return first.setdefault(m.group(1), i), rank[m.group(2)], i

        found = [p for _, p in sorted(enumerate(found), key=order)]
    targets = []
    for ancestor in found:
        targets += [p for p in table.shapes if p.startswith(ancestor + ".")]
    return targets


def _cloneofsimo(tensors: dict[str, torch.Tensor], metadata: dict[str, str], table: ModuleTable) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    used: set[str] = set()
    for component in table.family_spec.lora_components:
        count = sum(1 for k in tensors if k.startswith(component + ":") and k.endswith(":up"))
        if not count:
            continue
        try:
            ancestors = set(json.loads(metadata[component]))
        except (KeyError, json.JSONDecodeError, TypeError):
            raise UnsupportedLayout(
                f"its {component} layers are numbered but the metadata does not say which blocks they belong to"
            ) from None
        pairs = [(tensors[f"{component}:{i}:down"], tensors[f"{component}:{i}:up"]) for i in range(count)]
        used |= {f"{component}:{i}:{d}" for i in range(count) for d in ("up", "down")}
        problem = ""
        for legacy in (False, True):
            targets = _targets_in_order(table, component, ancestors, legacy)
            if len(targets) != count:
                problem = f"it numbers {count} {component} layers, the base has {len(targets)} such layers"
                continue
            try:
                # cloneofsimo applies up @ down unscaled: alpha = rank
                fitted = {
                    path: _fit(path, down, up, None, table, f"{component}:{i}")
                    for i, (path, (down, up)) in enumerate(zip(targets, pairs, strict=True))
                }
            except LayerMismatch as e:
                problem = str(e)
                continue
            layers.update(fitted)
            break
        else:
            raise LayerMismatch(problem)
    _refuse_leftovers(tensors, used)
    return layers
