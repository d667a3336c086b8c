"""``lora-studio weights fetch NAME``: a registry base checkpoint from a Hugging Face style hub into ``weights/``.

It runs when the image is built (predictions never download weights), so nothing here imports torch. Listing the
repository and choosing the files is ``hub_listing``'s job, downloading and checking them ``hub_download``'s (both on
``huggingface_hub``); this module says which checkpoint, skips what is already installed (checked against the
listing's hashes), fails early when the rest will not fit, and sums up.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from lora_core.base import checkpoints
from lora_core.base.hub_download import MB, Download, check_kind, download_all, size_text, verify
from lora_core.base.hub_listing import (
    HubError,
    HubOptions,
    Log,
    RepoListing,
    inside,
    list_repo,
    safe_relative,
    select_diffusers,
    select_single_file,
)

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_LOCAL_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


class WeightsFetchError(ValueError):
    """The weights cannot be fetched; the message says why and what to do."""


class FetchOptions(HubOptions):
    """``HubOptions`` plus what to take: a variant such as fp16, the single file, another hub repository."""

    variant: str | None = None
    file: str | None = None
    source: str | None = None


class FetchSummary(BaseModel):
    name: str
    source: str
    revision: str
    commit: str
    dest: Path
    fetched: list[str]
    present: list[str]
    skipped: dict[str, str]  # path → why it is not needed
    bytes_downloaded: int  # the sizes of the files fetched
    bytes_total: int
    seconds: float
    checks: dict[str, int]  # "sha256" / "git sha1" / "size" → files checked that way

    def text(self) -> str:
        """The few lines a build log shows at the end."""
        by_reason: dict[str, list[str]] = {}
        for path, reason in sorted(self.skipped.items()):
            by_reason.setdefault(reason, []).append(path)
        skipped = "; ".join(
            f"{reason}: {', '.join(paths[:6])}{', …' if len(paths) > 6 else ''}" for reason, paths in by_reason.items()
        )
        rate = self.bytes_downloaded / MB / self.seconds if self.seconds > 0 else 0.0
        checks = ", ".join(f"{n} {how}" for how, n in self.checks.items() if n)
        count = len(self.fetched) + len(self.present)
        return "\n".join(
            [
                f"weights {self.name}: {self.source}@{self.revision} (commit {self.commit[:12]}) -> {self.dest}",
                f"  {len(self.fetched)} files fetched, {len(self.present)} already present, "
                f"{len(self.skipped)} skipped as unneeded{f' ({skipped})' if skipped else ''}",
                f"  {size_text(self.bytes_downloaded)} downloaded in {self.seconds:.1f}s ({rate:.1f} MB/s); "
                f"{size_text(self.bytes_total)} on disk",
                f"  checksums verified for all {count} files ({checks or 'none'})",
            ]
        )


def checkpoint_to_fetch(name: str, source: str | None = None) -> checkpoints.Checkpoint:
    """The registry entry for ``name`` (with ``source`` overriding its hub id), or with ``source`` an ad-hoc
    diffusers folder ``weights/<name>``."""
    if name not in checkpoints.REGISTRY and source:
        if not _LOCAL_NAME.fullmatch(name) or ".." in name:
            raise WeightsFetchError(f"{name!r} cannot be a folder name under weights/; use letters, digits, . _ -")
        owner = next((c.name for c in checkpoints.REGISTRY.values() if c.path == name), None)
        if owner:
            raise WeightsFetchError(f"weights/{name} belongs to base model {owner!r}; fetch under that name")
        return checkpoints.Checkpoint(
            name=name,
            description=f"{source} from the hub",
            layout="diffusers",
            path=name,
            source=source,
            defaults=checkpoints.SamplingDefaults(width=512, height=512, num_inference_steps=30, guidance_scale=7.5),
        )
    checkpoint = checkpoints.get_checkpoint(name)
    if source:
        return checkpoint.model_copy(update={"source": source})
    if not checkpoint.source:  # (a registry name with --source keeps its registry folder)
        raise WeightsFetchError(
            f"{name!r} ships with the repository (weights/{checkpoint.path}); there is nothing "
            "to fetch. Pass --source REPO_ID to fetch a hub repository in its place."
        )
    return checkpoint


def fetch_checkpoint(
    name: str, options: FetchOptions, dest: Path | None = None, log: Log = lambda line: print(line, flush=True)
) -> FetchSummary:
    """Fetch registry checkpoint ``name`` into ``dest`` (the weights folder) and say what happened."""
    try:
        return _fetch(name, options, dest, log)
    except HubError as e:
        raise WeightsFetchError(str(e)) from None
    except OSError as e:  # disk full, read-only folder…: one line, not a traceback
        raise WeightsFetchError(f"cannot write the weights: {e}") from None


def _fetch(name: str, options: FetchOptions, dest: Path | None, log: Log) -> FetchSummary:
    started = time.perf_counter()
    if options.connections < 1:
        raise WeightsFetchError("--connections must be at least 1")
    checkpoint = checkpoint_to_fetch(name, options.source)
    repo = checkpoint.source or ""
    if not _REPO_ID.fullmatch(repo) or ".." in repo:
        raise WeightsFetchError(f"{repo!r} is not a hub repository id like 'org/name'")
    if options.variant and not re.fullmatch(r"\w+", options.variant):
        raise WeightsFetchError(f"--variant {options.variant!r}: use a name like fp16")
    if options.file and checkpoint.layout != "single_file":
        raise WeightsFetchError(f"--file is for single-file checkpoints; {name} is a diffusers folder")
    root = Path(dest) if dest is not None else checkpoints.weights_dir()
    target = inside(root, safe_relative(checkpoint.path))
    if checkpoint.layout == "single_file":
        config = root / (checkpoint.config or "")
        if not (config / "model_index.json").is_file():
            raise WeightsFetchError(
                f"{name} is a single file that loads with the configs of {checkpoint.config}, "
                f"which is not in {root}; run `lora-studio weights fetch {checkpoint.config}"
                f"{f' --dest {root}' if dest is not None else ''}` first"
            )

    return _fetch_files(repo, options, checkpoint, target, started, log)


def _fetch_files(
    repo: str,
    options: FetchOptions,
    checkpoint: checkpoints.Checkpoint,
    target: Path,
    started: float,
    log: Log,
) -> FetchSummary:
    return fetch_listed(repo, list_repo(repo, options, log), options, checkpoint, target, log, started=started)


def fetch_listed(
    repo: str,
    listing: RepoListing,
    options: FetchOptions,
    checkpoint: checkpoints.Checkpoint,
    target: Path,
    log: Log,
    max_bytes: int | None = None,
    started: float | None = None,
) -> FetchSummary:
    """The files of ``listing`` that ``checkpoint``'s layout and family load, into ``target`` (a folder, or the
    single file's path), each checked against the listing; those present and intact are kept. ``max_bytes``: refuse
    before downloading when the checkpoint's files add up to more."""
    started = time.perf_counter() if started is None else started
    if checkpoint.layout == "single_file":
        entry, skipped = select_single_file(listing.files, repo, options.file)
        needed = {target.name: entry}
        folder = target.parent
    else:
        needed, skipped = select_diffusers(listing.files, options.variant, checkpoint.family_spec)
        folder = target
    if skipped:
        log(f"not fetching {len(skipped)} files the pipeline does not load: {', '.join(sorted(skipped))}")
    total = sum(e.size for e in needed.values())
    if max_bytes is not None and total > max_bytes:
        raise WeightsFetchError(f"{repo} is {size_text(total)}; the limit is {size_text(max_bytes)}")

    present, downloads = [], []
    for rel, entry in needed.items():
        path = inside(folder, safe_relative(rel))
        if path.is_file() and verify(path, entry.size, entry.checksum) is None:
            log(f"already present {rel}")
            present.append(rel)
        else:
            if path.exists():
                log(f"replacing {rel}: it does not match the hub's file")
            downloads.append(Download(name=rel, entry=entry, target=path))
    _check_space(folder, downloads)
    if downloads:
        staging = target.with_name(f".{target.name}.fetching")  # beside it: same disk, so files move, not copy
        download_all(repo, listing.commit, downloads, staging, options, log)
    kinds = [check_kind(e.checksum) for e in needed.values()]
    checks = {how: kinds.count(how) for how in ("sha256", "git sha1", "size") if how in kinds}
    return FetchSummary(
        name=checkpoint.name,
        source=repo,
        revision=options.revision,
        commit=listing.commit,
        dest=target,
        fetched=[d.name for d in downloads],
        present=present,
        skipped=skipped,
        bytes_downloaded=sum(d.entry.size for d in downloads),
        bytes_total=total,
        seconds=time.perf_counter() - started,
        checks=checks,
    )


def _check_space(folder: Path, downloads: list[Download]) -> None:
    """Fail before downloading gigabytes that will not fit."""
    if not downloads:
        return
    folder.mkdir(parents=True, exist_ok=True)
    needed = sum(d.entry.size for d in downloads)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WeightsFetchError(f"the download needs {size_text(needed)} but {folder} has only {size_text(free)} free")
