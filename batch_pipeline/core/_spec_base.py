"""What every section of the pipeline spec shares: the error it raises, the section base
class, and the rules for naming an environment variable instead of writing its value."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict

STORAGE_OPTIONS_HELP = (
    "Non-secret settings of the object store (endpoint_url, region, ...); credentials come "
    "from the provider's environment and credential chain, never from the spec."
)


class SpecError(ValueError):
    """A pipeline spec that cannot be used; the message names the key and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str | None) -> str | None:
    if value is not None and not ENV_NAME.fullmatch(value):
        raise ValueError("must be the name of an environment variable, not its value")
    return value


def _url_from_env(name: str, key: str) -> str:
    """The value of environment variable `name`, which `key` of the spec names."""
    value = os.environ.get(name)
    if not value:
        raise SpecError(f"{key}: the environment variable {name} is not set")
    return value
