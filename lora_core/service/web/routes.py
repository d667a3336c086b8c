"""The web pages: models, a form per model built from its schema, a prediction's page, the history.

Pages are rendered on the server from the ``Service`` and are read-only. They know the viewer
from the API token the browser keeps in a ``SameSite=Strict`` cookie; everything that changes
state (uploads, predictions, forks, cancels) is done by the page's script through the JSON API
with an ``Authorization`` header, which never reads that cookie, so another site cannot forge it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from lora_core.service import views
from lora_core.service.auth import tokens
from lora_core.service.auth.tokens import PAGE_HEADER, TOKEN_COOKIE
from lora_core.service.core import ApiError, Service
from lora_core.service.models import Model
from lora_core.service.queue import predictions
from lora_core.service.storage import files
from lora_core.service.web import pages

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"


def _headers(*urls: str | None) -> dict[str, str]:
    """Same-origin scripts, styles and requests only (no inline script: user text can never run); images also from
    the service's public and files URLs (output links use them); no framing; private pages are not cached."""
    origins = " ".join(sorted({"/".join(u.split("/")[:3]) for u in urls if u}))
    return {
        "Content-Security-Policy": f"default-src 'self'; img-src 'self' data: {origins}; style-src 'self'; "
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


router = APIRouter(include_in_schema=False)
templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals.update(
    show_value=pages.show_value,
    human_size=pages.human_size,
    seconds=pages.seconds,
    progress_pattern=pages.js_progress_pattern(),
)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


def _static_url(name: str) -> str:
    """A static file's URL with its content hash, so browsers may cache it and never serve a stale one."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={digest}"


templates.globals["static"] = {name: _static_url(name) for name in ("app.css", "app.js")}


def _service(request: Request) -> Service:
    return request.app.state.service


async def _viewer(request: Request) -> tuple[str | None, bool]:
    """(owner, whether a stored token was refused) of the browser's token cookie."""
    token = request.cookies.get(TOKEN_COOKIE, "").strip()
    if not token:
        return None, False
    owner = await run_in_threadpool(_service(request).owner_of, token)
    return owner, owner is None


async def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    owner, refused = context.pop("viewer", None) or await _viewer(request)
    svc = _service(request)
    html = templates.get_template(template).render(
        owner=owner, token_refused=refused, models=list(svc.models.values()), path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status, headers=_headers(svc.config.public_url, svc.config.files_url))


async def _message(
    request: Request, status: int, title: str, text: str, viewer: tuple[str | None, bool] | None = None
) -> HTMLResponse:
    return await _page(request, "message.html", status=status, title=title, text=text, viewer=viewer)


@router.post("/session")
async def sign_in(request: Request) -> Response:
    """The pages' sign-in: the token goes into an HttpOnly cookie that no script (neither the pages' nor one
    smuggled in a file) can read. Only the pages' own script may call this (its header; no CORS here)."""
    if not request.headers.get(PAGE_HEADER):
        raise ApiError(403, "Forbidden", "Sign in from the pages of this service.")
    try:
        token = str((await request.json()).get("token", "")).strip()[:200]
    except (ValueError, AttributeError):
        token = ""
    owner = await run_in_threadpool(_service(request).owner_of, token) if token else None
    if owner is None:
        raise ApiError(401, "Unauthenticated", "This server does not know that token.")
    response = Response(status_code=204)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=365 * 24 * 3600,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or _service(request).config.public_url.startswith("https:"),
    )
    return response


@router.post("/session/end")
async def sign_out(request: Request) -> Response:
    if not request.headers.get(PAGE_HEADER):
        raise ApiError(403, "Forbidden", "Sign out from the pages of this service.")
    response = Response(status_code=204)
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    viewer = await _viewer(request)
    recent = await run_in_threadpool(_history, _service(request), viewer[0], None, None, 6) if viewer[0] else None
    return await _page(request, "home.html", viewer=viewer, recent=recent)


@router.get("/models/{model_owner}/{name}", response_class=HTMLResponse)
async def model_form(request: Request, model_owner: str, name: str, fork: str | None = None) -> HTMLResponse:
    """The model's form. ``?fork=ID`` pre-fills it with that prediction's input and submits a fork of it;
    any other ``?input_name=value`` pre-fills that input (how "Use this LoRA" passes its URL)."""
    svc = _service(request)
    viewer = await _viewer(request)
    try:
        model = svc.model(f"{model_owner}/{name}")
    except ApiError as e:
        return await _message(request, 404, "No such model", e.detail, viewer)
    fields = pages.form_fields(model.schema)
    parent = None
    sources: list[dict[str, Any]] = []
    if fork:
        if viewer[0] is None:
            return await _message(
                request, 401, "Sign in to tweak a prediction", "Your API token opens your own predictions.", viewer
            )
        try:
            parent = await run_in_threadpool(svc.prediction, fork, viewer[0])
        except ApiError as e:
            return await _message(request, 404, "Not found", e.detail, viewer)
        if parent["model"] != model.full_name:
            return await _message(request, 404, "Not found", f"{fork} is a prediction of {parent['model']}.", viewer)
        given = dict(parent["input"])
        if given.get("seed") is None and (seed := pages.drawn_seed(parent)) is not None:
            given["seed"] = seed  # the seed it drew, so a tweak changes only what the user changes
        sources.append(given)
    sources.append({k: v for k, v in request.query_params.items() if k != "fork"})
    values = pages.prefill(fields, *sources)
    changed_expert = any(f.expert and values[f.name] != f.text(f.default) for f in fields)
    given_files = (
        await run_in_threadpool(
            _own_files, svc, viewer[0], {f.name: values[f.name] for f in fields if f.kind == "file"}
        )
        if viewer[0]
        else {}
    )
    return await _page(
        request,
        "model.html",
        viewer=viewer,
        model=model,
        fields=fields,
        values=values,
        given_files=given_files,
        parent=parent,
        open_expert=changed_expert,
        public_url=svc.config.public_url,
        api_body=_api_example(fields, values, fork=parent is not None),
    )


def _api_example(fields: list[pages.FormField], values: dict[str, str], fork: bool) -> str:
    """The JSON body of the form's request, for a curl line (quoted for single quotes in a shell)."""
    if fork:
        example: dict[str, Any] = {"seed": 1234} if any(f.name == "seed" for f in fields) else {}
    else:
        placeholder = {"file": "https://example.com/photos.zip"}
        example = {f.name: values[f.name] or placeholder.get(f.kind, "…") for f in fields if f.required}
    return json.dumps({"input": example}, ensure_ascii=False).replace("'", "'\\''")


@router.get("/predictions", response_class=HTMLResponse)
async def history(request: Request, model: str | None = None, cursor: str | None = None) -> HTMLResponse:
    viewer = await _viewer(request)
    if viewer[0] is None:
        return await _message(
            request,
            401,
            "Sign in to see your predictions",
            "Your history is private: paste your API token below.",
            viewer,
        )
    svc = _service(request)
    model = model if model in svc.models else None
    try:
        page = await run_in_threadpool(_history, svc, viewer[0], model, cursor, 20)
    except ValueError:
        return await _message(request, 400, "Invalid page", "That page link is not valid; start again.", viewer)
    return await _page(request, "history.html", viewer=viewer, page=page, model_filter=model)


def _history(svc: Service, owner: str, model: str | None, cursor: str | None, limit: int) -> dict:
    rows, older, newer = predictions.page(svc.engine, owner, cursor, limit=limit, model=model)
    link = lambda c: f"/predictions?{urlencode({'cursor': c, **({'model': model} if model else {})})}"  # noqa: E731
    fields = {name: pages.form_fields(m.schema) for name, m in svc.models.items()}
    items = [
        {
            "id": row["id"],
            "model": row["model"],
            "status": row["status"],
            "forked": bool(row["forked_from"]),
            "created_at": views.timestamp(row["created_at"]),
            "thumbnail": pages.thumbnail(svc.render(row)["output"]),
            "summary": pages.summary(row["input"], fields.get(row["model"], [])),
        }
        for row in rows
    ]
    return {"items": items, "older": link(older) if older else None, "newer": link(newer) if newer else None}


@router.get("/loras", response_class=HTMLResponse)
async def lora_catalog(request: Request) -> HTMLResponse:
    """The viewer's named LoRAs (trainings with a destination): versions, base, task, tokens, and "Use"."""
    viewer = await _viewer(request)
    if viewer[0] is None:
        return await _message(
            request, 401, "Sign in to see your LoRAs", "Your LoRAs are private: paste your API token below.", viewer
        )
    svc = _service(request)
    named = await run_in_threadpool(svc.loras_of, viewer[0])
    generator = _generation_model(svc)
    for lora in named:
        query = {"lora_urls": lora["ref"], "prompt": "a photo of <1>", **_base_of(lora["metadata"])}
        lora["use"] = f"/models/{generator.full_name}?{urlencode(query)}" if generator else None
        lora["sample"] = await run_in_threadpool(_sample_grid, svc, lora["versions"][0]["training"], viewer[0])
    return await _page(request, "loras.html", viewer=viewer, loras=named)


def _sample_grid(svc: Service, training_id: str, owner: str) -> str | None:
    """The URL of the training's checkpoint × scale grid, the newest version's picture (None once removed)."""
    row = predictions.get(svc.engine, training_id, owner)
    output = svc.render(row)["output"] if row else None
    grid = output.get("scales_grid") if isinstance(output, dict) else None
    return grid if isinstance(grid, str) else None


@router.get("/tokens", response_class=HTMLResponse)
async def token_page(request: Request) -> HTMLResponse:
    """The viewer's API tokens: make one (shown once), revoke any; the one this browser uses is marked."""
    viewer = await _viewer(request)
    if viewer[0] is None:
        return await _message(
            request, 401, "Sign in to manage your tokens", "Paste one of your API tokens below.", viewer
        )
    svc = _service(request)
    listed = await run_in_threadpool(svc.tokens_of, viewer[0])
    this = await run_in_threadpool(tokens.id_of, svc.engine, request.cookies.get(TOKEN_COOKIE, "").strip())
    return await _page(request, "tokens.html", viewer=viewer, tokens=listed, this_browser=this)


@router.get("/predictions/{prediction_id}", response_class=HTMLResponse)
async def prediction_page(request: Request, prediction_id: str) -> HTMLResponse:
    viewer = await _viewer(request)
    if viewer[0] is None:
        return await _message(
            request,
            401,
            "Sign in to see this prediction",
            "Predictions are private to their owner: paste your API token below.",
            viewer,
        )
    svc = _service(request)
    try:
        row = await run_in_threadpool(svc.prediction, prediction_id, viewer[0])
    except ApiError as e:
        return await _message(request, 404, "Not found", e.detail, viewer)
    context = await run_in_threadpool(_prediction_context, svc, row, viewer[0])
    return await _page(request, "prediction.html", viewer=viewer, **context)


def _prediction_context(svc: Service, row: dict, owner: str) -> dict[str, Any]:
    file_rows = files.of_prediction(svc.engine, row["id"]) if row["output"] is not None else []
    items = pages.output_items(row["output"], file_rows, svc.urls.file)
    parent = predictions.get(svc.engine, row["forked_from"], owner) if row["forked_from"] else None
    diff = pages.input_diff(parent["input"], row["input"], pages.drawn_seed(parent)) if parent else []
    model = svc.models.get(row["model"])
    return {
        "p": svc.render(row),
        "kind": row["kind"],
        "model": model,
        "items": items,
        "images": [i for i in items if i.is_image and i.url],
        "image_seeds": _image_seeds(row, items),
        "others": [i for i in items if not (i.is_image and i.url) and not pages.is_checkpoint(i)],
        "checkpoints": [(c, _use_lora_link(svc, row, c.item)) for c in pages.checkpoint_rows(items)],
        "grid_prompt": pages.lora_prompt(row["logs"] or ""),
        "bleed_bound": next(
            (i.metadata["lora_studio.bleed_bound"] for i in items if "lora_studio.bleed_bound" in i.metadata), "—"
        ),
        "progress": pages.progress(row["logs"] or ""),
        "grid_caption": pages.grid_caption(row["logs"] or ""),
        "parent": parent,
        "diff": diff,
        "use_lora": _use_lora_link(svc, row, _main_lora(items)),
        "input_files": _own_files(svc, row["owner"], row["input"]),
        "terminal": row["status"] in predictions.TERMINAL,
    }


def _image_seeds(row: dict, items: list[pages.OutputItem]) -> list[int]:
    """The seed of each output image of a generation (``seed + i``): each is re-made alone, pixel for pixel,
    by the same input with that seed and one output (``sampling`` draws every output in its own pass)."""
    seed = row["input"].get("seed")
    if seed is None:
        seed = pages.drawn_seed(row)
    images = [i for i in items if i.is_image and i.url]
    if row["kind"] != "prediction" or seed is None or len(images) < 2:
        return []
    return [int(seed) + k for k in range(len(images))]


def _own_files(svc: Service, owner: str, values: dict[str, Any]) -> dict[str, dict]:
    """Inputs that are one of the owner's files at this service, by name: shown as the file, with a signed link."""
    out = {}
    for name, value in values.items():
        ids = svc.urls.own_file_ids(value) if isinstance(value, str) else []
        found = files.get(svc.engine, ids[0], owner) if len(ids) == 1 else None
        if found is not None:
            out[name] = {"name": found["name"], "size": found["size"], "url": svc.urls.file(found)}
    return out


def _main_lora(items: list[pages.OutputItem]) -> pages.OutputItem | None:
    """A training's recommended checkpoint (the same bytes as its ``lora`` output, stored as its own file: one link
    for both buttons), else its ``lora`` output, else its first LoRA file."""
    recommended = next((c.item for c in pages.checkpoint_rows(items) if c.recommended), None)
    return (
        recommended
        or next((i for i in items if i.key == "lora" and i.is_lora), None)
        or next((i for i in items if i.is_lora), None)
    )


def _use_lora_link(svc: Service, row: dict, lora: pages.OutputItem | None) -> str | None:
    """The generation form pre-filled with a finished training's LoRA file (by its API URL, which does not
    expire) and a prompt naming it ``<1>``."""
    if row["kind"] != "training" or row["status"] != "succeeded":
        return None
    generator = _generation_model(svc)
    if lora is None or lora.file_id is None or generator is None:
        return None
    query = {
        "lora_urls": svc.urls.file_api({"id": lora.file_id}),
        "prompt": pages.lora_prompt(row["logs"] or ""),
        **_base_of(lora.metadata),
    }
    return f"/models/{generator.full_name}?{urlencode(query)}"


def _base_of(metadata: dict[str, str]) -> dict[str, str]:
    """``base_model`` for a "Use" link: the base the LoRA was trained on, so an SDXL LoRA opens on an SDXL base
    (empty in a file from elsewhere: the form's default)."""
    base = metadata.get("lora_studio.base_model")
    return {"base_model": base} if base else {}


def _generation_model(svc: Service) -> Model | None:
    return next((m for m in svc.models.values() if m.kind == "prediction"), None)
