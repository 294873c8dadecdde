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
import keyring.errors

from flowforged import logs
from flowforged.errors import SecretNotFound

KEYRING_SERVICE = "flowforged"
BACKEND_VARIABLE = "FLOWFORGED_KEYRING_BACKEND"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Secret:
    """A secret value with the place it came from. `str()` and `repr()` show only where it came from."""

    __slots__ = ("_value", "origin", "name", "variable")

    def __init__(self, value: str, origin: str, name: str | None = None, variable: str | None = None):
        self._value = value
        self.origin = origin  # credential | keyring | environment | env | inline | missing
        self.name = name
        self.variable = variable  # for a missing one: the environment variable that would give it
        logs.redact(value)

    def get(self) -> str:
        return self._value

    @property
    def where(self) -> str:
        """The place it was read from, as the messages about secrets name it."""
        if self.origin == "credential":
            return "$CREDENTIALS_DIRECTORY"
        if self.origin == "keyring":
            return f"keyring service {KEYRING_SERVICE!r}"
        if self.origin == "environment" and self.name:
            return f"${env_variable(self.name)}"
        if self.origin == "env" and self.name:
            return f"${self.name}"
        return self.origin

    def __repr__(self) -> str:
        return f"Secret({self.origin}:{self.name or '-'})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# Backends that keep nothing a daemon could read back: `fail` refuses, `null` accepts and drops.
_NO_STORAGE = ("keyring.backends.fail.Keyring", "keyring.backends.null.Keyring")
_NOT_A_CHOICE = (*_NO_STORAGE, "keyring.backends.chainer.ChainerBackend")


def _class_name(backend: object) -> str:
    return f"{type(backend).__module__}.{type(backend).__name__}"


def _load_backend(path: str) -> keyring.backend.KeyringBackend:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SecretNotFound(f"{BACKEND_VARIABLE}={path}: cannot load that keyring backend ({exc})") from None
    return cls()


def _choose(environ: Mapping[str, str]) -> tuple[keyring.backend.KeyringBackend | None, str]:
    """The backend to use, or None and why there is none."""
    named = environ.get(BACKEND_VARIABLE)
    if named:
        backend = _load_backend(named)
        if _class_name(backend) in _NO_STORAGE:
            return None, f"{BACKEND_VARIABLE}={named} stores nothing"
    else:
        from keyring.backends import SecretService

        backend = SecretService.Keyring()
    try:
        backend.priority  # noqa: B018 - a backend that cannot work here raises (no D-Bus, no daemon)
    except Exception as exc:
        return None, f"{_class_name(backend)} cannot work here ({exc})"
    return backend, ""


def system_keyring(environ: Mapping[str, str] = os.environ) -> keyring.backend.KeyringBackend | None:
    """The keyring backend, chosen explicitly: never keyring's silent default.

    keyring picks the highest-priority backend it can import, and with keyrings.alt installed that is a
    plaintext file. So FlowForge uses the backend named in $FLOWFORGED_KEYRING_BACKEND, else the
    Secret Service (GNOME Keyring, KeePassXC) when one answers, else none.
    """
    backend, _ = _choose(environ)
    if backend is not None:
        keyring.set_keyring(backend)
    return backend


def usable_backends() -> list[str]:
    """The keyring backends installed here that can store a secret now, as class names."""
    from keyring.backend import get_all_keyring

    return sorted(name for name in map(_class_name, get_all_keyring()) if name not in _NOT_A_CHOICE)


def writable_keyring(name: str, environ: Mapping[str, str] = os.environ) -> keyring.backend.KeyringBackend:
    """The keyring that `secret set` and `secret delete` use; without one, an error saying what to do."""
    backend, reason = _choose(environ)
    if backend is None:
        raise SecretNotFound(headless_help(name, reason))
    return backend


def headless_help(name: str, reason: str) -> str:
    """What to do on a server without a Secret Service (no desktop session, no D-Bus)."""
    usable = ", ".join(usable_backends()) or "none is installed here"
    return (
        f"no usable keyring: {reason}.\n"
        f"On a server, keep the secret {name!r} in one of these instead:\n"
        f'  - systemd credentials, for the service (README, "Run it as a service"):\n'
        f"      systemd-creds encrypt --name={name} - /etc/credstore.encrypted/{name}   (value on stdin)\n"
        f"    and LoadCredentialEncrypted={name} in the unit; the daemon reads $CREDENTIALS_DIRECTORY/{name}\n"
        f"  - the environment: ${env_variable(name)}\n"
        f"  - another keyring backend, named in ${BACKEND_VARIABLE}: {usable}; or, after\n"
        f"    `pip install keyrings.alt`, keyrings.alt.file.PlaintextKeyring (a plaintext file, mode 0600,\n"
        f"    in the home of the user who runs flowforged)"
    )


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
            return Secret("", "missing", name, variable)
        places = [
            "$CREDENTIALS_DIRECTORY" if self.credentials_dir else None,
            f"keyring service {KEYRING_SERVICE!r}" if self.keyring else None,
            f"${variable}",
        ]
        raise SecretNotFound(f"secret {name!r} not found (looked in {', '.join(p for p in places if p)})")

    def env(self, variable: str) -> Secret:
        if variable not in self.environ and self.lenient:
            return Secret("", "missing", variable, variable)
        if variable not in self.environ:
            raise SecretNotFound(f"environment variable {variable} is not set")
        return Secret(self.environ[variable], "env", variable)


def env_variable(name: str) -> str:
    return "FLOWFORGED_SECRET_" + name.upper().replace("-", "_").replace(".", "_")


def set_secret(name: str, value: str, backend: keyring.backend.KeyringBackend) -> None:
    """Store `value`, then read it back: a backend that drops it silently must not be reported as storing it."""
    if not _NAME.match(name):
        raise SecretNotFound(f"secret name {name!r} is not valid (letters, digits, '-', '_', '.')")
    try:
        backend.set_password(KEYRING_SERVICE, name, value)
        kept = backend.get_password(KEYRING_SERVICE, name) == value
    except Exception as exc:  # each backend has its own errors (secretstorage's are not KeyringError)
        raise SecretNotFound(
            headless_help(name, f"{_class_name(backend)} refused to store it ({type(exc).__name__})")
        ) from None
    if not kept:
        raise SecretNotFound(headless_help(name, f"{_class_name(backend)} did not keep it (nothing was stored)"))


def delete_secret(name: str, backend: keyring.backend.KeyringBackend) -> bool:
    try:
        backend.delete_password(KEYRING_SERVICE, name)
    except keyring.errors.PasswordDeleteError:
        return False
    return True
