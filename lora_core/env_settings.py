"""Reading a pydantic-settings model from the environment with errors an operator can act on."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


class EnvSettingsError(ValueError):
    """An environment variable has a value its setting cannot take; the message names the variable."""


def read_env(settings: type[S]) -> S:
    """``settings()``, failing with ``LORA_STUDIO_X: <why> (got '...')`` rather than pydantic's field names."""
    try:
        return settings()
    except ValidationError as e:
        prefix = settings.model_config.get("env_prefix", "")
        problems = [f"{prefix}{str(err['loc'][0]).upper()}: {err['msg']} (got {err['input']!r})" for err in e.errors()]
        raise EnvSettingsError("; ".join(problems)) from None
