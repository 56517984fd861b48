"""Platform credentials by name: a rule entry's `credentials` names a secret, never holds one (contract §3).

Lookup order for a name such as `acme-google`:
1. the environment variable `POSTBACK_SECRET_ACME_GOOGLE` (upper-cased, other characters as `_`);
2. the file `<secrets_dir>/acme-google` (a mounted Kubernetes or Docker secret), trailing newline removed.

A value that is a JSON object (`{"access_token": ...}`, `{"developer_token": ..., "client_id": ...,
"client_secret": ..., "refresh_token": ...}`) becomes a dict; anything else stays a string. Values are
wrapped in `Secret`, whose repr and str never show them; error messages name the secret and where it
was looked for, never a value.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dispatchers.core.secret import Secret

ENV_PREFIX = "POSTBACK_SECRET_"
SECRETS_DIR_ENV = "POSTBACK_SECRETS_DIR"
DEFAULT_SECRETS_DIR = "/run/secrets"
# Values are re-read after this long, so a rotated Kubernetes secret (the kubelet updates mounted files
# in place) is picked up within a minute without touching the disk on every request.
CACHE_SECONDS = 60.0
# A name becomes part of a file path and of an environment variable name: no separators, no "..".
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_UNSAFE = re.compile(r"[^A-Z0-9_]")


class SecretError(LookupError):
    """A secret that is missing or malformed; the message names it and never contains its value."""


def env_var_name(name: str) -> str:
    return ENV_PREFIX + _ENV_UNSAFE.sub("_", name.upper())


class SecretStore:
    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        secrets_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._env = os.environ if env is None else env
        if secrets_dir is None:
            secrets_dir = self._env.get(SECRETS_DIR_ENV) or DEFAULT_SECRETS_DIR
        self.secrets_dir = Path(secrets_dir)
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Secret[str | dict[str, Any]]]] = {}

    def get(self, name: str) -> Secret[str | dict[str, Any]]:
        """The secret `name`: a dict for a JSON object value, else the string."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise SecretError(
                f"secret name {name!r} is invalid: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        now = self._clock()
        cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        secret = Secret(self._parse(name, self._read(name)))
        self._cache[name] = (now, secret)
        return secret

    def get_text(self, name: str) -> Secret[str]:
        value = self.get(name).reveal()
        if not isinstance(value, str):
            raise SecretError(f"secret {name!r} is a JSON object; a plain string was expected")
        return Secret(value)

    def get_object(self, name: str, required_keys: tuple[str, ...] = ()) -> Secret[dict[str, Any]]:
        """A JSON-object secret that has every key in `required_keys` (missing keys are named)."""
        value = self.get(name).reveal()
        if not isinstance(value, dict):
            raise SecretError(f"secret {name!r} is not a JSON object; expected keys: {', '.join(required_keys)}")
        missing = [key for key in required_keys if not value.get(key)]
        if missing:
            raise SecretError(f"secret {name!r} lacks {', '.join(missing)}")
        return Secret(value)

    def _read(self, name: str) -> str:
        variable = env_var_name(name)
        value = self._env.get(variable)
        if value:
            return value
        path = self.secrets_dir / name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretError(f"secret {name!r} not found: set {variable} or create the file {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"secret {name!r} cannot be read from {path}: {type(exc).__name__}") from None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise SecretError(f"secret {name!r} in {path} is empty")
        return text

    @staticmethod
    def _parse(name: str, value: str) -> str | dict[str, Any]:
        if not value.lstrip().startswith("{"):
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            # The JSON error message quotes the text around the fault: it would leak part of the value.
            raise SecretError(f"secret {name!r} looks like a JSON object but does not parse") from None
        if not isinstance(parsed, dict):
            raise SecretError(f"secret {name!r} looks like a JSON object but does not parse")
        return parsed
