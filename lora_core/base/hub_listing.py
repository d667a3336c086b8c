"""A Hugging Face style hub: the file listing of a repository, and which of its files a checkpoint needs.

- Only what ``StableDiffusionPipeline.from_pretrained(..., use_safetensors=True)`` reads is chosen: a hub repo of
  SD-1.5 also holds pickles, fp16/EMA twins, ONNX and Flax copies, several times the size of what is used.
- Every listed path is checked when the listing arrives: a hostile listing cannot write outside the folder.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path, PurePosixPath
from typing import Self
from urllib.parse import quote

import requests
from pydantic import BaseModel, TypeAdapter, ValidationError

from lora_core import __version__
from lora_core.base import checkpoints
from lora_core.base.ranged_download import DownloadOptions, HttpClient, Log, Retryable

DEFAULT_ENDPOINT = "https://huggingface.co"
#: the folders ``StableDiffusionPipeline`` loads (the safety checker is never loaded here)
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor")
WANTED_SUFFIXES = (".json", ".txt", ".safetensors")
_SIMPLE_VARIANT = re.compile(r"(?P<stem>[^.]+)\.(?P<variant>\w+)\.safetensors")
_SHARDED_VARIANT = re.compile(
    r"[^.]+\.(?P<variant>\w+)-\d+-of-\d+\.safetensors|.+\.safetensors\.index\.(?P<v2>\w+)\.json"
)


class HubError(ValueError):
    """The hub or its listing cannot be used as asked; the message says why and what to do."""


class HubOptions(DownloadOptions):
    """Which hub and revision, with which token. ``from_env`` reads HF_ENDPOINT and HF_TOKEN like huggingface_hub."""

    endpoint: str = DEFAULT_ENDPOINT
    revision: str = "main"
    token: str | None = None

    @classmethod
    def from_env(cls, **given) -> Self:
        """Explicit values win over HF_ENDPOINT / HF_TOKEN, which win over the defaults."""
        env = {"endpoint": os.environ.get("HF_ENDPOINT"), "token": os.environ.get("HF_TOKEN")}
        merged = {k: v for k, v in env.items() if v} | {k: v for k, v in given.items() if v is not None}
        return cls(**merged)


class LfsInfo(BaseModel):
    oid: str  # sha256 of the content
    size: int


class RepoEntry(BaseModel):
    """One row of ``/api/models/{repo}/tree/{revision}?recursive=true``."""

    type: str
    path: str
    size: int = 0
    oid: str | None = None  # git blob sha1 (of the LFS pointer for LFS files)
    lfs: LfsInfo | None = None

    @property
    def checksum(self) -> str:
        """What the downloaded bytes must hash to (as ``ranged_download.verify`` reads it): LFS sha256 if known,
        else the git blob sha1, else the size."""
        if self.lfs:
            return f"sha256:{self.lfs.oid}"
        if self.oid and re.fullmatch(r"[0-9a-f]{40}", self.oid):
            return f"git-sha1:{self.oid}"
        return f"size:{self.size}"


class HubClient(HttpClient):
    """GETs on one repository, with one requests session per thread, and the hub's answers made readable."""

    options: HubOptions

    def __init__(self, options: HubOptions, repo: str, log: Log) -> None:
        super().__init__(options, log)
        self.repo = repo
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    @property
    def endpoint(self) -> str:
        return self.options.endpoint.rstrip("/")

    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            s = requests.Session()
            s.headers.update({"User-Agent": f"lora-studio/{__version__}", "Accept-Encoding": "identity"})
            if self.options.token:
                s.headers["Authorization"] = f"Bearer {self.options.token}"  # requests drops it on cross-host redirects
            self._local.session = s
            self._sessions.append(s)
        return self._local.session

    def close(self) -> None:
        for s in self._sessions:
            s.close()

    def file_url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{quote(self.options.revision, safe='')}/{quote(path)}"

    def open(
        self, url: str, what: str, headers: dict[str, str] | None = None, stream: bool = True
    ) -> requests.Response:
        try:
            r = self.session().get(
                url,
                headers=headers or {},
                stream=stream,
                timeout=(self.options.connect_timeout_s, self.options.read_timeout_s),
            )
        except requests.RequestException as e:
            raise Retryable(f"{type(e).__name__}: {e}") from None
        if r.status_code >= 500 or r.status_code == 429:
            r.close()
            raise Retryable(f"HTTP {r.status_code}")
        if r.status_code >= 400 and r.status_code != 416:
            r.close()
            if r.status_code in (401, 403):
                raise HubError(
                    f"{what}: HTTP {r.status_code}: {self.repo} is gated or private; accept its terms "
                    "on the hub and set HF_TOKEN"
                )
            if r.status_code == 404:
                raise HubError(
                    f"{what}: not found on {self.endpoint} (repository {self.repo}, revision {self.options.revision})"
                )
            raise HubError(f"{what}: HTTP {r.status_code} from {self.endpoint}")
        return r


def list_repo(client: HubClient) -> list[RepoEntry]:
    """The files of the repository at the revision, following the API's pagination; every path is safe."""
    what = f"listing {client.repo}"
    url: str | None = (
        f"{client.endpoint}/api/models/{client.repo}/tree/{quote(client.options.revision, safe='')}?recursive=true"
    )
    rows: list = []
    while url:
        page: dict = {}

        def attempt(url: str = url, page: dict = page) -> None:  # called now; bound anyway
            r = client.open(url, what, stream=False)
            try:
                page["rows"], page["next"] = r.json(), r.links.get("next", {}).get("url")
            except ValueError:
                raise HubError(
                    f"{client.endpoint} did not answer the file listing of {client.repo} with "
                    "JSON; is --endpoint a Hugging Face hub?"
                ) from None

        client.retry(attempt, what)
        if not isinstance(page["rows"], list):
            raise HubError(f"the file listing of {client.repo} is not a list: {str(page['rows'])[:200]}")
        rows += page["rows"]
        url = page["next"]
    try:
        entries = TypeAdapter(list[RepoEntry]).validate_python(rows)
    except ValidationError as e:
        raise HubError(
            f"the file listing of {client.repo} is not in the hub's format: "
            f"{e.errors()[0]['loc']} {e.errors()[0]['msg']}"
        ) from None
    files = [entry for entry in entries if entry.type == "file"]
    for entry in files:
        safe_relative(entry.path)
    return files


def safe_relative(path: str) -> PurePosixPath:
    """A hub path as a relative POSIX path, refusing anything that could point outside the destination."""
    parts = path.split("/")
    if (
        not path
        or "\\" in path
        or "\0" in path
        or path.startswith("/")
        or re.match(r"[A-Za-z]:", path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise HubError(f"the hub listing holds an unsafe path {path!r}; refusing to fetch from it")
    return PurePosixPath(path)


def inside(root: Path, relative: PurePosixPath) -> Path:
    """``root / relative``, checked (symlinks resolved) to stay under ``root``."""
    target = root / relative
    if not target.resolve().is_relative_to(root.resolve()):
        raise HubError(f"{relative} would be written outside {root}; refusing it")
    return target


def _variant_twin(name: str) -> tuple[str, str] | None:
    """``("stem.safetensors", "fp16")`` for ``stem.fp16.safetensors``."""
    m = _SIMPLE_VARIANT.fullmatch(name)
    return (f"{m['stem']}.safetensors", m["variant"]) if m else None


def _unneeded(path: str, variant: str | None, replaced: set[str]) -> str | None:
    """Why a diffusers-repo file is not fetched, or None when the pipeline loads it."""
    parts = PurePosixPath(path).parts
    if parts == ("model_index.json",):
        return None
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in checkpoints.PICKLE_SUFFIXES:
        return "pickle"
    if len(parts) == 1:
        return "single-file copy" if suffix == ".safetensors" else "not loaded by the pipeline"
    if parts[0] not in COMPONENTS:
        return f"{parts[0]} (not loaded)" if parts[0] == "safety_checker" else "not loaded by the pipeline"
    if len(parts) != 2 or suffix not in WANTED_SUFFIXES or ".bin.index" in parts[1]:
        return "other format"
    sharded = _SHARDED_VARIANT.fullmatch(parts[1])
    if sharded:
        return f"sharded {sharded['variant'] or sharded['v2']} variant"
    twin = _variant_twin(parts[1])
    if twin and twin[1] != variant:
        return f"{twin[1]} variant"
    if path in replaced:
        return f"replaced by its {variant} variant"
    return None


def select_diffusers(entries: list[RepoEntry], variant: str | None) -> tuple[dict[str, RepoEntry], dict[str, str]]:
    """The files a diffusers folder needs, keyed by where they go, and the others with the reason they are not.

    A chosen variant (``unet/diffusion_pytorch_model.fp16.safetensors``) is saved under the plain name, because
    ``checkpoints.load_pipeline`` asks for no variant."""
    replaced = set()
    for e in entries:
        twin = _variant_twin(PurePosixPath(e.path).name)
        if twin and twin[1] == variant and "/" in e.path:
            replaced.add(str(PurePosixPath(e.path).parent / twin[0]))
    needed, skipped = {}, {}
    for e in entries:
        reason = _unneeded(e.path, variant, replaced)
        if reason:
            skipped[e.path] = reason
            continue
        twin = _variant_twin(PurePosixPath(e.path).name)
        needed[str(PurePosixPath(e.path).parent / twin[0]) if twin else e.path] = e
    if "model_index.json" not in needed:
        raise HubError(
            "the repository has no model_index.json: it is not a diffusers pipeline "
            "(for a single .safetensors file, register the checkpoint as single_file)"
        )
    return needed, skipped


def select_single_file(entries: list[RepoEntry], repo: str, file: str | None) -> tuple[RepoEntry, dict[str, str]]:
    """The one top-level ``.safetensors`` of a single-file repo: ``file`` if given, the only one, or the one named
    like the repo; otherwise fail with the candidates."""
    candidates = [e for e in entries if "/" not in e.path and e.path.lower().endswith(".safetensors")]
    names = ", ".join(e.path for e in candidates) or "none"
    if file:
        if PurePosixPath(file).suffix.lower() in checkpoints.PICKLE_SUFFIXES:
            raise HubError(f"{file} is a pickle, which can run code when loaded; choose a .safetensors file")
        chosen = [e for e in entries if e.path == file]
        if not chosen or not file.lower().endswith(".safetensors"):
            raise HubError(f"{repo} has no file {file!r}; its top-level .safetensors files: {names}")
    else:
        chosen = (
            candidates
            if len(candidates) == 1
            else [e for e in candidates if PurePosixPath(e.path).stem.lower() == repo.split("/")[-1].lower()]
        )
        if len(chosen) != 1:
            raise HubError(
                f"{repo} has {len(candidates)} top-level .safetensors files ({names}); choose one with --file NAME"
            )
    return chosen[0], {e.path: "not the chosen single file" for e in entries if e is not chosen[0]}
