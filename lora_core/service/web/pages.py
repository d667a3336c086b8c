"""What the web pages show, computed from schemas, rows and logs: plain data for the templates, no I/O.

The form is built from a model's OpenAPI input schema alone, so a new predictor input appears
on the page without touching HTML. Progress bars read the one progress-line format
(``lora_core.progress``), and the browser's copy of that regex is derived from the same one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from lora_core import progress as progress_lines
from lora_core.catalog import registry
from lora_core.service.queue import outputs

Kind = Literal["file", "enum", "boolean", "integer", "number", "text", "textarea"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


@dataclass(frozen=True)
class FormField:
    name: str
    title: str
    description: str
    kind: Kind
    type_name: str  # shown beside the name: string, integer, number, boolean, file or enum
    default: Any
    required: bool
    nullable: bool
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()  # a free text's usual values, offered as a datalist

    @property
    def wide(self) -> bool:
        """Free text and files take the form's full width; numbers, choices and toggles share a row."""
        return self.kind in ("file", "textarea", "text")

    @property
    def expert(self) -> bool:
        """Inputs the predictor's author marks 'Expert:' start folded away."""
        return self.description.lower().startswith("expert")

    @property
    def bounds(self) -> str:
        if self.minimum is None and self.maximum is None:
            return ""
        low = "" if self.minimum is None else _number(self.minimum)
        high = "" if self.maximum is None else _number(self.maximum)
        return f"{low} – {high}" if low and high else (f"≥ {low}" if low else f"≤ {high}")

    def text(self, value: Any) -> str:
        """``value`` as an HTML input holds it ('' for empty)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return _number(value)
        return str(value)


# ``base_model`` takes a registry name or a checkpoint URL, so it is free text (Cog's ``choices`` would refuse URLs);
# the form offers the registry's names. The registry is torch-free data.
SUGGESTIONS: dict[str, tuple[str, ...]] = {"base_model": tuple(registry.REGISTRY)}


def form_fields(schema: dict) -> list[FormField]:
    """The model's inputs in ``x-order``, each with what its form control needs."""
    components = schema["components"]["schemas"]
    input_schema = components["Input"]
    required = set(input_schema.get("required", []))
    props = input_schema["properties"]
    out = []
    for name in sorted(props, key=lambda k: props[k].get("x-order", 0)):
        prop = props[name]
        enum = _enum(prop, components)
        type_name = prop.get("type", "string")
        if prop.get("format") == "uri":
            kind: Kind = "file"
            type_name = "file"
        elif enum is not None:
            kind = "enum"
            type_name = "enum"
        elif type_name in ("boolean", "integer", "number"):
            kind = type_name
        else:
            # a string whose default is a short value ("0.5") is one line; free text (prompts, URL lists) is not
            kind = "textarea" if not prop.get("default") and name not in SUGGESTIONS else "text"
        out.append(
            FormField(
                name=name,
                title=prop.get("title") or name.replace("_", " ").title(),
                description=prop.get("description", ""),
                kind=kind,
                type_name=type_name,
                default=prop.get("default"),
                required=name in required,
                nullable=bool(prop.get("nullable")),
                minimum=prop.get("minimum"),
                maximum=prop.get("maximum"),
                choices=tuple(str(c) for c in enum["enum"]) if enum is not None else (),
                suggestions=SUGGESTIONS.get(name, ()) if kind == "text" else (),
            )
        )
    return out


def _enum(prop: dict, components: dict) -> dict | None:
    if "enum" in prop:
        return prop
    for part in prop.get("allOf", []):
        ref = part.get("$ref", "")
        target = components.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/components/schemas/") else None
        if target and "enum" in target:
            return target
    return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def prefill(fields: list[FormField], *sources: dict[str, Any]) -> dict[str, str]:
    """Each input's starting text: its default, overridden by each source in turn (parent input, query)."""
    values = {f.name: f.text(f.default) for f in fields}
    by_name = {f.name: f for f in fields}
    for source in sources:
        for name, value in source.items():
            if name in by_name:
                values[name] = by_name[name].text(value)
    return values


# ---- logs --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    percent: float
    step: int
    total: int
    eta_s: int | None
    line: str


def progress(logs: str) -> Progress | None:
    """The last progress line of ``logs``, parsed."""
    found = progress_lines.matches(logs)
    if not found:
        return None
    last = found[-1]
    return Progress(
        float(last["percent"]),
        int(last["step"]),
        int(last["total"]),
        progress_lines.seconds(last["eta"]),
        last.string.strip(),
    )


def js_progress_pattern() -> str:
    """``LINE`` in JavaScript's syntax (named groups are ``(?<name>`` there)."""
    return progress_lines.LINE.pattern.replace("(?P<", "(?<")


def resolved_seed(logs: str) -> int | None:
    """The seed a run actually used, as its logs record it (``"seed":N`` in settings, or ``seed N``)."""
    match = re.search(r'"seed":\s*(\d+)', logs or "") or re.search(r"\bseed (\d+)\b", logs or "")
    return int(match[1]) if match else None


def drawn_seed(row: dict) -> int | None:
    """The seed a run used: a generation's provenance records it; a training's logs say it."""
    seed = (row.get("provenance") or {}).get("seed")
    return seed if isinstance(seed, int) else resolved_seed(row.get("logs") or "")


def lora_prompt(logs: str, default: str = "a photo of <1>") -> str:
    """The prompt the training drew its scales grid with: the natural first prompt for its LoRA."""
    match = re.search(r"""sample grid: (['"])(.*?<1>.*?)\1""", logs or "")
    return match[2] if match else default


def grid_caption(logs: str) -> str:
    """What a training's sample grid shows (prompt, scales, seed), as its log line says."""
    match = re.search(r"^sample grid: (.+)$", logs or "", re.M)
    return match[1].strip() if match else ""


# ---- predictions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    name: str
    before: Any
    after: Any
    before_note: str = ""  # e.g. the seed an empty (random) seed drew


def input_diff(parent: dict, child: dict, drawn: int | None = None) -> list[Change]:
    """The inputs the fork changed, in the child's order; ``drawn``: the seed the parent's empty seed drew."""
    names = list(child) + [k for k in parent if k not in child]
    return [
        Change(
            k,
            parent.get(k),
            child.get(k),
            f"drew {drawn}" if k == "seed" and parent.get(k) is None and drawn is not None else "",
        )
        for k in names
        if parent.get(k) != child.get(k)
    ]


def show_value(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


@dataclass
class OutputItem:
    key: str  # the output's key (object outputs) or index
    url: str | None
    name: str = ""
    size: int | None = None
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # a non-file output value
    file_id: str | None = None

    @property
    def is_image(self) -> bool:
        return self.content_type.startswith("image/") or _suffix(self.url or "") in IMAGE_SUFFIXES

    @property
    def is_lora(self) -> bool:
        return self.name.endswith(".safetensors")

    @property
    def facts(self) -> list[tuple[str, str]]:
        """A LoRA file's metadata worth reading on a page: base, task, tokens, rank, steps, seed."""
        labels = {
            "lora_studio.base_model": "base",
            "lora_studio.task": "task",
            "lora_studio.tokens": "tokens",
            "lora_studio.rank": "rank",
            "lora_studio.steps": "steps",
            "lora_studio.seed": "seed",
            "lora_studio.fidelity": "fidelity",
            "lora_studio.bleed": "bleed",
            "modelspec.trigger_phrase": "trigger",
        }
        out = []
        for key, label in labels.items():
            if key in self.metadata:
                value = self.metadata[key]
                try:
                    parsed = json.loads(value)
                    value = " ".join(map(str, parsed)) if isinstance(parsed, list) else value
                except ValueError:
                    pass
                out.append((label, value))
        return out


@dataclass(frozen=True)
class CheckpointRow:
    """One checkpoint of a training, as its file's metadata scores it (``training.checkpoint_report``)."""

    item: OutputItem
    step: int | None
    fidelity: str
    bleed: str
    recommended: bool


def is_checkpoint(item: OutputItem) -> bool:
    return item.key.startswith("checkpoints[")


def checkpoint_rows(items: list[OutputItem]) -> list[CheckpointRow]:
    """A training's checkpoints in step order, for the page's table."""
    rows = []
    for item in items:
        if is_checkpoint(item) and item.url:
            meta = item.metadata
            step = meta.get("lora_studio.steps", "")
            rows.append(
                CheckpointRow(
                    item,
                    int(step) if step.isdigit() else None,
                    meta.get("lora_studio.fidelity", "—"),
                    meta.get("lora_studio.bleed", "—"),
                    meta.get("lora_studio.recommended") == "true",
                )
            )
    return rows


def output_items(stored: Any, file_rows: list[dict], url_of: Callable[[dict], str]) -> list[OutputItem]:
    """A stored output (files as ``{"$file": id}``) flattened into what the page previews, in order."""
    by_id = {f["id"]: f for f in file_rows}
    items: list[OutputItem] = []

    def visit(value: Any, key: str) -> None:
        if isinstance(value, list):
            for i, v in enumerate(value):
                visit(v, f"{key}[{i}]" if key else str(i))
        elif isinstance(value, dict) and set(value) != {"$file"}:
            for k, v in value.items():
                visit(v, k)
        elif isinstance(value, dict):
            row = by_id.get(value["$file"])
            if row is None:
                items.append(OutputItem(key, None, text="(file missing)"))
            else:
                items.append(
                    OutputItem(
                        key,
                        url_of(row),
                        row["name"],
                        row["size"],
                        row["content_type"],
                        row.get("metadata") or {},
                        file_id=row["id"],
                    )
                )
        elif value is not None:
            items.append(OutputItem(key, None, text=str(value)))

    visit(stored, "")
    return items


def thumbnail(rendered_output: Any) -> str | None:
    """The first image URL in a rendered (API-shaped) output."""
    found: list[str] = []
    outputs.walk(
        rendered_output, lambda v: found.append(v) if isinstance(v, str) and _suffix(v) in IMAGE_SUFFIXES else None
    )
    return found[0] if found else None


def summary(input: dict, fields: list[FormField]) -> str:
    """One line saying what a prediction was: its prompt, or its first few set inputs."""
    if isinstance(input.get("prompt"), str) and input["prompt"]:
        return input["prompt"]
    shown = [f for f in fields if f.kind != "file" and input.get(f.name) not in (None, "")]
    changed = [f for f in shown if input[f.name] != f.default]  # what the user chose says the most
    return " · ".join(f"{f.name} {input[f.name]}" for f in (changed or shown)[:3])


def _suffix(url: str) -> str:
    path = urlsplit(url).path.lower()
    dot = path.rfind(".")
    return path[dot:] if dot > path.rfind("/") else ""


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}" if unit != "KB" else f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    return f"{value:.2f} s" if value < 10 else (f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min")
