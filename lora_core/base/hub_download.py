"""The chosen files, downloaded by ``huggingface_hub`` and checked by hand against the listing.

``hf_hub_download(local_dir=...)`` fetches each file: a HEAD on ``/{repo}/resolve/{commit}/{path}``, then a GET
streamed into a temporary file, resumed with ``Range`` from its last complete 10 MB chunk when the connection drops
(again and again while bytes keep coming), renamed when its length is right. Where the hub answers the HEAD with Xet
headers (huggingface.co does for most big files), ``hf_xet`` fetches the file instead, in parallel chunks, keeping
files of its own under HF_XET_CACHE (``~/.cache/huggingface/xet``); HF_HUB_DISABLE_XET=1 forces plain HTTP. The
tests' hub sends no Xet headers, so only the HTTP way is tested here. Several files download at once from a thread
pool here rather than ``snapshot_download``, which lists the repository again, cannot save a file under another name,
and reports progress only summed over all files. This module adds what the library does not do:

- **Verifies the bytes** (kept by hand: an integrity property). huggingface_hub checks a download's length, not its
  hash (huggingface_hub issue #3643; the fix, PR #3644, was closed). Every file is hashed against the listing's LFS
  sha256 or git blob sha1, deleted when it differs, and only then moved to its name under ``weights/``.
- Retries a download answered 5xx (the library retries HEADs, and a GET only on 408 or 429).
- Progress lines in the project's format (``lora_core.progress``) instead of tqdm bars, which are off in a build log.
- An fp16 variant is saved under the plain name.

The library works in a staging folder beside the destination (``weights/.<name>.fetching``, same disk): its
``.cache/huggingface`` bookkeeping and temporary files live there, and the folder is removed when the command ends,
so ``weights/`` never holds a file before it was verified, nor anything of the library's. Nothing resumes across
runs: huggingface_hub deletes its temporary file when a download fails (PR #4228, one unique temporary file per
download), so running the command again fetches the unfinished files from their first byte; finished ones are kept.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from pydantic import BaseModel
from tqdm.auto import tqdm

from lora_core import __version__
from lora_core.base.hub_listing import HubError, HubOptions, Log, RepoEntry, retry
from lora_core.progress import Progress

MB = 2**20
PROGRESS_FROM_BYTES = MB  # smaller files only get their "fetched" line


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / MB:.1f} MB" if n >= MB else f"{n / 2**10:.1f} KB"


def verify(path: Path, size: int, checksum: str) -> str | None:
    """None when ``path`` holds the expected file, else what is wrong. Size first: it is free.
    ``checksum`` is ``sha256:HEX``, ``git-sha1:HEX`` (of the git blob) or ``size:N`` (nothing more to check)."""
    have = path.stat().st_size
    if have != size:
        return f"it is {have} bytes, the hub lists {size}"
    how, _, want = checksum.partition(":")
    if how == "size":
        return None
    new = hashlib.sha256 if how == "sha256" else lambda: hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        got = hashlib.file_digest(f, new).hexdigest()
    return None if got == want else f"its {how} is {got}, the hub lists {want}"


def check_kind(checksum: str) -> str:
    """How a file with this checksum is verified, as the summary names it."""
    return {"sha256": "sha256", "git-sha1": "git sha1"}.get(checksum.partition(":")[0], "size")


def progress_lines(name: str, size: int, log: Log) -> type[tqdm]:
    """A tqdm class for ``hf_hub_download(tqdm_class=...)`` that logs progress lines (``progress.Progress``) for
    ``name`` every 10 % (in MB, or KB below 10 MB) instead of drawing a bar; silent below ``PROGRESS_FROM_BYTES``."""
    unit, unit_name = (MB, "MB") if size >= 10 * MB else (2**10, "KB")

    class ProgressLines(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("disable", None)
            super().__init__(*args, **kwargs, disable=True)  # tqdm draws nothing; update() is ours
            self.bytes_done = int(kwargs.get("initial") or 0)
            self.shown = 0
            self.lines = (
                Progress(max(1, math.ceil(size / unit)), log, every=0.1, what=f"{unit_name} of {name}")
                if size >= PROGRESS_FROM_BYTES
                else None
            )

        def update(self, n: float | None = 1) -> bool | None:
            """Bytes written (negative when a server ignored ``Range`` and the file starts over)."""
            self.bytes_done += int(n or 0)
            p = self.lines
            if p is not None:
                units = min(p.total, max(0, self.bytes_done) * p.total // max(1, size))
                mark = units if units == p.total else units // p.stride * p.stride
                if mark > self.shown:
                    self.shown = mark
                    p.step(mark)
            return None

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes (Xet downloads report them apart from bytes written): not shown."""

        def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            pass

    return ProgressLines


class Download(BaseModel):
    """One file of the listing (``entry``), saved as ``target``; ``name`` is what the log calls it."""

    name: str
    entry: RepoEntry
    target: Path


def download_all(
    repo: str, commit: str, downloads: list[Download], staging: Path, options: HubOptions, log: Log
) -> None:
    """All ``downloads``, ``options.connections`` files at a time, through ``staging`` (removed at the end). The
    first failure cancels the files not started; those under way finish (the library cannot be stopped mid-file)."""
    lock = threading.Lock()

    def one_line_at_a_time(line: str) -> None:  # print() from several threads mixes its text and newlines
        with lock:
            log(line)

    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left: nothing in it can be resumed
    try:
        with ThreadPoolExecutor(max_workers=options.connections, thread_name_prefix="download") as pool:
            futures = [pool.submit(_fetch, repo, commit, d, staging, options, one_line_at_a_time) for d in downloads]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                for f in futures:
                    f.cancel()
        errors = [e for f in futures if not f.cancelled() and (e := f.exception())]
        if errors:
            raise errors[0]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(repo: str, commit: str, d: Download, staging: Path, options: HubOptions, log: Log) -> None:
    def get() -> str:
        return hf_hub_download(
            repo,
            d.entry.path,
            revision=commit,
            local_dir=staging,
            endpoint=options.endpoint.rstrip("/"),
            token=options.token,
            library_name="lora-studio",
            library_version=__version__,
            tqdm_class=progress_lines(d.name, d.entry.size, log),
        )

    path = Path(retry(get, d.name, repo, options, log))
    problem = verify(path, d.entry.size, d.entry.checksum)
    if problem:
        path.unlink(missing_ok=True)
        raise HubError(
            f"{d.name} failed its checksum check: {problem}. The download was deleted; try again "
            "(if it fails again, the server serves other bytes than the hub lists)"
        )
    d.target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, d.target)
    log(f"fetched {d.name} ({size_text(d.entry.size)}, {check_kind(d.entry.checksum)} ok)")
