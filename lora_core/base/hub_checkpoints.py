"""Base checkpoints by hub id (``base_model: owner/name``), from the deployment's hub into the checkpoint cache.

A diffusers repository, or one holding a single ``.safetensors``, is chosen, downloaded and checked as
``lora-studio weights fetch`` does it (``weights_fetch.fetch_listed``: safetensors only, every listed path checked,
the sha256 or git sha1 of every file), under the checkpoint size cap, from ``HF_ENDPOINT`` with ``HF_TOKEN``: the
host is the operator's, only the repository is the user's. Which commit ``main`` is gets asked again after the
fetcher's TTL (24 h); in between, a prediction asks the hub nothing. One lock per repository across processes; the
least recently used repositories go when the cache passes its bound.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lora_core.base import checkpoints
from lora_core.catalog import families
from lora_core.net.fetch import FetchPolicy, file_lock

Layout = Literal["diffusers", "single_file"]


@dataclass(frozen=True)
class HubFiles:
    layout: Layout
    path: Path  # the pipeline folder, or the single file
    commit: str
    downloaded_bytes: int  # 0 when the cache answered


class HubCache:
    """Hub repositories under ``policy.cache_dir / "hub"``, one folder per repository holding its latest commit."""

    def __init__(self, policy: FetchPolicy, log: Callable[[str], None] = print) -> None:
        self.policy, self.log = policy, log
        self.root = policy.cache_dir / "hub"

    def get(self, repo: str) -> HubFiles:
        """``repo``'s files at its ``main``; raises ``HubError`` or ``WeightsFetchError`` with a sentence."""
        folder = self.root / repo.replace("/", "--")
        with self._lock(folder.name):
            memo = _read(folder / "main.json")
            if memo and time.time() - memo["checked_at"] < self.policy.ttl_s and (folder / memo["path"]).exists():
                os.utime(folder / "main.json")  # LRU: recently used
                return HubFiles(memo["layout"], folder / memo["path"], memo["commit"], 0)
            files = self._fetch(repo, folder)
            memo = {"layout": files.layout, "path": files.path.name, "commit": files.commit, "checked_at": time.time()}
            (folder / "main.json").write_text(json.dumps(memo))
            for old in folder.iterdir():  # an earlier commit's files
                if old.name not in (files.path.name, "main.json"):
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        self._prune(keep=folder)
        return files

    def _fetch(self, repo: str, folder: Path) -> HubFiles:
        from lora_core.base import weights_fetch
        from lora_core.base.hub_listing import list_repo

        options = weights_fetch.FetchOptions.from_env()
        listing = list_repo(repo, options, self.log)
        paths = {e.path for e in listing.files}
        layout: Layout = "diffusers" if "model_index.json" in paths else "single_file"
        family = families.FAMILIES["sdxl" if any(p.startswith("text_encoder_2/") for p in paths) else "sd-1"]
        name = listing.commit[:12] + ("" if layout == "diffusers" else ".safetensors")
        wanted = checkpoints.REGISTRY["tiny"].model_copy(  # what to fetch: only layout, family and path count
            update=dict(name=repo, family=family.name, layout=layout, path=name, source=repo)
        )
        summary = weights_fetch.fetch_listed(
            repo, listing, options, wanted, folder / name, self.log, max_bytes=self.policy.max_bytes
        )
        self.log(f"{repo}@{listing.commit[:12]}: {len(summary.fetched)} files fetched, {len(summary.present)} present")
        return HubFiles(layout, folder / name, listing.commit, summary.bytes_downloaded)

    def _lock(self, name: str):
        self.root.mkdir(parents=True, exist_ok=True)
        return file_lock(self.root / f".{name}.lock")

    def _prune(self, keep: Path) -> None:
        """Least recently used repositories go until the cache fits its bound (never ``keep``)."""
        folders = [f for f in self.root.iterdir() if f.is_dir() and (f / "main.json").is_file()]
        folders.sort(key=lambda f: (f / "main.json").stat().st_mtime)
        sizes = {f: sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) for f in folders}
        total = sum(sizes.values())
        for folder in folders:
            if total <= self.policy.cache_max_bytes:
                break
            if folder != keep:
                with self._lock(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
                total -= sizes[folder]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
