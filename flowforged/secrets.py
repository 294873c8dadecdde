"""Secrets: `{secret: NAME}` from systemd credentials, the system keyring, or FLOWFORGED_SECRET_<NAME>.

A resolved secret is a `Secret`, whose repr and str never show the value, and whose value is handed to
the log redactor so that it cannot appear in a log line or a traceback either.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import keyring
import keyring.backend
import keyring.backends.fail
import keyring.errors

from flowforged import logs
from flowforged.errors import SecretNotFound

KEYRING_SERVICE = "flowforged"
BACKEND_VARIABLE = "FLOWFORGED_KEYRING_BACKEND"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Secret:
    """A secret value with the place it came from. `str()` and `repr()` show only where it came from."""

    __slots__ = ("_value", "origin", "name")

    def __init__(self, value: str, origin: str, name: str | None = None):
        self._value = value
        self.origin = origin  # credential | keyring | environment | env | inline
        self.name = name
        logs.redact(value)

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.origin}:{self.name or '-'})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _load_backend(path: str) -> keyring.backend.KeyringBackend:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SecretNotFound(f"{BACKEND_VARIABLE}={path}: cannot load that keyring backend ({exc})") from None
    return cls()


def system_keyring(environ: Mapping[str, str] = os.environ) -> keyring.backend.KeyringBackend | None:
    """The keyring backend, chosen explicitly: never keyring's silent default.

    keyring picks the highest-priority backend it can import, and with keyrings.alt installed that is a
    plaintext file. So FlowForge uses the backend named in $FLOWFORGED_KEYRING_BACKEND, else the
    Secret Service (GNOME Keyring, KeePassXC) when one answers, else none.
    """
    named = environ.get(BACKEND_VARIABLE)
    if named:
        backend = _load_backend(named)
        if isinstance(backend, keyring.backends.fail.Keyring):
            return None
    else:
        try:
            from keyring.backends import SecretService

            backend = SecretService.Keyring()
            backend.priority  # noqa: B018 - raises when no Secret Service is reachable
        except Exception:
            return None
    keyring.set_keyring(backend)
    return backend


@dataclasses.dataclass
class SecretContext:
    """Where secrets are looked up; a test builds its own instead of touching the process's."""

    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    keyring: keyring.backend.KeyringBackend | None = None
    use_keyring: bool = True
    # Commands that read only the database (runs, reindex) need no secret's value: a missing one is
    # then an empty placeholder instead of an error.
    lenient: bool = False

    def __post_init__(self) -> None:
        if self.keyring is None and self.use_keyring:
            self.keyring = system_keyring(self.environ)

    @property
    def credentials_dir(self) -> Path | None:
        value = self.environ.get("CREDENTIALS_DIRECTORY")
        return Path(value) if value else None

    def lookup(self, name: str) -> Secret:
        """systemd credential, then keyring, then FLOWFORGED_SECRET_<NAME>; the first one found."""
        if not _NAME.match(name):
            raise SecretNotFound(f"secret name {name!r} is not valid (letters, digits, '-', '_', '.')")
        if self.credentials_dir is not None:
            path = self.credentials_dir / name
            if path.is_file():
                return Secret(path.read_text().rstrip("\r\n"), "credential", name)
        if self.keyring is not None:
            try:
                value = self.keyring.get_password(KEYRING_SERVICE, name)
            except keyring.errors.KeyringError:
                value = None
            if value is not None:
                return Secret(value, "keyring", name)
        variable = env_variable(name)
        if variable in self.environ:
            return Secret(self.environ[variable], "environment", name)
        if self.lenient:
            return Secret("", "missing", name)
        places = [
            "$CREDENTIALS_DIRECTORY" if self.credentials_dir else None,
            f"keyring service {KEYRING_SERVICE!r}" if self.keyring else None,
            f"${variable}",
        ]
        raise SecretNotFound(f"secret {name!r} not found (looked in {', '.join(p for p in places if p)})")

    def env(self, variable: str) -> Secret:
        if variable not in self.environ and self.lenient:
            return Secret("", "missing", variable)
        if variable not in self.environ:
            raise SecretNotFound(f"environment variable {variable} is not set")
        return Secret(self.environ[variable], "env", variable)


def env_variable(name: str) -> str:
    return "FLOWFORGED_SECRET_" + name.upper().replace("-", "_").replace(".", "_")


def set_secret(name: str, value: str, backend: keyring.backend.KeyringBackend | None) -> None:
    if backend is None:
        raise SecretNotFound(
            "no system keyring is available (no Secret Service answered and "
            f"${BACKEND_VARIABLE} is not set); use systemd LoadCredential= or ${env_variable(name)}"
        )
    if not _NAME.match(name):
        raise SecretNotFound(f"secret name {name!r} is not valid (letters, digits, '-', '_', '.')")
    try:
        backend.set_password(KEYRING_SERVICE, name, value)
    except keyring.errors.KeyringError as exc:
        raise SecretNotFound(f"the keyring refused to store {name!r}: {type(exc).__name__}") from None


def delete_secret(name: str, backend: keyring.backend.KeyringBackend | None) -> bool:
    if backend is None:
        raise SecretNotFound(f"no system keyring is available (set ${BACKEND_VARIABLE})")
    try:
        backend.delete_password(KEYRING_SERVICE, name)
    except keyring.errors.PasswordDeleteError:
        return False
    return True
