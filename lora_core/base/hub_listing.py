"""A Hugging Face hub repository through ``huggingface_hub``: its listing at one commit, which of its files a
checkpoint needs, and the hub's failures as sentences.

- The listing is one ``HfApi.model_info(files_metadata=True)`` call: the commit the revision points at and every file
  with its size, git blob sha1 and LFS sha256, which is what the downloaded bytes are checked against.
- Only what the family's pipeline (``StableDiffusionPipeline`` for SD 1.x) reads with ``use_safetensors=True`` is
  chosen (``families.Family.hub_folders``): a hub repo of SD-1.5 also holds pickles, fp16/EMA twins, ONNX and Flax
  copies, several times the size of what is used.
- Every listed path is checked when the listing arrives, before anything is written (kept by hand for that reason:
  huggingface_hub refuses ``..`` and absolute names too, but only file by file as it downloads them, after the others
  were written). Where a file finally goes is checked again by ``inside``, which resolves symlinked folders.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Self, TypeVar

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from lora_core import __version__
from lora_core.base import checkpoints
from lora_core.catalog import families

DEFAULT_ENDPOINT = "https://huggingface.co"
WANTED_SUFFIXES = (".json", ".txt", ".safetensors")
_SIMPLE_VARIANT = re.compile(r"(?P<stem>[^.]+)\.(?P<variant>\w+)\.safetensors")
_SHARDED_VARIANT = re.compile(
    r"[^.]+\.(?P<variant>\w+)-\d+-of-\d+\.safetensors|.+\.safetensors\.index\.(?P<v2>\w+)\.json"
)
_TRANSIENT_STATUS = (429, 500, 502, 503, 504)
Log = Callable[[str], None]
T = TypeVar("T")


class HubError(ValueError):
    """The hub, its listing or a download cannot be used as asked; the message says why and what to do."""


class HubOptions(BaseModel):
    """Which hub and revision, with which token; how many files at once and how patient with passing trouble.

    ``from_env`` reads HF_ENDPOINT and HF_TOKEN when called: huggingface_hub reads HF_ENDPOINT once, at import, and
    an endpoint passed explicitly is what it then uses for every request."""

    model_config = ConfigDict(frozen=True)
    endpoint: str = DEFAULT_ENDPOINT
    revision: str = "main"
    token: str | None = None  # None: huggingface_hub's own (HF_TOKEN, else the token of `hf auth login`)
    connections: int = 4  # files downloaded at once
    attempts: int = 3
    backoff_s: float = 1.0

    @classmethod
    def from_env(cls, **given) -> Self:
        """Explicit values win over HF_ENDPOINT / HF_TOKEN, which win over the defaults."""
        env = {"endpoint": os.environ.get("HF_ENDPOINT"), "token": os.environ.get("HF_TOKEN")}
        merged = {k: v for k, v in env.items() if v} | {k: v for k, v in given.items() if v is not None}
        return cls(**merged)

    def api(self) -> HfApi:
        return HfApi(
            endpoint=self.endpoint.rstrip("/"),
            token=self.token,
            library_name="lora-studio",
            library_version=__version__,
        )


class RepoEntry(BaseModel):
    """One file of the listing: what its bytes must be."""

    path: str
    size: int
    blob_id: str | None = None  # git blob sha1 (of the LFS pointer for LFS files)
    sha256: str | None = None  # LFS files: sha256 of the content

    @property
    def checksum(self) -> str:
        """What the downloaded bytes must hash to (as ``hub_download.verify`` reads it): LFS sha256 if known, else
        the git blob sha1, else the size."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.blob_id and re.fullmatch(r"[0-9a-f]{40}", self.blob_id):
            return f"git-sha1:{self.blob_id}"
        return f"size:{self.size}"


class RepoListing(BaseModel):
    commit: str
    files: list[RepoEntry]


def retry(call: Callable[[], T], what: str, repo: str, options: HubOptions, log: Log) -> T:
    """``call`` up to ``options.attempts`` times while the hub's trouble may pass (5xx, 429, a lost connection),
    with the hub's failures turned into a ``HubError`` that says what to do.

    huggingface_hub retries such trouble on a file's HEAD and inside a download (resuming it), but not on API calls
    such as the listing, nor on a download answered 5xx; those are retried here."""
    i = 0
    while True:
        i += 1
        try:
            return call()
        except Exception as e:
            problem = _explain(e, what, repo, options)
            if problem is None:
                raise
            passing = _passing(e)
            if passing is None:
                raise HubError(problem) from None
            if i >= options.attempts:
                raise HubError(
                    f"{problem} (gave up after {i} attempts; trying again resumes: files already fetched are kept)"
                ) from None
            log(f"{what}: {passing}; retrying ({i}/{options.attempts - 1})")
            time.sleep(options.backoff_s * 2 ** (i - 1))


def _passing(e: BaseException) -> str | None:
    """What went wrong, when another attempt may go better (the library wraps some causes: their cause counts)."""
    for cause in (e, e.__cause__):
        if isinstance(cause, HfHubHTTPError) and cause.response.status_code in _TRANSIENT_STATUS:
            return f"HTTP {cause.response.status_code}"
        if isinstance(cause, httpx2.TransportError):
            return type(cause).__name__
    return None


def _explain(e: BaseException, what: str, repo: str, options: HubOptions) -> str | None:
    """The hub's failure ``e`` as a sentence, or None when ``e`` is not the hub's (a full disk, a bug)."""
    hub = options.endpoint
    if isinstance(e, GatedRepoError):
        return f"{what}: {repo} is gated; accept its terms on the hub and set HF_TOKEN"
    if isinstance(e, RevisionNotFoundError):
        return f"{what}: {repo} has no revision {options.revision!r} on {hub}"
    if isinstance(e, RepositoryNotFoundError):
        return f"{what}: {repo} is not on {hub}, or it is private or gated (then set HF_TOKEN)"
    if isinstance(e, RemoteEntryNotFoundError):
        return f"{what}: {hub} lists it but does not serve it (HTTP 404)"
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code
        if status in (401, 403):
            return f"{what}: HTTP {status}: {repo} is gated or private; accept its terms on the hub and set HF_TOKEN"
        return f"{what}: HTTP {status} from {hub}"
    if isinstance(e, FileMetadataError) or isinstance(e.__cause__, FileMetadataError):
        return (
            f"{what}: {hub} does not answer like a Hugging Face hub ({e.__cause__ or e}); "
            "check the hub address (--endpoint, HF_ENDPOINT)"
        )
    if isinstance(e, LocalEntryNotFoundError):  # what hf_hub_download raises when its HEAD failed
        return _explain(e.__cause__, what, repo, options) if e.__cause__ else f"{what}: {e}"
    if isinstance(e, httpx2.HTTPError):
        return f"{what}: cannot reach {hub}: {type(e).__name__}: {e}"
    return None


def list_repo(repo: str, options: HubOptions, log: Log) -> RepoListing:
    """The commit ``options.revision`` points at and its files; every path is safe."""
    what = f"listing {repo}"

    def ask() -> RepoListing:
        try:
            info = options.api().model_info(repo, revision=options.revision, files_metadata=True)
        except HFValidationError as e:  # checked before any request; stricter than weights_fetch's pattern
            raise HubError(f"{repo!r} is not a hub repository id: {e}") from None
        except (ValueError, KeyError, TypeError) as e:  # not JSON, or not the hub's JSON
            if isinstance(e, HfHubHTTPError):
                raise
            raise HubError(
                f"{options.endpoint} did not answer the listing of {repo} like a Hugging Face hub "
                f"({type(e).__name__}: {str(e)[:200]}); check the hub address (--endpoint, HF_ENDPOINT)"
            ) from None
        files = [
            {
                "path": s.rfilename,
                "size": s.lfs.size if s.lfs else s.size,
                "blob_id": s.blob_id,
                "sha256": s.lfs.sha256 if s.lfs else None,
            }
            for s in info.siblings or []
        ]
        try:
            return RepoListing.model_validate({"commit": info.sha or "", "files": files})
        except ValidationError as e:
            raise HubError(
                f"the listing of {repo} is not in the hub's format: {e.errors()[0]['loc']} {e.errors()[0]['msg']}"
            ) from None

    listing = retry(ask, what, repo, options, log)
    if not re.fullmatch(r"[0-9a-f]{40}", listing.commit):
        raise HubError(f"the listing of {repo} names no commit ({listing.commit!r}); is --endpoint a Hugging Face hub?")
    for entry in listing.files:
        safe_relative(entry.path)
    return listing


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


def _unneeded(path: str, variant: str | None, replaced: set[str], folders: tuple[str, ...]) -> str | None:
    """Why a diffusers-repo file is not fetched, or None when the pipeline loads it."""
    parts = PurePosixPath(path).parts
    if parts == ("model_index.json",):
        return None
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in checkpoints.PICKLE_SUFFIXES:
        return "pickle"
    if len(parts) == 1:
        return "single-file copy" if suffix == ".safetensors" else "not loaded by the pipeline"
    if parts[0] not in folders:
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


def select_diffusers(
    entries: list[RepoEntry], variant: str | None, family: families.Family
) -> tuple[dict[str, RepoEntry], dict[str, str]]:
    """The files a diffusers folder of ``family`` needs, keyed by where they go, and the others with the reason they
    are not.

    A chosen variant (``unet/diffusion_pytorch_model.fp16.safetensors``) is saved under the plain name, because
    ``checkpoints.load_pipeline`` asks for no variant."""
    replaced = set()
    for e in entries:
        twin = _variant_twin(PurePosixPath(e.path).name)
        if twin and twin[1] == variant and "/" in e.path:
            replaced.add(str(PurePosixPath(e.path).parent / twin[0]))
    needed, skipped = {}, {}
    for e in entries:
        reason = _unneeded(e.path, variant, replaced, family.hub_folders)
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
