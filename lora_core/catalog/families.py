"""Model families as data: what SD 1.x and SDXL differ in, for every module that has to know (issue 20).

One source of truth per fact, no torch: the pipeline class a folder loads with, the models a LoRA patches, the
(tokenizer, text encoder) pairs a concept's token lives in, the folders a hub download keeps, the files a base's hash
covers, and the names kohya and the model-spec give the family in a LoRA's metadata. Conditioning code (how a prompt
becomes the UNet's inputs) is not data and lives with the pipelines that use it.

SDXL's entry is its published layout (diffusers' ``StableDiffusionXLPipeline``, kohya's ``sdxl_base_v1-0``, SGM's
single files).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

FamilyName = Literal["sd-1", "sdxl"]


class Family(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: FamilyName
    title: str  # in words a person knows
    pipeline_class: str  # a diffusers pipeline class name
    pipeline_kwargs: dict[str, Any]  # what loading adds: no safety checker, no watermark
    lora_components: tuple[str, ...]  # the pipeline's models a LoRA patches
    text_pairs: tuple[tuple[str, str], ...]  # (tokenizer, text encoder) pairs a prompt goes through
    hub_folders: tuple[str, ...]  # the folders of a hub repo the pipeline loads
    hashed_parts: tuple[str, ...]  # the folders whose weights name the base (``checkpoints.weights_hash``)
    kohya_prefixes: dict[str, str]  # component -> kohya's name prefix (``lora_unet_``, ``lora_te_``)
    embedding_keys: dict[str, str]  # text encoder -> the key its token vectors are stored under (ours and kohya's)
    prompt_outputs: tuple[str, ...]  # what ``encode_prompt`` returns, as the pipeline call's keywords, in order
    kohya_unet_names: Literal["diffusers", "sgm"]  # kohya's UNet module names: diffusers' or the original SGM ones
    bundle_vectors: dict[str, str]  # text encoder -> its vector's name in A1111's ``bundle_emb.<name>.<vector>``
    kohya_version: str  # kohya's ``ss_base_model_version``
    modelspec_architecture: str  # the model-spec's base architecture (a LoRA's is ``<it>/lora``)
    single_file_text: tuple[str, ...]  # each text encoder's key prefix in an original single file, text_pairs' order

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return tuple(encoder for _, encoder in self.text_pairs)

    def tokenizer_of(self, text_encoder: str) -> str:
        return next(tokenizer for tokenizer, encoder in self.text_pairs if encoder == text_encoder)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            name="sd-1",
            title="SD 1.x",
            pipeline_class="StableDiffusionPipeline",
            pipeline_kwargs={"safety_checker": None, "requires_safety_checker": False},
            lora_components=("unet", "text_encoder"),
            text_pairs=(("tokenizer", "text_encoder"),),
            # the safety checker is never loaded here
            hub_folders=("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"),
            hashed_parts=("unet", "text_encoder", "vae"),
            kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"},
            embedding_keys={"text_encoder": "emb_params"},  # diffusers' textual inversion and A1111's
            prompt_outputs=("prompt_embeds", "negative_prompt_embeds"),
            kohya_unet_names="diffusers",  # kohya trains SD 1.x on a copy of diffusers' UNet
            bundle_vectors={"text_encoder": "string_to_param.*"},
            kohya_version="sd_v1",
            modelspec_architecture="stable-diffusion-v1",
            single_file_text=("cond_stage_model.transformer.",),  # CompVis / A1111: transformers' CLIP names
        ),
        Family(
            name="sdxl",
            title="SDXL",
            pipeline_class="StableDiffusionXLPipeline",
            pipeline_kwargs={"add_watermarker": False},
            lora_components=("unet", "text_encoder", "text_encoder_2"),
            text_pairs=(("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")),
            hub_folders=("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
            hashed_parts=("unet", "text_encoder", "text_encoder_2", "vae"),
            kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
            embedding_keys={"text_encoder": "clip_l", "text_encoder_2": "clip_g"},  # kohya's SDXL embeddings
            prompt_outputs=(
                "prompt_embeds",
                "negative_prompt_embeds",
                "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds",
            ),
            kohya_unet_names="sgm",  # kohya trains SDXL on its own SGM UNet (``input_blocks``, ``output_blocks``)
            bundle_vectors={"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
            kohya_version="sdxl_base_v1-0",
            modelspec_architecture="stable-diffusion-xl-v1-base",
            # SGM: CLIP in transformers' names, then OpenCLIP's (one in_proj per layer, the projection transposed)
            single_file_text=("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
        ),
    ]
}
SD1 = FAMILIES["sd-1"]
#: names other tools write for families this project has no entry for
_OTHER_TITLES = {"sd_v2": "SD 2.x", "sd_v2_768_v": "SD 2.x"}


def of_pipeline(pipe) -> Family:
    """The family of a loaded pipeline: of those whose LoRA components it has, the one with the most (an SDXL
    pipeline has SD 1.x's ``unet`` and ``text_encoder`` too). Read from the models present, not the class name, so
    any pipeline class of the family (text-to-image, image-to-image) is known."""
    fitting = [f for f in FAMILIES.values() if all(getattr(pipe, c, None) is not None for c in f.lora_components)]
    if not fitting:
        raise ValueError(f"{type(pipe).__name__} has none of the known families' models ({', '.join(FAMILIES)})")
    return max(fitting, key=lambda f: len(f.lora_components))


def title_of(name: str) -> str:
    """A family in words, from our name or kohya's (``sd-1``, ``sd_v1``, ``sdxl_base_v1-0``); unknown: as given."""
    for family in FAMILIES.values():
        if name in (family.name, family.kohya_version):
            return family.title
    return _OTHER_TITLES.get(name, name or "an unknown base")
