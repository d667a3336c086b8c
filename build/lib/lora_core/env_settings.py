"""Reading a pydantic-settings model from the environment with errors an operator can act on."""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

# Every model of ``LORA_STUDIO_*`` variables: an empty variable counts as not set, other variables are ignored.
PREFIXED = SettingsConfigDict(env_prefix="LORA_STUDIO_", env_ignore_empty=True, extra="ignore", frozen=True)


def _comma_set(value: object) -> object:
    return frozenset(h.strip() for h in value.split(",") if h.strip()) if isinstance(value, str) else value


# "a,b:8000": a set of names, as operators write host lists (not JSON, which pydantic-settings expects by default).
CommaSet = Annotated[frozenset[str], NoDecode, BeforeValidator(_comma_set)]


class EnvSettingsError(ValueError):
    """An environment variable has a value its setting cannot take; the message names the variable."""


def read_env(settings: type[S]) -> S:
    """``settings()``, failing with ``LORA_STUDIO_X: <why> (got '...')`` rather than pydantic's field names."""
    try:
        return settings()
    except ValidationError as e:
        prefix = settings.model_config.get("env_prefix", "")

        def variable(field: str) -> str:
            alias = settings.model_fields[field].validation_alias if field in settings.model_fields else None
            names = getattr(alias, "choices", [alias]) if alias else [f"{prefix}{field.upper()}"]
            return " or ".join(str(n) for n in names)

        problems = [f"{variable(str(err['loc'][0]))}: {err['msg']} (got {err['input']!r})" for err in e.errors()]
        raise EnvSettingsError("; ".join(problems)) from None
