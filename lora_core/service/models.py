"""The models the service runs, described only by their Cog schemas (``.cog/openapi_schema*.json``).

A version id is derived from the schema and the code version, as Replicate's are from the
image. Inputs are validated against the schema before anything is queued (422 naming the
field, in Replicate's shape), and a finished prediction's output is checked against it
(a file the worker failed to upload must not look like success).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from lora_core import __version__
from lora_core.catalog import registry
from lora_core.service.config import REPO_ROOT


@dataclass(frozen=True)
class InvalidField:
    field: str
    type: str
    description: str


class InputError(ValueError):
    def __init__(self, fields: list[InvalidField]) -> None:
        self.fields = fields
        super().__init__("; ".join(f"{f.field}: {f.description}" for f in fields))


@dataclass
class Model:
    owner: str
    name: str
    kind: str  # "prediction" | "training": trainings are listed under /v1/trainings too
    description: str
    predictor: str  # Cog's predict stub, relative to the repo root
    schema_path: Path
    schema: dict = field(repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @cached_property
    def version(self) -> str:
        """sha256 of the schema, the predictor's source and the package version: changes when the model does."""
        source = (REPO_ROOT / self.predictor.split(":")[0]).read_bytes()
        blob = json.dumps(self.schema, sort_keys=True).encode() + source + __version__.encode()
        return hashlib.sha256(blob).hexdigest()

    @cached_property
    def created_at(self) -> datetime.datetime:
        """When this version's files were written here (what Replicate shows as the version's date)."""
        paths = [self.schema_path, REPO_ROOT / self.predictor.split(":")[0]]
        return datetime.datetime.fromtimestamp(max(p.stat().st_mtime for p in paths), datetime.UTC).replace(tzinfo=None)

    @cached_property
    def input_schema(self) -> dict:
        return self.schema["components"]["schemas"]["Input"]

    @cached_property
    def output_schema(self) -> dict:
        return self.schema["components"]["schemas"]["Output"]

    @cached_property
    def file_inputs(self) -> tuple[str, ...]:
        """Inputs Cog downloads itself (``format: uri``): the service hands the worker a URL it can fetch."""
        return tuple(k for k, v in self.input_schema["properties"].items() if v.get("format") == "uri")

    @cached_property
    def _validator(self) -> jsonschema.Validator:
        components = {k: _json_schema(v) for k, v in self.schema["components"]["schemas"].items()}
        root = {"$ref": "#/components/schemas/Input", "components": {"schemas": components}}
        components["Input"]["additionalProperties"] = False
        return jsonschema.Draft202012Validator(root)

    def validate(self, value: Any) -> dict:
        """The input with the schema's defaults filled in; ``InputError`` naming each bad field."""
        if not isinstance(value, dict):
            raise InputError([InvalidField("input", "type", "input must be a JSON object")])
        errors = [
            InvalidField(f"input.{path}", "finite", f"must be a finite number, got {number}")
            for path, number in _non_finite(value)
        ]  # JSON has no NaN/Infinity; Python's parser lets them in
        non_finite = {f.field for f in errors}
        props = self.input_schema["properties"]
        for error in sorted(self._validator.iter_errors(value), key=lambda e: list(e.path)):
            if "input." + ".".join(str(p) for p in error.path) in non_finite:
                continue  # said already, better
            if error.validator == "additionalProperties":
                for name in sorted(set(value) - set(props)):
                    close = difflib.get_close_matches(name, props, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; inputs are {', '.join(props)}"
                    errors.append(InvalidField(f"input.{name}", "unknown_field", f"unknown input {name!r}{hint}"))
                continue
            if error.validator == "required":
                name = error.message.split("'")[1]
                errors.append(InvalidField(f"input.{name}", "required", f"{name} is required"))
                continue
            name = ".".join(str(p) for p in error.path) or "input"
            errors.append(InvalidField(f"input.{name}", str(error.validator), _describe(error)))
        errors += _base_model_problems(value)
        if errors:
            raise InputError(errors)
        ordered = sorted(props, key=lambda k: props[k].get("x-order", 0))
        return {
            k: copy.deepcopy(value[k]) if k in value else copy.deepcopy(props[k]["default"])
            for k in ordered
            if k in value or "default" in props[k]
        }

    def output_problem(self, input: dict, output: Any) -> str | None:
        """Why a 'succeeded' output is incomplete (a file missing), or None."""
        schema = self.output_schema
        if schema.get("type") == "object":
            missing = [k for k in schema.get("required", []) if not isinstance(output, dict) or not output.get(k)]
            if missing:
                return f"the worker finished but output {', '.join(missing)} is missing (its upload failed)"
        if schema.get("type") == "array":
            wanted = input.get("num_outputs")
            got = len(output) if isinstance(output, list) else 0
            if got == 0 or (isinstance(wanted, int) and got != wanted):
                return f"the worker finished with {got} of {wanted or 'its'} output files; the others failed to upload"
        return None


def _base_model_problems(value: dict) -> list[InvalidField]:
    """``base_model`` is free text in the schema (a registry name, a checkpoint URL or a hub id; Cog's ``choices``
    would refuse the last two), so a misspelt name is caught here, before anything is queued, as an enum would be."""
    base = value.get("base_model")
    if not isinstance(base, str) or not base or base in registry.REGISTRY:
        return []
    if urlsplit(base).scheme.lower() in ("http", "https") or registry.is_hub_id(base):
        return []  # fetched by the worker, under its network rules and limits
    names = ", ".join(registry.REGISTRY)
    hint = registry.OWN_CHECKPOINT_HINT
    return [InvalidField("input.base_model", "enum", f"must be one of: {names}; {hint}")]


def _non_finite(value: Any, path: str = "") -> list[tuple[str, float]]:
    """(path, number) of every NaN or infinity inside ``value``: JSON Schema bounds let them through
    (NaN compares false to everything), and they cannot be written back out as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _non_finite(v, f"{path}.{i}" if path else str(i))]
    return []


def _json_schema(openapi: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema: ``nullable: true`` becomes 'or null'; vendor keys go."""
    if isinstance(openapi, list):
        return [_json_schema(v) for v in openapi]
    if not isinstance(openapi, dict):
        return openapi
    out = {k: _json_schema(v) for k, v in openapi.items() if not k.startswith("x-") and k != "nullable"}
    if openapi.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}], **{k: out[k] for k in ("default", "title", "description") if k in out}}
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    v = error.validator
    if v == "maximum":
        return f"must be less than or equal to {error.validator_value}"
    if v == "minimum":
        return f"must be greater than or equal to {error.validator_value}"
    if v in ("maxLength", "minLength"):
        bound = "at most" if v == "maxLength" else "at least"
        return f"must be {bound} {error.validator_value} characters long, got {len(error.instance)}"
    if v == "enum":
        return f"must be one of: {', '.join(map(str, error.validator_value))}"
    if v == "type":
        return f"must be of type {error.validator_value}, got {json.dumps(error.instance)[:60]}"
    if v == "anyOf":  # a nullable field: report the non-null branch's complaint, not "must be of type null"
        branches = [e for e in error.context if e.schema.get("type") != "null"] or error.context
        best = jsonschema.exceptions.best_match(branches)
        return _describe(best) if best is not None else error.message
    return error.message[:300]


MODELS: dict[str, dict] = {
    "lora-studio/lora": dict(
        kind="prediction",
        predictor="predict_generate.py:Predictor",
        schema=".cog/openapi_schema.json",
        description="Generate images with one or more LoRAs (<1>, <2>… in the prompt) on an SD 1.x or SDXL base, "
        "a named one or your own.",
    ),
    "lora-studio/lora-training": dict(
        kind="training",
        predictor="predict_train.py:Predictor",
        schema=".cog/openapi_schema-cog-train.json",
        description="Train a LoRA from a .zip of photos (3-100; 5-30 work best) of a face, an object or a style.",
    ),
}


def load_models(root: Path = REPO_ROOT) -> dict[str, Model]:
    out = {}
    for full_name, spec in MODELS.items():
        owner, name = full_name.split("/")
        path = root / spec["schema"]
        out[full_name] = Model(
            owner, name, spec["kind"], spec["description"], spec["predictor"], path, json.loads(path.read_text())
        )
    return out
