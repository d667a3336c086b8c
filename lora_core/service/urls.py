"""Every URL the service hands out or recognises: predictions, files (signed), and its own file URLs in inputs."""

from __future__ import annotations

import re
from urllib.parse import quote

from sqlalchemy.engine import Engine

from lora_core.service.auth.signing import Signer
from lora_core.service.config import ServiceConfig
from lora_core.service.storage import files, loras


class Urls:
    def __init__(self, config: ServiceConfig, signer: Signer) -> None:
        self.config, self.signer = config, signer
        bases = "|".join(
            re.escape(b) for b in sorted({u for u in (config.public_url, config.internal_url, config.files_url) if u})
        )
        # an uploaded file's API URL, or a served file URL (with or without its signature)
        self._own_file = re.compile(
            rf"(?:{bases})/(?:v1/files/(?P<api>[0-9a-f]{{32}})"
            rf"|files/(?P<served>[0-9a-f]{{32}})/[^\s|?]*(?:\?[^\s|]*)?)"
        )

    def prediction(self, row: dict) -> dict[str, str]:
        collection = "trainings" if row["kind"] == "training" else "predictions"
        api = f"{self.config.public_url}/v1/{collection}/{row['id']}"
        return {"get": api, "cancel": f"{api}/cancel", "web": f"{self.config.public_url}/predictions/{row['id']}"}

    def file(self, row: dict, base: str | None = None) -> str:
        """A signed download URL: works without a token until it expires (1-2 days), the same URL within a day.
        On ``LORA_STUDIO_FILES_URL`` when set: file bytes then never share an origin with the pages."""
        base = base or self.config.files_url or self.config.public_url
        return (
            f"{base}/files/{row['id']}/{quote(row['name'])}?"
            f"{self.signer.file_query(row['id'], self.config.file_url_window_s)}"
        )

    def file_api(self, row: dict) -> str:
        return f"{self.config.public_url}/v1/files/{row['id']}"

    def own_file_ids(self, text: str) -> list[str]:
        """Ids of this service's files that ``text`` links to."""
        return [m["api"] or m["served"] for m in self._own_file.finditer(text)]

    def names_for_worker(self, value: str, viewer: str, engine: Engine) -> str:
        """A ``lora_urls`` value with each LoRA name (``owner/name[:N]``) the viewer may use replaced by a URL of
        its version's file the worker can fetch (a name found nowhere stays: the predictor then says it is no URL).
        """
        entries = []
        for entry in value.split("|"):
            named = loras.resolve(engine, entry, viewer)
            file_row = files.get(engine, named["file_id"]) if named else None
            entries.append(self.file(file_row, base=self.config.internal_url) if file_row else entry)
        return "|".join(entries)

    def for_worker(self, value: str, owner: str, engine: Engine) -> str:
        """``value`` with each of the owner's files at this service replaced by a URL the worker can fetch.

        Other owners' file URLs stay as they are: a worker can fetch them only with a valid signature.
        """

        def replace(match: re.Match) -> str:
            row = files.get(engine, match["api"] or match["served"], owner)
            return self.file(row, base=self.config.internal_url) if row else match[0]

        return self._own_file.sub(replace, value)
