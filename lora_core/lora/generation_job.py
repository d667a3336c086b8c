"""One generation prediction: validate everything, fetch the LoRAs, patch, sample, unpatch.

Order matters for users: every input is checked before a byte is downloaded, and every
LoRA is read and bound (vetted against the base) before the warm pipeline is patched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from lora_core import provenance
from lora_core.base import checkpoints, placement, sampling
from lora_core.lora import binding, lora_file, patching, prompts
from lora_core.net import fetch


def load_adapters(
    fetcher: fetch.Fetcher,
    cache: binding.BindingCache,
    bases: checkpoints.WarmPipelineCache,
    urls: list[str],
    log: Callable[[str], None],
) -> list[tuple[binding.BoundLoRA, fetch.FetchedFile]]:
    """Each URL fetched (or found in the file cache) and bound to the warm base (or found in ``cache``)."""
    pipe, loaded = bases.pipeline, []
    for i, url in enumerate(urls, 1):
        label = f"LoRA {i} ({prompts.lora_name(url) or 'data'})"
        fetched = fetcher.fetch(url)
        source = "cache" if fetched.downloaded_bytes == 0 else f"{fetched.downloaded_bytes / 1e6:.2f} MB downloaded"

        def bind(fetched=fetched, label=label) -> binding.BoundLoRA:  # called now; bound anyway
            tensors, metadata = lora_file.read_lora(fetched.path, name=label)
            return binding.bind(pipe, tensors, metadata, name=label, base_label=f"base model {bases.name!r}")

        misses = cache.misses
        adapter = cache.get(fetched.sha256, f"{bases.name}:{bases.base_hash}", bind)
        log(
            f"<{i}> = {label}: {fetched.size / 1e6:.2f} MB, file from {source}, sha256 {fetched.sha256[:12]}, "
            f"{adapter.layout} layout, {len(adapter.layers)} layers"
            f"{f', {adapter.token_count} token vectors' if adapter.token_count else ''}"
            f"{', bound now' if cache.misses > misses else ', already bound'}"
        )
        loaded.append((adapter, fetched))
    return loaded


@dataclass(frozen=True)
class Generation:
    images: list  # PIL images, output i drawn with seed + i
    settings: sampling.SamplingRequest  # as resolved (the seed it drew included), with the prompt as the user wrote it
    provenance: provenance.Provenance  # what decided the pixels: to re-make them, or say why that cannot be exact


def _settings(checkpoint: checkpoints.Checkpoint, prompt: str, settings: dict) -> sampling.SamplingRequest:
    try:
        return sampling.resolve_request(checkpoint.defaults, prompt=prompt, **settings)
    except ValidationError as e:
        raise sampling.SettingsError.of(e) from None


def run_generation(
    bases: checkpoints.WarmPipelineCache,
    fetcher: fetch.Fetcher,
    cache: binding.BindingCache,
    *,
    prompt: str,
    lora_urls: str,
    lora_scales: str,
    base_model: str | None,
    log: Callable[[str], None] = print,
    **settings,
) -> Generation:
    """One prediction's images; ``settings`` are ``SamplingRequest`` fields (None = the base's default), and no
    ``base_model`` is the deployment's default base (``LORA_STUDIO_DEFAULT_BASE``); a URL is the user's own
    checkpoint (``own_checkpoints``), as is a hub id."""
    prompt, urls, scales = prompts.parse_request(prompt, lora_urls, lora_scales)
    base_model = base_model or placement.default_base()
    named = checkpoints.REGISTRY.get(base_model)
    # validated before fetching; a URL's defaults come with its file, so it is checked with the default base's first
    request = _settings(named or checkpoints.get_checkpoint(placement.default_base()), prompt, settings)
    checkpoint = named or bases.checkpoint_of(base_model)
    if named is None:
        request = _settings(checkpoint, prompt, settings)
    pipe = bases.load(checkpoint)
    loaded = load_adapters(fetcher, cache, bases, urls, log)
    record = provenance.Provenance(
        seed=request.seed,
        base_model=base_model,
        base_hash=bases.base_hash,
        loras=[
            provenance.LoRAUse(url=url, sha256=fetched.sha256, size=fetched.size, scale=scale)
            for url, (_, fetched), scale in zip(urls, loaded, scales, strict=True)
        ],
        settings=request.model_dump(mode="json"),
        versions=provenance.versions(),
        device=str(pipe.device),
        machine=placement.machine(str(pipe.device)),
        dtype=str(pipe.unet.dtype).removeprefix("torch."),
    )
    with patching.applied(pipe, [adapter for adapter, _ in loaded], scales) as texts:
        expanded = request.model_copy(update={"prompt": prompts.expand(prompt, texts)})
        log(
            f"base model {base_model}; settings: {request.model_dump_json()}; scales: {scales}; "
            f"expanded prompt: {expanded.prompt!r}"
        )
        return Generation(sampling.sample(pipe, expanded, log=log), request, record)
