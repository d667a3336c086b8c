"""Generation with LoRAs: swap cost vs diffusers, patch cost vs sampling, cached URL resolve, peak memory.

(a) ``swap_*``: the warm pipeline goes from one pair of LoRAs to another pair whose files are
    in the local file cache (URL -> file -> bound adapter -> merged into the weights, restored), against diffusers'
    ``unload_lora_weights`` + ``load_lora_weights`` of the same files on the same model. Run on
    the tiny base and on an SD-1.5-sized pipeline with random weights (same shapes as SD 1.5).
    "cold": the adapters are bound from the files each time; "warm": found in the adapter cache.
(b) ``patch_fraction_of_sampling``: entering + leaving ``patching.applied`` with 2 LoRAs, as a
    fraction of one 25-step sampling on the tiny base.
(c) ``cached_url_resolve``: resolving a URL already in the file cache (time, bytes, requests).
(d) ``generate_peak_rss``: peak RSS of a process generating with 2 LoRAs vs. the base alone.
"""

from __future__ import annotations

import http.server
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.results import Metric
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, lora_file, patching
from lora_core.net import fetch

SD15_DIR = checkpoints.REPO_ROOT / ".build" / "bench-sd15-random"
RANK = 8


# --- fixtures: an SD-1.5-sized pipeline and LoRA files ---------------------------------------------------------


def sd15_sized_pipeline(dtype=torch.float16):
    """SD 1.5's UNet, text encoder and VAE shapes with random weights, saved once and memory-mapped after."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if not (SD15_DIR / "model_index.json").exists():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
            )
        )
        tiny = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tiny.tokenizer,
            unet=unet,
            scheduler=PNDMScheduler.from_config(tiny.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).to(dtype=dtype)
        pipe.save_pretrained(SD15_DIR, safe_serialization=True)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        SD15_DIR, dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_loras(pipe, folder: Path, count: int = 4) -> list[Path]:
    """``count`` LoRA files in our layout (r8 on attention and text encoder, two token vectors, fp16)."""
    table = binding.module_table(pipe)
    targets = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
    hidden = pipe.text_encoder.config.hidden_size
    paths = []
    for n in range(count):
        gen = torch.Generator().manual_seed(n)
        tensors = {}
        for path, shape in table.shapes.items():
            if path.endswith(targets) and len(shape) == 2:
                tensors[f"{path}.lora_A.weight"] = torch.randn(RANK, shape[1], generator=gen).half() * 0.01
                tensors[f"{path}.lora_B.weight"] = torch.randn(shape[0], RANK, generator=gen).half() * 0.01
        tensors[lora_file.EMBEDDINGS_KEY] = torch.randn(2, hidden, generator=gen).half()
        meta = {
            "lora_studio.tokens": json.dumps(["<s0>", "<s1>"]),
            "lora_studio.init_word": "object",
            "lora_studio.base_family": "sd-1",
        }
        paths.append(lora_file.write_lora(folder / f"lora{n}.safetensors", tensors, meta))
    return paths


class _Counting(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Counting.requests += 1
        super().do_GET()


def serve(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = lambda *a, **k: _Counting(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def fetcher_for(cache_dir: Path) -> fetch.Fetcher:
    return fetch.Fetcher(
        fetch.FetchPolicy(cache_dir=cache_dir, allowed_private_hosts=("127.0.0.1",)), log=lambda _: None
    )


# --- (a) swap ---------------------------------------------------------------------------------------------------


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def swap_seconds(pipe, fetcher: fetch.Fetcher, urls: list[str], repeats: int) -> dict[str, float]:
    """Median seconds to go from LoRAs (urls[0], urls[1]) to (urls[2], urls[3]) and back, three ways."""
    pairs = [urls[:2], urls[2:4]]
    files = [[fetcher.fetch(u).path for u in pair] for pair in pairs]
    scales = [0.5, 0.7]
    cache = binding.BindingCache()
    state = {"turn": 0, "context": None}

    def ours(use_cache: bool):
        def swap():
            pair = pairs[state["turn"] % 2]
            state["turn"] += 1
            if state["context"] is not None:
                state["context"].__exit__(None, None, None)
            if not use_cache:
                cache._items.clear()
            bound = []
            for url in pair:
                fetched = fetcher.fetch(url)
                bound.append(
                    cache.get(
                        fetched.sha256,
                        "bench",
                        lambda fetched=fetched: binding.bind(pipe, *lora_file.read_lora(fetched.path)),
                    )
                )
            state["context"] = patching.applied(pipe, bound, scales)
            state["context"].__enter__()

        return swap

    def close():
        if state["context"] is not None:
            state["context"].__exit__(None, None, None)
            state["context"] = None

    def diffusers_swap():
        pair = files[state["turn"] % 2]
        state["turn"] += 1
        pipe.unload_lora_weights()
        names = []
        for i, path in enumerate(pair):
            tensors = {k: v for k, v in lora_file.read_lora(path)[0].items() if k != lora_file.EMBEDDINGS_KEY}
            names.append(f"bench_adapter_{i}")
            pipe.load_lora_weights(tensors, adapter_name=names[-1])
        pipe.set_adapters(names, adapter_weights=scales)

    result = {}
    for name, fn in (("cold", ours(False)), ("warm", ours(True))):
        result[name] = _median_seconds(fn, repeats)
        close()
    result["diffusers"] = _median_seconds(diffusers_swap, repeats)
    pipe.unload_lora_weights()
    return result


# --- (b) patch cost vs sampling, (c) cached URL ----------------------------------------------------------------


def patch_and_sample_seconds(pipe, bound: list[binding.BoundLoRA], repeats: int) -> tuple[float, float, float]:
    """(enter+leave ``applied`` with 2 LoRAs, one 25-step sampling without, the same with them)."""

    def patch():
        with patching.applied(pipe, bound, [0.5, 0.5]):
            pass

    defaults = checkpoints.get_checkpoint("tiny").defaults
    request = sampling.resolve_request(defaults, prompt="a photo of a red circle", seed=0, num_inference_steps=25)

    def sample():
        sampling.sample(pipe, request)

    def sample_with():
        with patching.applied(pipe, bound, [0.5, 0.5]):
            sampling.sample(pipe, request)

    return (
        _median_seconds(patch, repeats * 10),
        _median_seconds(sample, repeats),
        _median_seconds(sample_with, repeats),
    )


def cached_resolve(fetcher: fetch.Fetcher, url: str, repeats: int) -> tuple[float, int, int]:
    """(median seconds, bytes downloaded, requests made) resolving ``url`` once it is cached."""
    fetcher.fetch(url)
    before = _Counting.requests
    downloaded = 0

    def resolve():
        nonlocal downloaded
        downloaded += fetcher.fetch(url).downloaded_bytes

    seconds = _median_seconds(resolve, repeats)
    return seconds, downloaded, _Counting.requests - before


# --- (d) peak RSS, each case in a fresh process -----------------------------------------------------------------


def _peak_rss_mb(base: str, lora_paths: list[str]) -> float:
    """Peak RSS (MB) of generating in a fresh process, counted from after the base is loaded: loading an fp16
    checkpoint as fp32 peaks higher than anything after it and would hide the LoRAs. Linux resets the
    peak (VmHWM) when 5 is written to /proc/self/clear_refs."""
    code = f"""
import gc, re
from pathlib import Path
from lora_core.lora import binding, lora_file, patching
from lora_core.base import checkpoints, sampling
from bench.lora_swap import sd15_sized_pipeline
pipe = sd15_sized_pipeline(dtype=__import__('torch').float32) if {base!r} == 'sd15' else \\
    checkpoints.load_pipeline(checkpoints.get_checkpoint('tiny'))
pipe.set_progress_bar_config(disable=True)
gc.collect()
Path('/proc/self/clear_refs').write_text('5')
bound = [binding.bind(pipe, *lora_file.read_lora(p)) for p in {lora_paths!r}]
defaults = checkpoints.get_checkpoint('tiny').defaults
with patching.applied(pipe, bound, [0.5] * len(bound)) as texts:
    prompt = 'a photo of ' + (' and '.join(texts) or 'object')
    request = sampling.resolve_request(defaults, prompt=prompt, seed=0, num_inference_steps=2, num_outputs=2)
    sampling.sample(pipe, request)
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path('/proc/self/status').read_text())[1]) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=checkpoints.REPO_ROOT)
    if out.returncode:
        raise RuntimeError(f"peak-RSS run failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def measure(repeats: int) -> list[Metric]:
    metrics: list[Metric] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = {"tiny": checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))}
        cases["tiny"].set_progress_bar_config(disable=True)
        cases["sd15"] = sd15_sized_pipeline()
        for name, pipe in cases.items():
            folder = tmp / name
            folder.mkdir()
            write_random_loras(pipe, folder)
            root, server = serve(folder)
            fetcher = fetcher_for(tmp / f"cache-{name}")
            urls = [f"{root}/lora{n}.safetensors" for n in range(4)]
            s = swap_seconds(pipe, fetcher, urls, repeats)
            size_mb = (folder / "lora0.safetensors").stat().st_size / 1e6
            what = (
                f"pair -> pair of {size_mb:.1f} MB fp16 r{RANK} LoRAs (with token vectors) in the file cache; "
                "baseline: diffusers unload_lora_weights + load_lora_weights x2 + set_adapters"
            )
            if name == "sd15":  # the headline figures: a real-sized model
                metrics.append(
                    Metric(
                        "lora_swap_vs_diffusers",
                        s["cold"] / s["diffusers"],
                        "x",
                        baseline=s["diffusers"] * 1e3,
                        ratio=s["cold"] / s["diffusers"],
                        limit=0.25,
                        note=f"SD-1.5-sized pipeline (random weights, fp16): {what}; ours reads and "
                        "binds the files each time",
                    )
                )
                metrics.append(
                    Metric(
                        "lora_swap_ms_sd15",
                        s["cold"] * 1e3,
                        "ms",
                        baseline=s["diffusers"] * 1e3,
                        ratio=s["cold"] / s["diffusers"],
                        limit=50.0,
                        note="the same swap, in ms",
                    )
                )
            for mode in ("cold", "warm"):
                metrics.append(
                    Metric(
                        f"swap_{mode}_{name}_ms",
                        s[mode] * 1e3,
                        "ms",
                        baseline=s["diffusers"] * 1e3,
                        ratio=s[mode] / s["diffusers"],
                        note=f"{name}: {what}; "
                        + ("read + bind each time" if mode == "cold" else "adapters already bound"),
                    )
                )
            if name == "tiny":
                bound = [binding.bind(pipe, *lora_file.read_lora(fetcher.fetch(u).path)) for u in urls[:2]]
                patch_s, sample_s, sample_with_s = patch_and_sample_seconds(pipe, bound, max(3, repeats // 4))
                fraction = patch_s / sample_s
                metrics.append(
                    Metric(
                        "patch_overhead_fraction",
                        fraction,
                        "x",
                        baseline=sample_s * 1e3,
                        ratio=fraction,
                        limit=0.05,
                        note=f"patch+unpatch 2 LoRAs {patch_s * 1e3:.2f} ms vs one 25-step 64px "
                        f"sampling {sample_s * 1e3:.0f} ms, tiny base",
                    )
                )
                overhead = sample_with_s / sample_s
                metrics.append(
                    Metric(
                        "sampling_with_2_loras",
                        overhead,
                        "x",
                        baseline=sample_s * 1e3,
                        ratio=overhead,
                        limit=1.03,
                        note="25-step sampling with 2 LoRAs applied (merged in, restored after: the whole "
                        "prediction's LoRA cost) / without, tiny",
                    )
                )
                seconds, downloaded, requests = cached_resolve(fetcher, urls[0], repeats * 10)
                metric = Metric(
                    "cached_fetch_ms",
                    seconds * 1e3,
                    "ms",
                    limit=10.0,
                    note=f"resolving a cached lora_url: {downloaded} bytes downloaded, {requests} HTTP requests",
                )
                metric.met = metric.met and downloaded == 0 and requests == 0
                metric.goal += ", 0 bytes"
                metrics.append(metric)
            server.shutdown()
        del cases
        for name in ("sd15", "tiny"):
            paths = sorted(str(p) for p in (tmp / name).glob("lora[01].safetensors"))
            base_mb, with_mb = _peak_rss_mb(name, []), _peak_rss_mb(name, paths)
            note = (
                f"peak RSS of a fresh process generating 2 images with 2 LoRAs ({with_mb:.0f} MB) vs the base "
                f"alone ({base_mb:.0f} MB)"
            )
            if name == "sd15":
                metrics.append(
                    Metric(
                        "peak_rss_ratio",
                        with_mb / base_mb,
                        "x",
                        baseline=base_mb,
                        ratio=with_mb / base_mb,
                        limit=1.3,
                        note=note + ", SD-1.5-sized pipeline (fp32, 64px, 2 steps)",
                    )
                )
            metrics.append(
                Metric(
                    f"generate_peak_rss_{name}_mb", with_mb, "MB", baseline=base_mb, ratio=with_mb / base_mb, note=note
                )
            )
    return metrics
