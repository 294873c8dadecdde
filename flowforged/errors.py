"""The errors that mean something to FlowForge, caught where something can be done about them."""

from __future__ import annotations


class FlowForgeError(Exception):
    """Base class. Messages never contain a secret's value."""


class ConfigError(FlowForgeError):
    """The configuration is invalid; `problems` lists each one with its key path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))


class SecretNotFound(FlowForgeError):
    pass


class WebhookRejected(FlowForgeError):
    """The request is not authentic (401). The reason is logged, never sent back in detail."""


class NotJSON(FlowForgeError):
    """An authentic body that is not JSON at all (400)."""


class StoreUnavailable(FlowForgeError):
    """The store could not commit (disk full, read-only, locked): webhooks answer 503."""


class ProviderError(FlowForgeError):
    """A provider API answered with an error for an operation; the control API answers with its status."""

    def __init__(self, message: str, status: int = 502, code: str = "provider_error"):
        self.status = status
        self.code = code
        super().__init__(message)


class RateLimited(FlowForgeError):
    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)


class SinkError(FlowForgeError):
    """A transient sink failure: retried with backoff, or after `retry_after` seconds if given."""

    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class PermanentSinkError(FlowForgeError):
    """The sink will never accept this notification as it is: the row goes to `dead`."""
