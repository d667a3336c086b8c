"""JSON request bodies, read only after the caller is known (bounded by ``app.BodyGuard``), parsed off the event
loop, checked for depth and valid Unicode, then validated by a pydantic model.

Why by hand rather than FastAPI's body parameters: FastAPI reads and parses a body before it runs any dependency,
so a 60 MB body cost seconds of the event loop before its 401; a body nested thousands deep raised RecursionError
(a 500 with a long traceback); and a lone surrogate (``"\\ud800"``) was stored, after which every listing of that
owner's predictions failed to encode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

MAX_DEPTH = 32
M = TypeVar("M", bound=BaseModel)


class BadBody(ValueError):
    """A body that is not an acceptable JSON document; the message says why, for a person."""


def parse(raw: bytes) -> Any:
    """The JSON value of ``raw``, at most ``MAX_DEPTH`` deep, every string valid Unicode."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8-sig"))  # (json.loads(bytes) would guess UTF-16 or 32 too)
    except RecursionError:
        raise BadBody(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except UnicodeDecodeError:
        raise BadBody("the request body is not UTF-8") from None
    except ValueError as e:
        raise BadBody(f"the request body is not valid JSON ({e})") from None
    check(value)
    return value


def check(value: Any) -> None:
    """Depth and Unicode of a parsed value, without recursion (so no depth can overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise BadBody(f"the request body is nested too deeply (at most {MAX_DEPTH} levels)")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    _unicode(key)
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            _unicode(item)


def _unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadBody(
            "the request body has a lone surrogate (\\ud800-\\udfff without its pair): it is not valid Unicode text"
        ) from None


def json_body(model: type[M]) -> Callable[[Request], Any]:
    """A FastAPI dependency giving the body as ``model``; declare it after the one that authenticates. Its size is
    bounded before it is read, by the app's ``BodyGuard`` (413 declared or streamed), the one place that does so."""

    async def read(request: Request) -> M:
        from lora_core.service.core import ApiError
        from lora_core.service.models import InvalidField

        try:
            value = await run_in_threadpool(parse, await request.body())
        except BadBody as e:
            raise ApiError(
                422, "Invalid request", f"- body: {e}\n", [InvalidField("body", "json_invalid", str(e))]
            ) from None
        try:
            return model.model_validate(value)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None

    return read
