"""Generation with LoRAs: swap cost vs diffusers, whole predictions, patch cost vs sampling, cached URL, memory.

(a) ``swap_*``: the warm pipeline goes from one pair of LoRAs to another pair whose files are
    in the local file cache (URL -> file -> bound adapter -> merged into the weights, restored), against diffusers'
    ``unload_lora_weights`` + ``load_lora_weights`` of the same files on the same model. Run on
    the tiny base and on an SD-1.5-sized pipeline with random weights (same shapes as SD 1.5).
    "cold": the adapters are bound from the files each time; "warm": found in the adapter cache.
(b) ``prediction_*``: a whole prediction that switches to the other pair (swap + sampling + restore) against the
    bare base's prediction and against each of diffusers' ways to switch: unload + load; every adapter kept loaded
    and ``set_adapters`` (fast switch, unfused sampling); ``fuse_lora``/``unfuse_lora`` (fused sampling);
    ``hotswap=True`` into loaded adapters (``enable_lora_hotswap``; UNet only, diffusers cannot hotswap a text
    encoder). diffusers' ways leave the token vectors out: they do less work than ours.
(c) ``patch_fraction_of_sampling``: entering + leaving ``patching.applied`` with 2 LoRAs, as a
    fraction of one 25-step sampling on the tiny base.
(d) ``cached_url_resolve``: resolving a URL already in the file cache (time, bytes, requests).
(e) ``generate_peak_rss``: peak RSS of a process generating with 2 LoRAs vs. the base alone.
(f) ``rss_after_many_predictions``: RSS after 200 alternating predictions vs after 10 (a leak would grow it).
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
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from bench.results import Metric
from lora_core.base import checkpoints, sampling
from lora_core.lora import binding, lora_file, patching
from lora_core.net import fetch
from lora_core.tools import sd15_sized

RANK = 8
# a whole prediction's sampling steps: 25 as users sample; at SD-1.5 size a CPU step takes about a second, so 10
# there (a quick run compares the ways on the tiny base only: what it checks is that every way runs)
PREDICTION_STEPS = {"tiny": 25, "sd15": 10}


# --- fixtures: an SD-1.5-sized pipeline and LoRA files ---------------------------------------------------------


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
    """Median seconds to go from LoRAs (urls[0], urls[1]) to (urls[2], urls[3]) and back: ours with the files read
    and bound each time ("cold") or found bound ("warm"), ours entering the same pair at the same scales again (a
    user's next batch: "repeat"), diffusers' unload + load; and "copy", copying the weights of the layers the
    LoRAs touch once (what any merge into a second buffer must at least read and write)."""
    pairs = [urls[:2], urls[2:4]]
    files = [[fetcher.fetch(u).path for u in pair] for pair in pairs]
    scales = [0.5, 0.7]
    cache = binding.BindingCache()
    state = {"turn": 0, "context": None}

    def ours(use_cache: bool, alternate: bool = True):
        def swap():
            pair = pairs[state["turn"] % 2]
            state["turn"] += alternate
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
    for name, fn in (("cold", ours(False)), ("warm", ours(True)), ("repeat", ours(True, alternate=False))):
        result[name] = _median_seconds(fn, repeats)
        close()
    weights = [
        getattr(pipe, path.split(".", 1)[0]).get_submodule(path.split(".", 1)[1]).weight
        for path in binding.bind(pipe, *lora_file.read_lora(files[0][0])).layers
    ]
    buffers = [torch.empty_like(w) for w in weights]
    result["copy"] = _median_seconds(lambda: [b.copy_(w) for b, w in zip(buffers, weights, strict=True)], repeats)
    result["diffusers"] = _median_seconds(diffusers_swap, repeats)
    pipe.unload_lora_weights()
    return result


# --- (b) whole predictions: ours against each of diffusers' ways ------------------------------------------------


def _lora_tensors(path: Path, unet_only: bool = False) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in lora_file.read_lora(path)[0].items() if k != lora_file.EMBEDDINGS_KEY}
    return {k: v for k, v in tensors.items() if k.startswith("unet.")} if unet_only else tensors


def prediction_seconds(pipe, files: list[list[Path]], steps: int, repeats: int) -> dict[str, float]:
    """Median seconds of one prediction that switches to the other pair of LoRAs (already read and bound, as in
    the adapter cache) and samples ``steps`` steps, for ours, the bare base, and diffusers' four ways.

    Every way runs on its own copy of the pipeline (ours and the bare base on one), diffusers' kept in their steady
    state (adapters loaded, fused or prepared for hotswapping): the copies hold their weights in the same kind of
    memory, where the loaded pipeline's are memory-mapped from its files (the bare original sampled ~15% slower
    than copies at SD-1.5 size here). The rounds interleave the ways: every way sees the same machine state (this
    shared machine's speed drifts by tens of percent within minutes)."""
    import copy

    defaults = checkpoints.get_checkpoint("tiny").defaults
    request = sampling.resolve_request(defaults, prompt="a photo of object", seed=0, num_inference_steps=steps)
    scales = [0.5, 0.7]
    tensors = [[_lora_tensors(f) for f in pair] for pair in files]
    unet_only = [[_lora_tensors(f, unet_only=True) for f in pair] for pair in files]
    names = [[f"p{i}a", f"p{i}b"] for i in range(len(files))]
    copies = {way: copy.deepcopy(pipe) for way in ("ours", "unload+load", "set_adapters", "fuse_lora", "hotswap")}
    ours_pipe = copies["ours"]
    bound = [[binding.bind(ours_pipe, *lora_file.read_lora(f)) for f in pair] for pair in files]

    def load(target, pairs, state=tensors) -> None:
        for pair in pairs:
            for name, weights in zip(names[pair], state[pair], strict=True):
                target.load_lora_weights(dict(weights), adapter_name=name)

    load(copies["unload+load"], [0])
    load(copies["set_adapters"], [0, 1])
    load(copies["fuse_lora"], [0, 1])
    copies["fuse_lora"].set_adapters(names[0], adapter_weights=scales)
    copies["fuse_lora"].fuse_lora(adapter_names=names[0])
    copies["hotswap"].enable_lora_hotswap(target_rank=RANK)
    load(copies["hotswap"], [0], unet_only)
    copies["hotswap"].set_adapters(names[0], adapter_weights=scales)

    def unload_load(pair: int) -> None:
        target = copies["unload+load"]
        target.unload_lora_weights()
        load(target, [pair])
        target.set_adapters(names[pair], adapter_weights=scales)
        sampling.sample(target, request)

    def set_adapters(pair: int) -> None:
        copies["set_adapters"].set_adapters(names[pair], adapter_weights=scales)
        sampling.sample(copies["set_adapters"], request)

    def fuse(pair: int) -> None:
        target = copies["fuse_lora"]
        target.unfuse_lora()
        target.set_adapters(names[pair], adapter_weights=scales)
        target.fuse_lora(adapter_names=names[pair])
        sampling.sample(target, request)

    def hotswap(pair: int) -> None:
        target = copies["hotswap"]
        for name, weights in zip(names[0], unet_only[pair], strict=True):  # into the loaded adapters' slots
            target.load_lora_weights(dict(weights), adapter_name=name, hotswap=True)
        sampling.sample(target, request)

    def ours(pair: int) -> None:
        with patching.applied(ours_pipe, bound[pair], scales):
            sampling.sample(ours_pipe, request)

    ways = {
        "bare": lambda _pair: sampling.sample(ours_pipe, request),
        "ours": ours,
        "diffusers unload+load": unload_load,
        "diffusers set_adapters": set_adapters,
        "diffusers fuse_lora": fuse,
        "diffusers hotswap": hotswap,
    }
    result = _interleaved(ways, repeats)
    copies.clear()  # the copies go before the next measurement
    return result


def _interleaved(ways: Mapping[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each way, run in interleaved rounds (round 0 warms up, untimed). Each is called with the
    pair of LoRAs to switch to, 1 then 0 then 1…: every round switches to the other pair."""
    times: dict[str, list[float]] = {way: [] for way in ways}
    for round_ in range(repeats + 1):
        for way, run in ways.items():
            start = time.perf_counter()
            run(1 - round_ % 2)
            if round_:
                times[way].append(time.perf_counter() - start)
    return {way: statistics.median(t) for way, t in times.items()}


# --- (c) patch cost vs sampling, (d) cached URL ----------------------------------------------------------------


def patch_and_sample_seconds(pipe, bound: list[binding.BoundLoRA], repeats: int) -> tuple[float, float, float]:
    """(enter+leave ``applied`` with 2 LoRAs, one 25-step sampling without, the same with them). The scales
    alternate, so that every entry merges afresh (the same LoRAs at the same scales merge nothing)."""
    turn = [0]

    def patch():
        turn[0] += 1
        with patching.applied(pipe, bound, [0.5 + 0.1 * (turn[0] % 2)] * 2):
            pass

    defaults = checkpoints.get_checkpoint("tiny").defaults
    request = sampling.resolve_request(defaults, prompt="a photo of a red circle", seed=0, num_inference_steps=25)

    def sample_with(pair: int) -> None:
        with patching.applied(pipe, bound, [0.5 + 0.1 * pair] * 2):
            sampling.sample(pipe, request)

    both = _interleaved({"without": lambda _pair: sampling.sample(pipe, request), "with": sample_with}, repeats)
    return _median_seconds(patch, repeats * 10), both["without"], both["with"]


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


# --- (e) peak RSS, each case in a fresh process -----------------------------------------------------------------


def _peak_rss_mb(base: str, lora_paths: list[str]) -> float:
    """Peak RSS (MB) of generating in a fresh process, counted from after the base is loaded: loading an fp16
    checkpoint as fp32 peaks higher than anything after it and would hide the LoRAs. Linux resets the
    peak (VmHWM) when 5 is written to /proc/self/clear_refs."""
    code = f"""
import gc, re
from pathlib import Path
from lora_core.lora import binding, lora_file, patching
from lora_core.base import checkpoints, sampling
from lora_core.tools import sd15_sized
pipe = sd15_sized.load(dtype=__import__('torch').float32) if {base!r} == 'sd15' else \\
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


RSS_PREDICTIONS = 200


def _rss_over_predictions(folder: Path, predictions: int) -> tuple[float, float]:
    """(RSS in MB after 10 predictions, after ``predictions``) of a fresh process running predictions through
    ``generation_job.run_generation`` as the predictor does: each URL fetched (from the file cache after the
    first time) and bound (or found bound), merged, sampled, restored; alternating between the pairs (0, 1) and
    (2, 3) of ``folder``'s LoRAs, at scales that change every few predictions."""
    code = f"""
import re, tempfile
from pathlib import Path
from bench.lora_swap import fetcher_for, serve
from lora_core.base import checkpoints
from lora_core.lora import binding, generation_job
root, server = serve(Path({str(folder)!r}))
bases, cache = checkpoints.WarmPipelineCache(), binding.BindingCache()
fetcher = fetcher_for(Path(tempfile.mkdtemp()))
rss = {{}}
for n in range({predictions}):
    first = 2 * (n % 2)
    generation_job.run_generation(
        bases, fetcher, cache, prompt="a photo of <1> and <2>",
        lora_urls=f"{{root}}/lora{{first}}.safetensors|{{root}}/lora{{first + 1}}.safetensors",
        lora_scales=f"{{0.3 + 0.1 * (n // 4 % 5):.1f}}|0.6", base_model="tiny", log=lambda _: None,
        num_inference_steps=4, seed=n,
    )
    if n + 1 in (10, {predictions}):
        rss[n + 1] = int(re.search(r"VmRSS:\\s+(\\d+) kB", Path('/proc/self/status').read_text())[1]) / 1024
print(rss[10], rss[{predictions}])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=checkpoints.REPO_ROOT)
    if out.returncode:
        raise RuntimeError(f"RSS run failed:\n{out.stderr[-3000:]}")
    after_10, after_all = out.stdout.strip().splitlines()[-1].split()
    return float(after_10), float(after_all)


def measure(repeats: int, quick: bool = False) -> list[Metric]:
    metrics: list[Metric] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = {"tiny": checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))}
        cases["tiny"].set_progress_bar_config(disable=True)
        cases["sd15"] = sd15_sized.load()
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
            modes = {
                "cold": "read + bind each time",
                "warm": "adapters already bound",
                "repeat": "the same pair at the same scales again (a user's next batch): nothing to merge",
            }
            for mode, how in modes.items():
                metrics.append(
                    Metric(
                        f"swap_{mode}_{name}_ms",
                        s[mode] * 1e3,
                        "ms",
                        baseline=s["diffusers"] * 1e3,
                        ratio=s[mode] / s["diffusers"],
                        limit=50.0 if name == "sd15" and mode == "repeat" else None,
                        note=f"{name}: {what}; {how}",
                    )
                )
            metrics.append(
                Metric(
                    f"swap_vs_copy_{name}",
                    s["warm"] / s["copy"],
                    "x",
                    baseline=s["copy"] * 1e3,
                    ratio=s["warm"] / s["copy"],
                    note=f"{name}: a warm swap to a new pair (merging W + up@down into the layers' second buffers) "
                    "vs only copying the same layers' weights once, the memory traffic any such merge needs",
                )
            )
            if name == "tiny":
                bound = [binding.bind(pipe, *lora_file.read_lora(fetcher.fetch(u).path)) for u in urls[:2]]
                rounds = max(3, repeats // 2)  # 10 in a full run: with 5, sampling_with_2_loras moved ±7%
                patch_s, sample_s, sample_with_s = patch_and_sample_seconds(pipe, bound, rounds)
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
            if quick and name == "sd15":  # six SD-1.5-sized copies (16 GB here, past 20 minutes with the swaps)
                continue
            files = [[folder / f"lora{n}.safetensors" for n in pair] for pair in ((0, 1), (2, 3))]
            steps = PREDICTION_STEPS[name]
            p = prediction_seconds(pipe, files, steps, max(3, repeats // 4))
            best = min((k for k in p if k.startswith("diffusers")), key=p.__getitem__)
            ways = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in p.items())
            metrics.append(
                Metric(
                    f"prediction_with_swap_vs_bare_{name}",
                    p["ours"] / p["bare"],
                    "x",
                    baseline=p["bare"] * 1e3,
                    ratio=p["ours"] / p["bare"],
                    limit=1.05,
                    note=f"{name}: a prediction that switches to the other pair of cached LoRAs (swap, {steps}-step "
                    f"64 px sampling, restore) vs the bare base's prediction; {ways}",
                )
            )
            metrics.append(
                Metric(
                    f"prediction_with_swap_vs_diffusers_{name}",
                    p["ours"] / p[best],
                    "x",
                    baseline=p[best] * 1e3,
                    ratio=p["ours"] / p[best],
                    limit=1.0,
                    note=f"{name}: the same prediction vs diffusers' fastest way here ({best}); "
                    "diffusers' ways skip the token vectors, hotswap skips the text encoder too",
                )
            )
        del cases
        after_10, after_all = _rss_over_predictions(tmp / "tiny", RSS_PREDICTIONS // (10 if quick else 1))
        metrics.append(
            Metric(
                "rss_after_many_predictions",
                after_all / after_10,
                "x",
                baseline=after_10,
                ratio=after_all / after_10,
                limit=1.05,
                note=f"RSS of a generation process (tiny base, the predictor's fetcher and adapter cache) after "
                f"{RSS_PREDICTIONS // (10 if quick else 1)} predictions alternating between two pairs of LoRAs at "
                f"changing scales ({after_all:.0f} MB) vs after 10 ({after_10:.0f} MB)",
            )
        )
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
