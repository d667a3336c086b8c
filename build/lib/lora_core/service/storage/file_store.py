"""Where file bytes live: a local folder by default, any S3-compatible bucket when ``STORAGE_URL=s3://…``.

Keys are made by the service (``files.new_key``), never by users, and are still checked here:
a key that could leave the folder or bucket prefix is refused.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
CHUNK = 1024 * 1024


class StorageFull(OSError):
    """The store has no room for the file (disk full, quota)."""


class Readable(Protocol):
    """What a store reads bytes from: a file, or the service's counting and peeked-at streams."""

    def read(self, n: int = -1, /) -> bytes: ...


class FileStore(Protocol):
    def put(self, key: str, stream: Readable, content_type: str) -> None: ...
    def open(self, key: str) -> Iterator[bytes]: ...
    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    if not KEY.match(key) or ".." in key.split("/") or len(key) > 512:
        raise ValueError(f"invalid storage key {key[:80]!r}")
    return key


class LocalFileStore:
    """Files under one folder; written to a temporary name and renamed, so a reader never sees half a file.

    ``quota_bytes`` caps what the folder holds (``LORA_STUDIO_STORAGE_QUOTA_BYTES``): a store that fills
    its disk would take the database and logs beside it down too; past the quota a write fails with
    ``StorageFull`` as on a full disk, and the service goes on serving. The usage is counted once at start
    and kept by this process (other processes writing the same folder are not seen until a restart).
    """

    def __init__(self, root: Path, quota_bytes: int = 0) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.quota = quota_bytes
        self._used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if quota_bytes else 0
        self._usage = threading.Lock()

    def _reserve(self, size: int) -> None:
        """Count ``size`` more bytes against the quota, or raise ``EDQUOT`` (negative: give bytes back)."""
        if not self.quota:
            return
        with self._usage:
            if size > 0 and self._used + size > self.quota:
                raise OSError(errno.EDQUOT, "quota exceeded")
            self._used += size

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"invalid storage key {key[:80]!r}")
        return path

    def put(self, key: str, stream: Readable, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    self._reserve(len(chunk))
                    written += len(chunk)
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException as e:  # too large, disk full, cancelled: leave nothing behind
            self._reserve(-written)
            Path(tmp).unlink(missing_ok=True)
            self._prune_empty(path.parent)
            if isinstance(e, OSError) and e.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StorageFull(e.errno, "the file store is full") from None
            raise

    def _prune_empty(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def open(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            size = path.stat().st_size
            path.unlink()
            self._reserve(-size)
        except FileNotFoundError:
            pass
        self._prune_empty(path.parent)


class S3FileStore:
    """Objects under ``s3://bucket/prefix`` (AWS or any S3-compatible server: MinIO, moto, R2…)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, stream: Readable, content_type: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.upload_fileobj(stream, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("EntityTooLarge", "QuotaExceeded", "InsufficientStorage"):
                raise StorageFull(28, "the file store is full") from None
            raise

    def open(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise
        return body.iter_chunks(CHUNK)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def from_url(url: str, s3_endpoint_url: str | None = None, quota_bytes: int = 0) -> FileStore:
    """``file:///path`` or ``s3://bucket/prefix``; ``quota_bytes`` (local folders only; 0: none)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalFileStore(Path(parts.path), quota_bytes)
    if quota_bytes:
        raise ValueError(
            "LORA_STUDIO_STORAGE_QUOTA_BYTES applies to a local STORAGE_URL (file://) only; "
            "set the bucket's own quota instead"
        )
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"STORAGE_URL {url!r} names no bucket; use s3://bucket/prefix")
        return S3FileStore(parts.netloc, parts.path, s3_endpoint_url)
    raise ValueError(f"STORAGE_URL {url!r}: use file:///path or s3://bucket/prefix")
