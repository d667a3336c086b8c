"""The service's parts wired together, and what the API asks of them (one method per question)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from sqlalchemy.engine import Engine

from lora_core.net.fetch import FetchError, checked_url_address
from lora_core.service import views
from lora_core.service.auth import tokens
from lora_core.service.config import ServiceConfig
from lora_core.service.models import InputError, InvalidField, Model
from lora_core.service.queue import limits, outputs, predictions
from lora_core.service.queue.webhooks import check_url
from lora_core.service.runtime import Runtime
from lora_core.service.storage import file_store, files, loras
from lora_core.service.workers.pool import WorkerPool

log = logging.getLogger("lora_studio.service")
MAX_URL_CHARS = 2048  # any URL a caller gives (file inputs, webhooks): browsers' and CDNs' common limit


class ApiError(Exception):
    """An error response in Replicate's shape: ``{"title", "detail", "status"}`` (+ ``invalid_fields``)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        invalid_fields: list[InvalidField] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.invalid_fields, self.headers = invalid_fields, headers

    def body(self) -> dict:
        body: dict[str, Any] = {"title": self.title, "detail": self.detail, "status": self.status}
        if self.invalid_fields:
            body["invalid_fields"] = [asdict(f) for f in self.invalid_fields]
        return body


def limit_reached(error: limits.LimitReached) -> ApiError:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
    title = "Too many requests" if error.status == 429 else "Insufficient storage"
    return ApiError(error.status, title, error.detail, headers=headers)


def invalid_input(error: InputError) -> ApiError:
    detail = "".join(f"- {f.field}: {f.description}\n" for f in error.fields)
    return ApiError(422, "Input validation failed", detail, error.fields)


class Service:
    def __init__(self, config: ServiceConfig, engine: Engine | None = None) -> None:
        self.runtime = rt = Runtime(config, engine)
        self.config, self.engine, self.store, self.models = rt.config, rt.engine, rt.store, rt.models
        self.signer, self.urls, self.wakeups = rt.signer, rt.urls, rt.wakeups
        self.webhooks, self.metrics = rt.webhooks, rt.metrics
        self.pool = WorkerPool(rt)
        rt.workers = self.pool.status

    def start(self) -> None:
        self.runtime.start()
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()
        self.runtime.stop()

    # ---- who and what ---------------------------------------------------------------------------------------
    def owner_of(self, token: str) -> str | None:
        """The token's owner, looked up on every request (one indexed query): a revoked token stops working at
        once on every service process, with no cache to outlive it."""
        return tokens.owner_of(self.engine, token)

    def model(self, full_name: str) -> Model:
        if full_name not in self.models:
            raise ApiError(404, "Not found", f"There is no model {full_name!r}; models: {', '.join(self.models)}.")
        return self.models[full_name]

    def model_for_version(self, ref: str) -> Model:
        """A version id, ``owner/name`` (its latest version) or ``owner/name:version``."""
        name, _, version = ref.partition(":") if "/" in ref else ("", "", ref)
        candidates = [self.model(name)] if name else list(self.models.values())
        for model in candidates:
            if not version or model.version == version:
                return model
        current = ", ".join(f"{m.full_name}:{m.version}" for m in candidates)
        raise ApiError(
            422,
            "Invalid version",
            f"version {ref!r} does not exist (or is no longer served); current versions: {current}",
            invalid_fields=[InvalidField("version", "not_found", "unknown version")],
        )

    def training_model(self, model: Model) -> Model:
        if model.kind != "training":
            raise ApiError(
                422,
                "Invalid request",
                f"{model.full_name} is not a training model; use {self.default_training_model().full_name}",
            )
        return model

    def default_training_model(self) -> Model:
        return next(m for m in self.models.values() if m.kind == "training")

    def prediction(self, prediction_id: str, owner: str, kind: str | None = None) -> dict:
        row = predictions.get(self.engine, prediction_id, owner)
        if row is None or (kind and row["kind"] != kind):
            raise ApiError(404, "Not found", f"No {kind or 'prediction'} {prediction_id!r} found.")
        return row

    def fork_input(self, parent: dict, changes: dict[str, Any]) -> dict[str, Any]:
        """The parent's input with ``changes``, and what the parent drew or fetched kept unless changed, so that a
        fork without changes re-runs it exactly: the seed it drew (its seed was empty; ``"seed": null`` draws
        anew), and each LoRA by the sha256 of the file it used, where an entry no longer names those bytes (a
        signed URL expired, a server gone, a name with a newer version): the named version that has them (as
        ``owner/name:N``), else the owner's file. A LoRA a ``<lora:owner/name:w>`` tag applied is pinned in its
        tag (``owner/name:N``). A LoRA found nowhere keeps its entry."""
        if parent.get("data_removed"):
            raise ApiError(409, "Conflict", f"{parent['id']}'s input and output were removed: nothing to fork.")
        merged = {**parent["input"], **changes}
        record = parent.get("provenance") or {}
        if "seed" not in changes and parent["input"].get("seed") is None and record.get("seed") is not None:
            merged["seed"] = record["seed"]
        record_loras = record.get("loras") or []
        if "lora_urls" in changes or not record_loras:
            return merged
        urls = loras.entries(merged.get("lora_urls"))
        entries = loras.entries(loras.tags_as_entries(parent["input"]).get("lora_urls"))  # what its worker got
        if len(entries) != len(record_loras) or entries[: len(urls)] != urls:  # not what the record was made from
            return merged
        if "prompt" in changes:  # its tags may name other LoRAs now: only the lora_urls entries are kept
            record_loras = record_loras[: len(urls)]
        owner, pinned_tags = parent["owner"], {}
        for i, lora in enumerate(record_loras):
            if self._names_bytes(entries[i], owner) == lora["sha256"]:
                continue
            if named := loras.by_sha256(self.engine, lora["sha256"], owner):
                pinned = f"{named['owner']}/{named['name']}:{named['version']}"  # that version, not the newest
            elif i < len(urls) and (row := files.by_sha256(self.engine, owner, lora["sha256"])):
                pinned = self.urls.file_api(row)
            else:
                continue
            if i < len(urls):
                urls[i] = pinned
            else:  # applied by a tag in the prompt
                pinned_tags[entries[i]] = pinned
        if urls:
            merged["lora_urls"] = "|".join(urls)
        if pinned_tags:
            merged["prompt"] = loras.TAG.sub(
                lambda m: f"<lora:{pinned_tags.get(m['ref'], m['ref'])}:{m['weight']}>", merged["prompt"]
            )
        return merged

    # ---- named LoRAs ----------------------------------------------------------------------------------------
    def lora(self, lora_owner: str, name: str, viewer: str) -> dict:
        """``owner/name`` as the API shows it, if the viewer may see it (another owner's private one: 404)."""
        versions = loras.versions(self.engine, lora_owner, name, viewer)
        if not versions:
            raise ApiError(404, "Not found", f"No LoRA {lora_owner}/{name} found.")
        return views.lora(versions, self.urls)

    def loras_of(self, owner: str) -> list[dict]:
        return [views.lora(versions, self.urls) for versions in loras.of_owner(self.engine, owner)]

    # ---- the owner's API tokens --------------------------------------------------------------------------------
    def tokens_of(self, owner: str) -> list[dict]:
        """The owner's tokens as a listing shows them: id, first characters, creation time; never a token."""
        return [_token_view(t) for t in tokens.listing(self.engine, owner)]

    def new_token(self, owner: str) -> dict:
        """A new token for the owner, shown this once (only its hash is kept)."""
        made = tokens.issue(self.engine, owner)
        return {**_token_view(made), "token": made["token"]}

    def revoke_token(self, owner: str, token_id: str) -> None:
        """Revoked at once, on every process; another owner's token id is answered as a missing one."""
        if not tokens.revoke_own(self.engine, owner, token_id):
            raise ApiError(404, "Not found", "No such token of yours.")

    def set_lora_visibility(self, lora_owner: str, name: str, viewer: str, visibility: str) -> dict:
        if lora_owner != viewer or not loras.set_visibility(self.engine, lora_owner, name, visibility):
            raise ApiError(404, "Not found", f"No LoRA {lora_owner}/{name} of yours found.")
        return self.lora(lora_owner, name, viewer)

    def remove_lora_version(self, lora_owner: str, name: str, version: int, viewer: str) -> None:
        """``DELETE``: one version of the viewer's own name, its file removed; its number is never given again."""
        if lora_owner != viewer or not loras.remove(self.engine, self.store, lora_owner, name, version):
            raise ApiError(404, "Not found", f"No LoRA {lora_owner}/{name}:{version} of yours found.")

    def remove_data(self, prediction_id: str, owner: str, kind: str | None = None) -> None:
        """``DELETE``: an ended prediction's files, input, output and logs removed (``data_removed``)."""
        row = self.prediction(prediction_id, owner, kind)
        if predictions.remove_data(self.engine, self.store, row["id"]) is None:
            raise ApiError(
                409, "Conflict", f"{row['id']} is {row['status']}: cancel it, then delete it once it has ended."
            )

    def file(self, file_id: str, owner: str) -> dict:
        row = files.get(self.engine, file_id, owner)
        if row is None:
            raise ApiError(404, "Not found", f"No file {file_id!r} found.")
        return row

    # ---- creating -------------------------------------------------------------------------------------------
    def create_prediction(
        self,
        owner: str,
        model: Model,
        input: dict,
        webhook: str | None,
        events: Sequence[str] | None,
        forked_from: str | None = None,
        source: str = "api",
        destination: str | None = None,
    ) -> dict:
        try:
            clean = model.validate(input)
        except InputError as e:
            raise invalid_input(e) from None
        if model.kind == "training" and destination is not None:
            self._check_destination(owner, destination)
        for field, refs in (
            ("lora_urls", _lora_refs(clean.get("lora_urls"))),
            ("prompt", loras.tag_refs(clean.get("prompt"))),
        ):
            unknown = [ref for ref in refs if not loras.resolve(self.engine, ref, owner)]
            if unknown:
                message = (
                    f"no LoRA named {unknown[0]!r}: a name is one of yours (owner/name for the newest version, "
                    "owner/name:N for one) or another owner's public one"
                )
                raise invalid_input(InputError([InvalidField(f"input.{field}", "not_found", message)]))
        try:
            limits.check_create(self.engine, owner, self.config.owner_limits)
        except limits.LimitReached as e:
            raise limit_reached(e) from None
        fields = [self._file_input(owner, name, clean[name]) for name in model.file_inputs if clean.get(name)]
        problems = [f for f in fields if isinstance(f, InvalidField)]
        if problems:
            raise invalid_input(InputError(problems))
        clean.update(dict(f for f in fields if not isinstance(f, InvalidField)))
        if webhook:
            try:
                check_url(webhook, self.config.allowed_private_hosts)
            except ValueError as e:
                raise ApiError(
                    422, "Invalid webhook", str(e), invalid_fields=[InvalidField("webhook", "invalid", str(e))]
                ) from None
        row = predictions.create(
            self.engine,
            owner=owner,
            model=model.full_name,
            version=model.version,
            kind=model.kind,
            input=clean,
            source=source,
            webhook=webhook,
            webhook_events_filter=list(events) if events is not None else None,
            forked_from=forked_from,
            destination=destination if model.kind == "training" else None,
        )
        self.wakeups.prediction_queued()
        return row

    def _names_bytes(self, entry: str, owner: str) -> str | None:
        """The sha256 of the file a ``lora_urls`` entry names here (a LoRA name, or a file of the owner's), if any:
        an outside URL's bytes are known only by fetching them."""
        if named := loras.resolve(self.engine, entry, owner):
            return named["sha256"]
        ids = self.urls.own_file_ids(entry)
        row = files.get(self.engine, ids[0], owner) if len(ids) == 1 else None
        return row["sha256"] if row else None

    @staticmethod
    def _check_destination(owner: str, destination: str) -> None:
        parsed = loras.parse(destination)
        if parsed is None or parsed[2] is not None or parsed[0] != owner:
            detail = (
                f"destination must be a name of yours, {owner}/<name> (lowercase letters, digits, '.', '_' and '-'; "
                f"no version): the training's LoRA becomes its next version. Got {destination!r}."
            )
            raise ApiError(422, "Invalid destination", detail, [InvalidField("destination", "invalid", detail)])

    def _file_input(self, owner: str, name: str, value: Any) -> tuple[str, str] | InvalidField:
        """A file input made safe to hand to a worker: (name, value), or why it cannot be."""
        field = f"input.{name}"
        if not isinstance(value, str):
            return InvalidField(field, "type", "must be a URL")
        if value.startswith("data:"):
            try:
                content_type, data = outputs.decode_data_uri(value)
            except ValueError as e:
                return InvalidField(field, "invalid", str(e))
            saved = self.save_upload(owner, f"{name}{_extension(content_type)}", io.BytesIO(data), content_type)
            return name, self.urls.file_api(saved)
        if len(value) > MAX_URL_CHARS:
            return InvalidField(
                field,
                "too_long",
                f"a URL of at most {MAX_URL_CHARS} characters (upload big "
                "files with POST /v1/files, or send small ones as a data: URI)",
            )
        own = self.urls.own_file_ids(value)
        if own:
            if files.get(self.engine, own[0], owner) is None:
                return InvalidField(field, "not_found", "no such file (upload it with POST /v1/files)")
            return name, value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return InvalidField(
                field, "invalid", "must be an https:// URL, a data: URI or a file uploaded to /v1/files"
            )
        try:
            checked_url_address(parts, self.config.allowed_private_hosts)
        except FetchError as e:
            return InvalidField(field, "invalid", str(e))
        return name, value

    def upload_room(self, owner: str) -> int | None:
        """Bytes ``owner`` may still upload (None: no quota); a 507 if none."""
        try:
            return limits.upload_room(self.engine, owner, self.config.owner_limits)
        except limits.LimitReached as e:
            raise limit_reached(e) from None

    def save_upload(
        self, owner: str, name: str, stream: BinaryIO, content_type: str | None, room: int | None = None
    ) -> dict:
        room = self.upload_room(owner) if room is None else room
        limit = self.config.max_upload_bytes if room is None else min(self.config.max_upload_bytes, room)
        try:
            return files.save(
                self.engine, self.store, owner=owner, name=name, stream=stream, limit=limit, content_type=content_type
            )
        except files.TooLarge as e:
            if limit < self.config.max_upload_bytes:
                raise ApiError(
                    507,
                    "Insufficient storage",
                    f"This upload does not fit in the {limit / 2**20:.0f} MB "
                    "left of your upload quota: delete files with DELETE /v1/files/{id}.",
                ) from None
            raise ApiError(413, "Too large", str(e)) from None
        except file_store.StorageFull:
            raise ApiError(507, "Insufficient storage", "The file store is full; try again later.") from None

    def cancel(self, prediction_id: str, owner: str) -> dict:
        self.prediction(prediction_id, owner)
        outcome = predictions.cancel(self.engine, prediction_id)
        if outcome == "canceled":
            row = predictions.existing(self.engine, prediction_id)
            self.runtime.on_event(row, "completed")
            self.wakeups.prediction_changed(prediction_id)
        elif outcome == "requested":
            self.pool.cancel(prediction_id)
        return predictions.existing(self.engine, prediction_id)

    # ---- showing --------------------------------------------------------------------------------------------
    def render(self, row: dict) -> dict:
        return self.runtime.render(row)

    def page(self, owner: str, path: str, cursor: str | None, model: str | None, kind: str | None) -> dict:
        try:
            rows, older, newer = predictions.page(self.engine, owner, cursor, model=model, kind=kind)
        except ValueError as e:
            raise ApiError(400, "Invalid cursor", str(e)) from None
        extra = f"&model={model}" if model else ""
        link = lambda c: f"{self.config.public_url}{path}?cursor={c}{extra}" if c else None  # noqa: E731
        return {"next": link(older), "previous": link(newer), "results": [self.render(r) for r in rows]}


def _extension(content_type: str) -> str:
    return {
        "application/zip": ".zip",
        "application/x-zip-compressed": ".zip",
        "image/png": ".png",
        "image/jpeg": ".jpg",
        "image/webp": ".webp",
    }.get(content_type, "")


def _lora_refs(value: Any) -> list[str]:
    """The LoRA names (``owner/name[:N]``) among a ``lora_urls`` value's entries."""
    if not isinstance(value, str):
        return []
    return [entry.strip() for entry in value.split("|") if loras.parse(entry)]


def _token_view(row: dict) -> dict:
    return {"id": row["id"], "hint": row["hint"] + "…", "created_at": views.timestamp(row["created_at"])}
