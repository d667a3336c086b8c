"""Resumable HTTP downloads into ``<file>.partial``, renamed only once size and checksum match, so a half-written
or corrupted file never looks finished.

Big files come as parallel ranges written in place with ``os.pwrite``; a ``<file>.partial.json`` sidecar records
the byte ranges on disk, so an interrupted run fetches only what is missing. Small files resume with
``Range: bytes=N-``; a server that ignores ``Range`` gets the file as one stream. Trouble worth another attempt is
retried with backoff, from the last byte written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import requests
from pydantic import BaseModel, ConfigDict

from lora_core.progress import Progress

Log = Callable[[str], None]
MB = 2**20
CHUNK = 256 * 1024  # what a dropped connection can lose of a read in progress
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(ValueError):
    """A file cannot be downloaded; the message says why and what to do."""


class Retryable(Exception):
    """A failure worth another attempt (connection trouble, 5xx, a stream cut short)."""


class _RangeIgnored(Exception):
    """The server answered a range request with the whole file (HTTP 200)."""


class _Stopped(Exception):
    """Another download failed, or this file now comes as one stream: the task stops, keeping what it wrote."""


class DownloadOptions(BaseModel):
    """How hard to pull: connections shared by all files, which files come in ranges of what size, patience."""

    model_config = ConfigDict(frozen=True)
    connections: int = 4
    split_above_bytes: int = 64 * MB
    part_bytes: int = 32 * MB
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    attempts: int = 3
    backoff_s: float = 1.0


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / MB:.1f} MB" if n >= MB else f"{n / 2**10:.1f} KB"


class HttpClient(ABC):
    """What the downloads share: options, the log and the stop flag; subclasses say how to ``open`` a URL."""

    def __init__(self, options: DownloadOptions, log: Log) -> None:
        self.options, self.log, self.cancel = options, log, threading.Event()

    @abstractmethod
    def open(
        self, url: str, what: str, headers: dict[str, str] | None = None, stream: bool = True
    ) -> requests.Response:
        """One GET with ``Accept-Encoding: identity`` (offsets are the file's): ``Retryable`` for trouble worth
        another attempt, a readable ``ValueError`` for what a person must fix, else the answer (200, 206, 416)."""

    def retry(self, attempt: Callable[[], None], what: str) -> None:
        """``attempt`` up to ``options.attempts`` times, backing off between tries."""
        for i in range(1, self.options.attempts + 1):
            try:
                return attempt()
            except Retryable as e:
                if i == self.options.attempts:
                    raise DownloadError(
                        f"{what}: {e} (gave up after {i} attempts; run the command again to resume)"
                    ) from None
                self.log(f"{what}: {e}; retrying ({i}/{self.options.attempts - 1})")
                if self.cancel.wait(self.options.backoff_s * 2 ** (i - 1)):
                    raise _Stopped() from None


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


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _missing_parts(size: int, done: list[tuple[int, int]], part: int) -> list[tuple[int, int]]:
    """The byte ranges of ``[0, size)`` not in ``done``, cut into pieces of at most ``part`` bytes."""
    gaps, pos = [], 0
    for a, b in _merge(done) + [(size, size)]:
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    return [(s, min(s + part, b)) for a, b in gaps for s in range(a, b, part)]


class Download:
    """One file fetched into ``<target>.partial`` by one stream, or by parallel ranges tracked in a sidecar.
    ``name`` is what the log calls it."""

    def __init__(self, client: HttpClient, name: str, url: str, size: int, checksum: str, target: Path) -> None:
        self.client, self.name, self.url, self.size, self.checksum, self.target = (
            client,
            name,
            url,
            size,
            checksum,
            target,
        )
        self.partial = target.with_name(target.name + ".partial")
        self.sidecar = target.with_name(target.name + ".partial.json")
        self.ranged = size > client.options.split_above_bytes or self.sidecar.exists()
        self.lock = threading.Lock()
        self.fd = -1
        self.done: list[tuple[int, int]] = []
        self.remaining = self.downloaded = self.to_fetch = self.units = 0
        self.fallback = self.finished = False
        self.progress: Progress | None = None

    def prepare(self) -> list[Callable[[], None]]:
        """Open the partial file (resuming what is there) and return the tasks that complete it."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        size, have = self.size, self.partial.stat().st_size if self.partial.exists() else 0
        if not self.ranged:
            if have > size:
                self.partial.unlink()
                have = 0
            self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
            self.to_fetch = size - have
            if have:
                self.client.log(f"resuming {self.name}: {size_text(have)} of {size_text(size)} already here")
            return [lambda: self._stream_task(have)] if have < size else []
        self.done = self._load_sidecar(have)
        self._write_sidecar()
        self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != size:
            try:
                os.posix_fallocate(self.fd, 0, size)  # fails now, not at 90%, when the disk is too small
            except (AttributeError, OSError):
                os.ftruncate(self.fd, size)
        part = max(1, min(self.client.options.part_bytes, math.ceil(size / self.client.options.connections)))
        parts = _missing_parts(size, self.done, part)
        self.remaining, self.to_fetch = len(parts), sum(b - a for a, b in parts)
        have = size - self.to_fetch
        self.client.log(
            f"fetching {self.name} ({size_text(size)}) in {len(parts)} ranges"
            f"{f', {size_text(have)} already here' if have else ''}"
        )
        return [functools.partial(self._part_task, a, b) for a, b in parts]

    def _load_sidecar(self, have: int) -> list[tuple[int, int]]:
        """Ranges already on disk: from the sidecar if it describes this very file, else the partial's length
        when it was written as one stream (no sidecar), else nothing."""
        if not self.sidecar.exists():
            return [(0, have)] if 0 < have < self.size else []
        try:
            state = json.loads(self.sidecar.read_text())
            if state["checksum"] == self.checksum and state["size"] == self.size and have == state["size"]:
                return _merge([(int(a), int(b)) for a, b in state["done"]])
        except (ValueError, KeyError, TypeError):
            pass
        self.partial.unlink(missing_ok=True)
        return []

    def _write_sidecar(self) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps({"path": self.name, "size": self.size, "checksum": self.checksum, "done": self.done}))
        os.replace(tmp, self.sidecar)

    def _record(self, fd: int, a: int, b: int) -> None:
        """Remember that ``[a, b)`` is on disk (data synced before the sidecar says so)."""
        if not self.ranged or fd != self.fd or b <= a:
            return
        with self.lock:
            if self.finished:
                return
            os.fsync(self.fd)
            self.done = _merge(self.done + [(a, b)])
            self._write_sidecar()

    def _advance(self, n: int) -> None:
        with self.lock:
            self.downloaded += n
            if not self.ranged or not self.to_fetch:
                return
            if self.progress is None:  # steps are MB, or KB below 10 MB so that lines still come every 10 %
                unit, name = (MB, "MB") if self.to_fetch >= 10 * MB else (2**10, "KB")
                self.progress = Progress(
                    max(1, math.ceil(self.to_fetch / unit)), self.client.log, every=0.1, what=f"{name} of {self.name}"
                )
            p = self.progress
            units = min(p.total, self.downloaded * p.total // self.to_fetch)
            for u in range(self.units + 1, units + 1):
                p.step(u)  # prints every ``stride`` steps and at the end
            self.units = max(self.units, units)

    def _stream(self, fd: int, start: int, end: int, whole_ok: bool) -> None:
        """Write bytes ``[start, end)`` into ``fd`` at their offsets, retrying from the last byte written.
        ``whole_ok``: a server ignoring ``Range`` (200) restarts the file from byte 0 instead of failing."""
        pos = start

        def attempt() -> None:
            nonlocal pos
            headers = {"Range": f"bytes={pos}-{end - 1}"} if pos > 0 or end < self.size else {}
            with self.client.open(self.url, self.name, headers) as r:
                if r.status_code == 416:
                    raise DownloadError(
                        f"{self.name}: the server has fewer bytes than the {self.size} the listing says"
                    )
                if r.status_code == 206:
                    m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", ""))
                    if not m or int(m[1]) != pos:
                        raise Retryable(f"asked for bytes from {pos}, got {r.headers.get('Content-Range')!r}")
                elif headers:  # 200: the whole file
                    if not whole_ok:
                        raise _RangeIgnored()
                    pos = 0
                    os.ftruncate(fd, 0)
                try:
                    for chunk in r.iter_content(CHUNK):
                        if self.client.cancel.is_set() or (self.fallback and fd == self.fd):
                            raise _Stopped()
                        data = memoryview(chunk)[: end - pos]
                        while data:
                            written = os.pwrite(fd, data, pos)
                            data, pos = data[written:], pos + written
                            self._advance(written)
                        if pos >= end:
                            break
                except requests.RequestException as e:
                    raise Retryable(f"{type(e).__name__} after {pos} bytes") from None
            if pos < end:
                raise Retryable(f"the connection closed after byte {pos}")

        try:
            self.client.retry(attempt, self.name)
        finally:
            self._record(fd, start, pos)

    def _stream_task(self, have: int) -> None:
        self._stream(self.fd, have, self.size, whole_ok=True)
        self.finish()

    def _part_task(self, a: int, b: int) -> None:
        if self.fallback or self.client.cancel.is_set():
            return
        try:
            self._stream(self.fd, a, b, whole_ok=False)
        except _Stopped:
            return
        except _RangeIgnored:
            with self.lock:
                first, self.fallback = not self.fallback, True
            if first:
                self._fetch_whole()
            return
        with self.lock:
            self.remaining -= 1
            last = self.remaining == 0 and not self.fallback
        if last:
            self.finish()

    def _fetch_whole(self) -> None:
        """The server ignores ``Range``: one stream into a file of its own (ranges still in flight keep writing
        into the old partial, harmlessly), which then becomes the partial. Nothing to resume with such a server."""
        self.client.log(f"{self.name}: the server ignores Range requests; fetching it as one stream")
        whole = self.partial.with_name(self.partial.name + ".whole")
        fd = os.open(whole, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._stream(fd, 0, self.size, whole_ok=True)
            os.fsync(fd)
        except BaseException:
            whole.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.replace(whole, self.partial)
        self.finish(close=False)

    def finish(self, close: bool = True) -> None:
        """Verify the partial file and move it into place; a mismatch deletes it. ``close=False`` when ranges
        may still be writing to our descriptor (it is closed once all tasks are over)."""
        with self.lock:
            if self.finished:
                return
            self.finished = True
        if close:
            self.close()
        problem = verify(self.partial, self.size, self.checksum)
        if problem:
            self.partial.unlink(missing_ok=True)
            self.sidecar.unlink(missing_ok=True)
            raise DownloadError(
                f"{self.name} failed its checksum check: {problem}. The download was deleted; "
                "run the command again (if it fails again, the server serves other bytes than "
                "the hub lists)"
            )
        os.replace(self.partial, self.target)
        self.sidecar.unlink(missing_ok=True)
        self.client.log(f"fetched {self.name} ({size_text(self.size)}, {check_kind(self.checksum)} ok)")

    def close(self) -> None:
        if self.fd >= 0:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


def download_all(client: HttpClient, downloads: list[Download]) -> None:
    """All downloads over at most ``options.connections`` connections; the first error stops the others, which
    keep what they have for the next run."""
    tasks: list[Callable[[], None]] = []
    futures: list = []
    try:
        for d in downloads:
            work = d.prepare()
            tasks += work
            if not work:
                d.finish()
        with ThreadPoolExecutor(max_workers=client.options.connections, thread_name_prefix="download") as pool:
            futures = [pool.submit(t) for t in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:  # the others stop if one failed (or we are interrupted)
                client.cancel.set()
                for f in futures:
                    f.cancel()
    finally:
        for d in downloads:
            d.close()
    errors = [e for f in futures if not f.cancelled() and (e := f.exception()) and not isinstance(e, _Stopped)]
    if errors:
        raise errors[0]
