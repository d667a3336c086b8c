"""Base checkpoints by hub id (``base_model: owner/name``), from the deployment's hub into the checkpoint cache.

A diffusers repository, or one holding a single ``.safetensors``, is chosen, downloaded and checked as
``lora-studio weights fetch`` does it (``weights_fetch.fetch_listed``: safetensors only, every listed path checked,
the sha256 or git sha1 of every file), under the checkpoint size cap, from ``HF_ENDPOINT`` with ``HF_TOKEN``: the
host is the operator's, only the repository is the user's. ``owner/name@revision`` takes a branch, a tag or a commit
(``main`` without it). Which commit a branch or tag is gets asked again after the fetcher's TTL (24 h); in between, a
prediction asks the hub nothing, and a commit, which never changes, is never asked again. A repository's folder keeps
the files of the commits its revisions were last found at; a revision unused for the TTL is forgotten, and a commit
no revision names is removed. One lock per repository across processes; the least recently used repositories go
when the cache passes its bound.
"""

from __future__ import annotations

import json
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
REFS = "refs.json"
LEGACY_MEMO = "main.json"  # the memo of caches written before revisions: still counted and dropped by the LRU


@dataclass(frozen=True)
class HubFiles:
    layout: Layout
    path: Path  # the pipeline folder, or the single file
    commit: str
    downloaded_bytes: int  # 0 when the cache answered


class HubCache:
    """Hub repositories under ``policy.cache_dir / "hub"``: one folder per repository, holding a commit's files per
    revision asked for and ``refs.json`` (revision → its commit's files, when checked, when last used)."""

    def __init__(self, policy: FetchPolicy, log: Callable[[str], None] = print) -> None:
        self.policy, self.log = policy, log
        self.root = policy.cache_dir / "hub"

    def get(self, repo: str, revision: str = "main") -> HubFiles:
        """``repo``'s files at ``revision``; raises ``HubError`` or ``WeightsFetchError`` with a sentence."""
        folder = self.root / repo.replace("/", "--")
        with self._lock(folder.name):
            refs = _read(folder / REFS) or {}
            now = time.time()
            ref = refs.get(revision)
            if (
                ref is not None
                and (ref["commit"] == revision or now - ref["checked_at"] < self.policy.ttl_s)
                and (folder / ref["path"]).exists()
            ):
                files = HubFiles(ref["layout"], folder / ref["path"], ref["commit"], 0)
            else:
                files = self._fetch(repo, revision, folder)
                ref = {"layout": files.layout, "path": files.path.name, "commit": files.commit, "checked_at": now}
            refs = {r: v for r, v in refs.items() if now - v.get("used_at", 0) < self.policy.ttl_s}
            refs[revision] = ref | {"used_at": now}  # the LRU's clock too: the file's time is the repository's use
            _write(folder / REFS, refs)
            kept = {v["path"] for v in refs.values()} | {REFS}
            for old in folder.iterdir():  # commits no revision names any more
                if old.name not in kept:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        self._prune(keep=folder)
        return files

    def _fetch(self, repo: str, revision: str, folder: Path) -> HubFiles:
        from lora_core.base import weights_fetch
        from lora_core.base.hub_listing import list_repo

        options = weights_fetch.FetchOptions.from_env(revision=revision)
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
        memos = {f: m for f in self.root.iterdir() for m in (f / REFS, f / LEGACY_MEMO) if f.is_dir() and m.is_file()}
        folders = sorted(memos, key=lambda f: memos[f].stat().st_mtime)
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


def _write(path: Path, value: dict) -> None:
    """Atomically: a worker killed while writing leaves the old memo, not half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
