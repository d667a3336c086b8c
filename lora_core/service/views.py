"""The JSON the API returns, in Replicate's shapes (the official ``replicate`` client parses these)."""

from __future__ import annotations

import datetime
from typing import Any

from lora_core.service.models import Model
from lora_core.service.queue import outputs
from lora_core.service.urls import Urls


def timestamp(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def prediction(row: dict, urls: Urls, file_rows: list[dict]) -> dict[str, Any]:
    by_id = {f["id"]: f for f in file_rows}
    output = outputs.render(row["output"], lambda fid: urls.file(by_id[fid]) if fid in by_id else None)
    body = {
        "id": row["id"],
        "model": row["model"],
        "version": row["version"],
        "input": row["input"],
        "output": output,
        "logs": row["logs"] or "",
        "error": row["error"],
        "status": row["status"],
        "source": row["source"],
        "data_removed": bool(row.get("data_removed")),
        "created_at": timestamp(row["created_at"]),
        "started_at": timestamp(row["started_at"]),
        "completed_at": timestamp(row["completed_at"]),
        "metrics": row["metrics"] or {},
        "provenance": row.get("provenance"),  # not Replicate's: what a generation used, for exact re-runs
        "urls": urls.prediction(row),
        "forked_from": row["forked_from"],
    }
    if row["kind"] == "training":
        body["destination"] = row.get("destination")
    return body


def lora(versions: list[dict], urls: Urls) -> dict[str, Any]:
    """A named LoRA (not Replicate's): its versions newest first, each its training's LoRA file."""
    newest = versions[0]
    ref = f"{newest['owner']}/{newest['name']}"
    return {
        "ref": ref,
        "owner": newest["owner"],
        "name": newest["name"],
        "visibility": newest["visibility"],
        "latest_version": newest["version"],
        "metadata": newest["metadata"] or {},  # the newest file's: base, task, tokens
        "versions": [
            {
                "version": v["version"],
                "ref": f"{ref}:{v['version']}",
                "sha256": v["sha256"],
                "size": v["size"],
                "training": v["prediction_id"],
                "created_at": timestamp(v["created_at"]),
                "urls": {"download": urls.file({"id": v["file_id"], "name": v["file_name"]})},
            }
            for v in versions
        ],
    }


def file(row: dict, urls: Urls) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "content_type": row["content_type"],
        "size": row["size"],
        "etag": row["sha256"],
        "checksums": {"sha256": row["sha256"], "md5": row["md5"]},
        "metadata": row["metadata"] or {},
        "created_at": timestamp(row["created_at"]),
        "expires_at": None,
        "urls": {"get": urls.file_api(row), "download": urls.file(row)},
    }


def model(m: Model, public_url: str) -> dict[str, Any]:
    return {
        "url": f"{public_url}/models/{m.full_name}",
        "owner": m.owner,
        "name": m.name,
        "description": m.description,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "run_count": 0,
        "cover_image_url": None,
        "default_example": None,
        "latest_version": version(m),
    }


def version(m: Model) -> dict[str, Any]:
    return {
        "id": m.version,
        "created_at": timestamp(m.created_at),
        "cog_version": m.schema.get("info", {}).get("version"),
        "openapi_schema": m.schema,
    }
