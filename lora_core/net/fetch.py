"""Turning a ``lora_url`` into a verified local file, safely and at most once.

- Schemes: ``https``, ``http``, ``data:``; ``file://`` only when the policy enables it.
- Each hop (redirects included) resolves its host, refuses loopback/private/link-local/
  metadata addresses unless allowed, and then connects to the *checked* address, so DNS
  cannot change its answer between check and use.
- Streams with connect/read timeouts, a byte cap and a redirect limit.
- Cache: files stored by SHA-256 of their content; a URL index maps URLs to them and is
  trusted for ``ttl_s`` (then revalidated with ETag/Last-Modified). Writes are atomic
  renames under a per-URL file lock, so concurrent predictions fetch once. The cache is
  pruned least-recently-used past its size bound.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings

from lora_core.env_settings import PREFIXED, CommaSet, read_env

Resolver = Callable[[str, int], list[str]]
Log = Callable[[str], None]


class FetchError(ValueError):
    """The URL cannot be used; the message says why in terms of the URL."""


class FetchPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    cache_dir: Path
    max_bytes: int = Field(1024 * 2**20, gt=0)
    cache_max_bytes: int = Field(20 * 2**30, gt=0)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 600.0  # a trickling server cannot hold a prediction forever
    max_redirects: int = 5
    ttl_s: float = 24 * 3600
    allow_file_urls: bool = False
    allowed_private_hosts: frozenset[str] = frozenset()  # e.g. {"127.0.0.1"} in tests, {"10.0.0.5:8000"}

    @classmethod
    def from_env(cls) -> FetchPolicy:
        """The deployment's settings (``FetchEnv``); limits not set keep this model's defaults."""
        env = read_env(FetchEnv)
        limits = {"max_bytes": env.max_lora_bytes, "read_timeout_s": env.lora_read_timeout_s}
        limits["total_timeout_s"] = env.lora_timeout_s
        return cls(
            cache_dir=env.cache_dir,
            allow_file_urls=env.allow_file_urls,
            allowed_private_hosts=env.allowed_private_hosts,
            **{k: v for k, v in limits.items() if v is not None},
        )

    @classmethod
    def for_checkpoints(cls) -> FetchPolicy:
        """Users' own base checkpoints (``base_model`` as a URL): the same network rules as LoRAs, their own
        limits and their own cache, so that a 7 GB base never evicts LoRAs, nor LoRAs a base."""
        env = read_env(FetchEnv)
        return cls(
            cache_dir=env.checkpoint_cache_dir,
            max_bytes=env.max_checkpoint_bytes,
            cache_max_bytes=env.checkpoint_cache_max_bytes,
            read_timeout_s=env.checkpoint_read_timeout_s,
            total_timeout_s=env.checkpoint_timeout_s,
            allow_file_urls=env.allow_file_urls,
            allowed_private_hosts=env.allowed_private_hosts,
        )


class FetchEnv(BaseSettings):
    """``LORA_STUDIO_*`` variables of the workers' LoRA downloads, parsed and checked by pydantic-settings: a bad
    value stops the worker at start with the variable's name, not a prediction later."""

    model_config = PREFIXED
    cache_dir: Path = Path.home() / ".cache" / "lora-studio" / "loras"
    allow_file_urls: bool = False  # file:// LoRA URLs: the CLI on one's own files, never a service worker
    allowed_private_hosts: CommaSet = frozenset()  # "host,host:port": tests, private nets
    max_lora_bytes: int | None = Field(None, gt=0)
    lora_read_timeout_s: float | None = Field(None, gt=0)
    lora_timeout_s: float | None = Field(None, gt=0)  # the whole download, headers included
    # users' own base checkpoints: an SDXL single file in fp32 is 6.9 GB, SD 1.5's 4.3 GB
    checkpoint_cache_dir: Path = Path.home() / ".cache" / "lora-studio" / "checkpoints"
    max_checkpoint_bytes: int = Field(8 * 2**30, gt=0)
    checkpoint_cache_max_bytes: int = Field(40 * 2**30, gt=0)
    checkpoint_read_timeout_s: float = Field(60.0, gt=0)
    checkpoint_timeout_s: float = Field(1800.0, gt=0)


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    sha256: str
    size: int
    downloaded_bytes: int  # 0 when the cache answered


def system_resolver(host: str, port: int) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve host {host!r} ({e.strerror})") from None


def checked_url_address(
    parts: SplitResult, allowed_private_hosts: frozenset[str] | set[str], resolver: Resolver = system_resolver
) -> tuple[int, str]:
    """(port, checked address) of a split http(s) URL: its port or the scheme's, and ``checked_address``."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return port, checked_address(parts.hostname or "", port, allowed_private_hosts, resolver)


def checked_address(
    host: str, port: int, allowed_private_hosts: frozenset[str] | set[str], resolver: Resolver = system_resolver
) -> str:
    """An address of ``host`` that is public, or explicitly allowed (``host``, ``ip``, ``host:port`` or ``ip:port``)."""
    addresses = resolver(host, port)
    if not addresses:
        raise FetchError(f"host {host!r} has no address")
    allowed = host in allowed_private_hosts or f"{host}:{port}" in allowed_private_hosts
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not _public(ip) and not (
            allowed or str(ip) in allowed_private_hosts or f"{ip}:{port}" in allowed_private_hosts
        ):
            raise FetchError(f"host {host!r} resolves to {ip}, a private or local address; refusing to fetch it")
    return addresses[0]


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast, including any IPv4 address an IPv6 one carries (6to4, Teredo, NAT64, IPv4-compatible),
    which Python calls global although a gateway may deliver it to the private address inside."""
    if not ip.is_global or ip.is_multicast:
        return False
    if ip.version == 6:
        inner = [ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64 or int(ip) >> 32 == 0:  # 64:ff9b::a.b.c.d, ::a.b.c.d
            inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(v4 is None or (v4.is_global and not v4.is_multicast) for v4 in inner)
    return True


class Fetcher:
    """Resolves URLs to local files under ``policy``; one per process, sharing the disk cache."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver = system_resolver, log: Log = print) -> None:
        self.policy, self.resolver, self.log = policy, resolver, log
        self.blobs = policy.cache_dir / "blobs"
        self.index = policy.cache_dir / "urls"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)

    # ---- public -----------------------------------------------------------------
    def fetch(self, url: str) -> FetchedFile:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            return self._store(self._decode_data_url(url), url)
        if scheme == "file":
            return self._local_file(url)
        if scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme {scheme or '(none)'!r} in {url[:100]!r}; use https://")
        key = hashlib.sha256(url.encode()).hexdigest()
        with self._lock(key):
            entry = self._read_index(key)
            if entry and time.time() - entry["checked_at"] < self.policy.ttl_s:
                blob = self.blobs / entry["sha256"]
                if blob.is_file():
                    os.utime(blob)  # LRU: recently used
                    return FetchedFile(blob, entry["sha256"], blob.stat().st_size, 0)
            return self._download(url, key, entry)

    # ---- schemes ----------------------------------------------------------------
    def _decode_data_url(self, url: str) -> bytes:
        header, _, payload = url[5:].partition(",")
        if len(payload) > self.policy.max_bytes * 4 // 3 + 4:
            raise FetchError(f"data: URL is larger than the {self.policy.max_bytes / 2**20:.0f} MB limit")
        try:
            return base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote(payload).encode()
        except (binascii.Error, ValueError):
            raise FetchError("data: URL is not valid base64") from None

    def _local_file(self, url: str) -> FetchedFile:
        if not self.policy.allow_file_urls:
            raise FetchError("file:// URLs are disabled on this server; use an https:// URL")
        path = Path(unquote(urlsplit(url).path))
        if not path.is_file():
            raise FetchError(f"{path} is not a file")
        size = path.stat().st_size
        if size > self.policy.max_bytes:
            raise FetchError(
                f"{path.name} is {size / 2**20:.0f} MB; the limit is {self.policy.max_bytes / 2**20:.0f} MB"
            )
        return FetchedFile(path, _sha256_file(path), size, 0)

    # ---- http(s) ----------------------------------------------------------------
    def _download(self, url: str, key: str, previous: dict | None) -> FetchedFile:
        import urllib3

        headers = {"User-Agent": "lora-studio", "Accept-Encoding": "identity"}
        if previous:
            if previous.get("etag"):
                headers["If-None-Match"] = previous["etag"]
            if previous.get("last_modified"):
                headers["If-Modified-Since"] = previous["last_modified"]
        timeout = urllib3.Timeout(connect=self.policy.connect_timeout_s, read=self.policy.read_timeout_s)
        current = url
        with _Deadline(self.policy.total_timeout_s) as deadline:
            for _ in range(self.policy.max_redirects + 1):
                parts = urlsplit(current)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise FetchError(f"redirected to an unsupported URL {current[:100]!r}")
                port, address = checked_url_address(parts, self.policy.allowed_private_hosts, self.resolver)
                pool = deadline.pool(parts.scheme, address, port, parts.hostname, timeout)
                path = parts.path or "/"
                if parts.query:
                    path += "?" + parts.query
                try:
                    response = pool.urlopen(
                        "GET", path, headers={**headers, "Host": parts.netloc}, redirect=False, preload_content=False
                    )
                except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                    if deadline.expired:
                        raise self._too_slow(url) from None
                    raise FetchError(f"could not connect to {parts.hostname}: {type(e).__name__}") from None
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location")
                    response.release_conn()
                    if not location:
                        raise FetchError(f"{parts.hostname} answered a redirect without a Location")
                    current = urljoin(current, location)
                    continue
                try:
                    return self._receive(url, key, response, previous, deadline)
                finally:
                    response.release_conn()  # back to its pool, which closes it on leaving
            raise FetchError(f"more than {self.policy.max_redirects} redirects fetching {url[:100]!r}")

    def _too_slow(self, url: str) -> FetchError:
        return FetchError(f"download of {url[:100]!r} took longer than {self.policy.total_timeout_s:.0f}s; aborted")

    def _receive(self, url: str, key: str, response, previous: dict | None, deadline: _Deadline) -> FetchedFile:
        import urllib3

        if response.status == 304 and previous:
            self._write_index(key, {**previous, "checked_at": time.time()})
            blob = self.blobs / previous["sha256"]
            return FetchedFile(blob, previous["sha256"], blob.stat().st_size, 0)
        if response.status != 200:
            raise FetchError(f"the server answered HTTP {response.status} for {url[:100]!r}")
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > self.policy.max_bytes:
            raise FetchError(
                f"the file is {declared / 2**20:.0f} MB; the limit is {self.policy.max_bytes / 2**20:.0f} MB"
            )
        digest, size = hashlib.sha256(), 0
        tmp = self.blobs / f".{key}.{os.getpid()}.partial"
        next_report, started = 0.1, time.monotonic()
        try:
            with tmp.open("wb") as out:
                while chunk := response.read1(256 * 1024):
                    if deadline.expired:
                        raise self._too_slow(url)
                    size += len(chunk)
                    if size > self.policy.max_bytes:
                        raise FetchError(f"download exceeded the {self.policy.max_bytes / 2**20:.0f} MB limit; aborted")
                    digest.update(chunk)
                    out.write(chunk)
                    if declared > 8 * 2**20 and size / declared >= next_report:
                        self.log(
                            f"download: {100 * size / declared:.0f}% of {declared / 2**20:.0f} MB "
                            f"({time.monotonic() - started:.0f}s)"
                        )
                        next_report += 0.1
            if deadline.expired:  # the watchdog cut the connection: what arrived is not the file
                raise self._too_slow(url)
        except FetchError:
            tmp.unlink(missing_ok=True)
            raise
        except (urllib3.exceptions.HTTPError, TimeoutError, OSError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            if deadline.expired:
                raise self._too_slow(url) from None
            raise FetchError(f"download of {url[:100]!r} failed or timed out ({type(e).__name__})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sha = digest.hexdigest()
        blob = self.blobs / sha
        tmp.replace(blob)
        self._write_index(
            key,
            {
                "url": url,
                "sha256": sha,
                "checked_at": time.time(),
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            },
        )
        self._prune(keep=blob)
        return FetchedFile(blob, sha, size, size)

    # ---- cache ------------------------------------------------------------------
    def _store(self, data: bytes, url: str) -> FetchedFile:
        if len(data) > self.policy.max_bytes:
            raise FetchError(f"data: URL is larger than the {self.policy.max_bytes / 2**20:.0f} MB limit")
        sha = hashlib.sha256(data).hexdigest()
        blob = self.blobs / sha
        if not blob.exists():
            tmp = self.blobs / f".{sha}.{os.getpid()}.partial"
            tmp.write_bytes(data)
            tmp.replace(blob)
        return FetchedFile(blob, sha, len(data), 0)

    def _lock(self, key: str):
        """One download per URL at a time, across processes. 256 lock files, not one per URL: a URL that fails
        (or is refused) leaves nothing behind, and URLs sharing a stripe only wait for each other."""
        return file_lock(self.index / f"{key[:2]}.lock")

    def _read_index(self, key: str) -> dict | None:
        try:
            return json.loads((self.index / f"{key}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_index(self, key: str, entry: dict) -> None:
        tmp = self.index / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.index / f"{key}.json")

    def _prune(self, keep: Path) -> None:
        """Delete least-recently-used blobs until the cache fits its bound (never ``keep``)."""
        blobs = sorted((p for p in self.blobs.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in blobs)
        for blob in blobs:
            if total <= self.policy.cache_max_bytes:
                break
            if blob != keep:
                total -= blob.stat().st_size
                blob.unlink(missing_ok=True)


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created if missing) across processes, held for the block."""
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Deadline:
    """The whole download's time limit, headers included: read timeouts alone never trip on a server that sends
    one byte a second. When time is up, the sockets of the download are shut down, so whatever reads them returns."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._pools: list = []
        self._guard = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        for pool in self._pools:  # the connections go with the download: an aborted body is never reused
            pool.close()

    def _expire(self) -> None:
        with self._guard:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: safe under a TLS reader
            except OSError:
                pass

    def _watch(self, sock: socket.socket | None) -> None:
        with self._guard:
            if sock is not None:
                self._sockets.append(sock)
            expired = self.expired
        if expired:
            self._expire()

    def pool(self, scheme: str, address: str, port: int, hostname: str, timeout):
        """A connection pool to the checked ``address`` whose connections this deadline can cut."""
        import urllib3
        from urllib3.connection import HTTPConnection, HTTPSConnection

        deadline = self
        base = HTTPSConnection if scheme == "https" else HTTPConnection

        class Connection(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                deadline._watch(self.sock)

        if scheme == "https":
            pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
                address, port, timeout=timeout, retries=False, server_hostname=hostname, assert_hostname=hostname
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        pool.ConnectionCls = Connection
        self._pools.append(pool)
        return pool


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()
