"""One generation prediction: validate everything, fetch the LoRAs, patch, sample, unpatch.

Order matters for users: every input is checked before a byte is downloaded, and every
LoRA is read and vetted before the warm pipeline is touched.
"""

from __future__ import annotations

from typing import Callable

from . import checkpoints, fetch, lora_file, patching, prompts, sampling


def load_loras(fetcher: fetch.Fetcher, urls: list[str], log: Callable[[str], None]) -> list[patching.LoRA]:
    loras = []
    for i, url in enumerate(urls, 1):
        label = f"LoRA {i} ({prompts.lora_name(url) or 'data'})"
        fetched = fetcher.fetch(url)
        source = "cache" if fetched.downloaded_bytes == 0 else f"{fetched.downloaded_bytes / 1e6:.2f} MB downloaded"
        log(f"<{i}> = {label}: {fetched.size / 1e6:.2f} MB, {source}, sha256 {fetched.sha256[:12]}")
        tensors, metadata = lora_file.read_lora(fetched.path, name=label)
        loras.append(patching.LoRA.from_tensors(tensors, metadata, name=label))
    return loras


def run_generation(bases: checkpoints.WarmPipelineCache, fetcher: fetch.Fetcher, *, prompt: str, lora_urls: str,
                   lora_scales: str, base_model: str, log: Callable[[str], None] = print, **settings) -> list:
    """PIL images for one prediction; ``settings`` are ``SamplingRequest`` fields (None = the base's default)."""
    prompt, urls, scales = prompts.parse_request(prompt, lora_urls, lora_scales)
    checkpoint = checkpoints.get_checkpoint(base_model)
    request = sampling.resolve_request(checkpoint.defaults, prompt=prompt, **settings)  # validated before fetching
    loras = load_loras(fetcher, urls, log)
    pipe = bases.get(base_model)
    with patching.applied(pipe, loras, scales) as texts:
        request = request.model_copy(update={"prompt": prompts.expand(prompt, texts)})
        log(f"settings: {request.model_copy(update={'prompt': prompt}).model_dump_json()}; "
            f"scales: {scales}; expanded prompt: {request.prompt!r}")
        return sampling.sample(pipe, request)
