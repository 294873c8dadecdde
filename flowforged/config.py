"""The YAML configuration, validated at start and by `flowforged check-config`.

Every problem is reported with its key path (`sources.github.webhook_secret: missing`). Sources and
sinks are validated by the model their plugin declares, so a plugin's own keys are checked too.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from flowforged.errors import ConfigError, SecretNotFound
from flowforged.secrets import Secret, SecretContext

DEFAULT_PATH = "/etc/flowforged/config.yaml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """`90`, `"90s"`, `"15m"`, `"4h"`, `"7d"`, `"1h30m"` to seconds; anything else is left to fail."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return float(value)
    if isinstance(value, str):
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", value.strip())
        if parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*(ms|s|m|h|d|w))+\s*", value):
            return sum(float(n) * _UNITS[u] for n, u in parts)
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 4h, 7d)")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def _resolve_secret(value: Any, info: ValidationInfo) -> Any:
    context: SecretContext | None = (info.context or {}).get("secrets")
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return _not_empty(Secret(value, "inline"))
    if isinstance(value, dict) and len(value) == 1 and ("secret" in value or "env" in value):
        if context is None:
            raise ValueError("secrets cannot be resolved here")
        try:
            if "secret" in value:
                return _not_empty(context.lookup(str(value["secret"])))
            return _not_empty(context.env(str(value["env"])))
        except SecretNotFound as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected {secret: NAME}, {env: VARIABLE} or a string")


def _not_empty(secret: Secret) -> Secret:
    """An empty (or blank) secret is refused like a missing one: an HMAC keyed with "" or a token
    compared with "" authenticates anyone who knows that, which is everyone."""
    if secret.get().strip() or secret.origin == "missing":  # missing: lenient commands need no value
        return secret
    if secret.origin == "inline":
        raise ValueError("secret is empty (written inline)")
    if secret.origin == "env":
        raise ValueError(f"environment variable {secret.name} is empty")
    raise ValueError(f"secret {secret.name!r} is empty ({secret.where})")


SecretValue = Annotated[Secret, BeforeValidator(_resolve_secret)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=False)

    def problems(self) -> list[tuple[str, str]]:
        """Checks across keys, as (key, message)."""
        return []


class ServerConfig(Section):
    listen: str = "127.0.0.1:8080"
    # GitHub caps payloads at 25 MB, but workflow_run and pipeline events are tens of KB: a lower
    # limit keeps what an unauthenticated sender can make the daemon hold small.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Bytes that requests not yet authenticated may hold at once, all together; past it, 503.
    max_unauthenticated_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # A connection whose answer the client has not read within send_timeout is closed.
    send_timeout: Duration = Field(default=30.0, gt=0)
    shutdown_timeout: Duration = 10.0
    # Slow clients (slowloris): a connection that has not sent a whole request's headers within
    # idle_timeout is closed; a body not received within body_timeout is answered 408.
    idle_timeout: Duration = 15.0
    body_timeout: Duration = 30.0

    @pydantic.field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @pydantic.model_validator(mode="after")
    def _budget(self) -> ServerConfig:
        if self.max_unauthenticated_bytes < self.max_body_bytes:
            raise ValueError("max_unauthenticated_bytes must be at least max_body_bytes, or no body that large is read")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StorageConfig(Section):
    path: Path = Path("./var/flowforge.db")
    raw_retention_days: int = Field(default=30, ge=0)  # 0 keeps raw deliveries forever
    # How long a commit waits for another process that holds the database (a reindex) before the
    # webhooks waiting on it get 503.
    busy_timeout: Duration = 5.0
    synchronous: str = Field(default="normal", pattern="^(normal|full)$")
    # A webhook is acknowledged once stored raw and applied after (docs/architecture.md, "Accept, then
    # apply"): in a burst beyond what the store can apply, acknowledgements stay fast and notifications
    # lag by up to this much; past it, acknowledgements slow down to the pace of applying.
    apply_lag: Duration = Field(default=10.0, gt=0)


class ApiConfig(Section):
    token: SecretValue | None = None


class UiConfig(Section):
    """The web board (flowforged.ui): who may read it and how its session cookie is marked."""

    enabled: bool = True
    public: bool = False  # a read-only board without signing in, for a trusted network
    viewer_token: SecretValue | None = None  # signs in read-only; api.token signs in to operate
    session_lifetime: Duration = Field(default=12 * 3600.0, gt=0)
    # Secure cookies: always (secure_cookie), or when a proxy in trusted_proxies says X-Forwarded-Proto: https.
    secure_cookie: bool = False
    trusted_proxies: list[str] = []


class LoggingConfig(Section):
    level: str = Field(default="info", pattern="^(debug|info|warning|error)$")


class MetricsConfig(Section):
    branches: list[str] = ["main", "master"]
    stale_after: Duration = 7 * 86400
    # Glob patterns of the pipelines whose series have every detail: duration and queue-time histograms,
    # runs by branch, the status of every branch label. 35 series or more each: a few hundred at most.
    detail: list[str] = []


class NotificationsConfig(Section):
    max_age: Duration = 6 * 3600.0  # a notification not sent by then is dead: old news misleads
    backoff_base: Duration = 1.0  # first retry after up to this long, doubling each time
    backoff_cap: Duration = 600.0  # retries never wait longer than this


class SourceConfig(Section):
    """Keys every source has; a provider plugin subclasses this for its own."""

    type: str
    webhook_secret: SecretValue | None = None
    insecure_no_auth: bool = False
    token: SecretValue | None = None
    api_url: str | None = None
    repos: list[str] = []
    poll_interval: Duration = 0.0
    backfill: Duration = 86400.0
    # Pacing of the source's API requests (polling and operations): at most this many points in any
    # minute (None: the provider's default, 90% of its documented limit) and this many a second.
    points_per_minute: int | None = Field(default=None, gt=0)
    max_rps: float | None = Field(default=None, gt=0)
    # A PEM file of the CA certificates the API's certificate is verified with, beside the system's
    # (a Kubernetes API server's CA, a company's own).
    ca_bundle: str | None = None

    @pydantic.field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ssl.create_default_context().load_verify_locations(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"{value}: not a readable PEM file of CA certificates ({exc})") from None
        return value

    # What `repos` names for this provider, for the message when polling has nothing to poll.
    repos_hint: ClassVar[str] = "what to poll"

    def problems(self) -> list[tuple[str, str]]:
        """A source must authenticate its webhooks, and one that polls needs a token and something to poll."""
        found = []
        if self.webhook_secret is None and not self.insecure_no_auth:
            found.append(("webhook_secret", "missing (or set insecure_no_auth: true to accept any request)"))
        return found + self.polling_problems()

    def check_repos(self) -> None:
        """Raise ValueError naming a malformed `repos` entry; a provider that polls says what is valid."""

    def polling_problems(self) -> list[tuple[str, str]]:
        found = []
        try:
            self.check_repos()
        except ValueError as exc:
            found.append(("repos", str(exc)))
        if self.poll_interval > 0 and self.token is None:
            found.append(("token", "missing: polling (poll_interval) needs an API token"))
        if self.poll_interval > 0 and not self.repos:
            found.append(("repos", f"empty: name {self.repos_hint}"))
        return found

    @property
    def authenticated(self) -> bool:
        return self.webhook_secret is not None


class SinkConfig(Section):
    type: str


class RuleActions(Section):
    """Who may act from a chat message of this rule (the Slack app's buttons): Slack user ids (U..., W...)
    and user group ids (S...). Nobody, when empty."""

    allowed_users: list[str] = []

    @pydantic.field_validator("allowed_users")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[UWS][A-Z0-9]{2,30}", item):
                raise ValueError(f"{item!r} is not a Slack user id (U..., W...) or user group id (S...)")
        return value


class RuleConfig(Section):
    name: str
    sources: list[str] = ["*"]
    pipelines: list[str] = ["*"]
    branches: list[str] | None = None  # None: each repository's default branch, else main/master
    on: list[str] = ["broken", "fixed"]
    sinks: list[str]
    repeat_interval: Duration = 4 * 3600.0
    group_wait: Duration = 0.0
    min_consecutive_failures: int = Field(default=1, ge=1)
    continue_: bool = Field(default=False, alias="continue")
    # Runs of pull (merge) requests and forks have a state of their own, per pull request: a rule
    # takes their transitions only when it says so (`branches` then matches their head branch).
    pull_requests: bool = False
    actions: RuleActions = RuleActions()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @pydantic.field_validator("on")
    @classmethod
    def _on(cls, value: list[str]) -> list[str]:
        unknown = set(value) - {"broken", "still_failing", "fixed"}
        if unknown:
            raise ValueError(f"unknown transition(s) {sorted(unknown)}; use broken, still_failing, fixed")
        return value


class Config(Section):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    logging: LoggingConfig = LoggingConfig()
    sources: dict[str, dict[str, Any]] = {}
    sinks: dict[str, dict[str, Any]] = {}
    rules: list[RuleConfig] = []
    notifications: NotificationsConfig = NotificationsConfig()
    metrics: MetricsConfig = MetricsConfig()
    ui: UiConfig = UiConfig()

    # Filled by validate(): each source and sink validated by its plugin's model, and the warnings
    # to log at start.
    source_configs: dict[str, SourceConfig] = pydantic.Field(default_factory=dict, exclude=True)
    sink_configs: dict[str, SinkConfig] = pydantic.Field(default_factory=dict, exclude=True)
    warnings: list[str] = pydantic.Field(default_factory=list, exclude=True)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. Under YAML 1.1 a rule's `on:` key would be the boolean True."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _problems(error: pydantic.ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    out = []
    for item in error.errors():
        message = "missing" if item["type"] == "missing" else item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        message = message.removeprefix("Value error, ")
        out.append((_path(prefix + tuple(item["loc"])), message))
    return out


def _validate_plugins(
    section: str, raw: dict[str, dict[str, Any]], kinds: dict[str, type], context: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    validated: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, body in raw.items():
        if not _NAME.match(name):
            problems.append((f"{section}.{name}", "name must be lower case letters, digits, '-' or '_'"))
            continue
        kind = body.get("type") if isinstance(body, dict) else None
        if kind not in kinds:
            known = ", ".join(sorted(kinds))
            problems.append((f"{section}.{name}.type", f"unknown type {kind!r} (known: {known})"))
            continue
        try:
            item = kinds[kind].config_model.model_validate(body, context=context)
        except pydantic.ValidationError as exc:
            problems.extend(_problems(exc, (section, name)))
            continue
        problems.extend((f"{section}.{name}.{key}", msg) for key, msg in item.problems())
        validated[name] = item
    return validated, problems


def _inline_secrets(model: BaseModel, prefix: str) -> list[str]:
    found = []
    for key, value in model:
        if isinstance(value, Secret) and value.origin == "inline":
            found.append(f"{prefix}{key}")
        elif isinstance(value, BaseModel):
            found.extend(_inline_secrets(value, f"{prefix}{key}."))
    return found


def validate(data: Any, secrets: SecretContext | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError with every problem found."""
    from flowforged import plugin  # the plugins import config for their models

    context = {"secrets": secrets if secrets is not None else SecretContext()}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("(top level)", "expected a mapping of sections")])
    problems: list[tuple[str, str]] = []
    try:
        config = Config.model_validate(data, context=context)
    except pydantic.ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    sources, found = _validate_plugins("sources", config.sources, plugin.providers(), context)
    problems += found
    sinks, found = _validate_plugins("sinks", config.sinks, plugin.sinks(), context)
    problems += found
    for index, rule in enumerate(config.rules):
        for sink in rule.sinks:
            if sink not in config.sinks:
                problems.append((f"rules.{index}.sinks", f"no sink named {sink!r} in sinks"))
    if problems:
        raise ConfigError(problems)
    warnings = []
    for section, items in (("", {"": config}), ("sources.", sources), ("sinks.", sinks)):
        for name, item in items.items():
            prefix = f"{section}{name}." if name else ""
            warnings += [
                f"{path}: secret written inline in the config; use {{secret: NAME}} in production"
                for path in _inline_secrets(item, prefix)
            ]
    for name, source in sources.items():
        if source.insecure_no_auth and not source.authenticated:
            warnings.append(f"sources.{name}: insecure_no_auth is set; anyone can post webhooks to it")
    config.source_configs, config.sink_configs, config.warnings = sources, sinks, warnings
    return config


def load(path: str | os.PathLike[str], secrets: SecretContext | None = None) -> Config:
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError([(str(file), f"cannot read the config file: {exc.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([(str(file), f"not valid YAML{where}: {getattr(exc, 'problem', exc)}")]) from None
    config = validate(data, secrets)
    if not config.storage.path.is_absolute():
        # A relative database path is relative to the config file, not to wherever the daemon started.
        config.storage.path = (file.parent / config.storage.path).resolve()
    return config


def default_path(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    environ = environ if environ is not None else dict(os.environ)
    return explicit or environ.get("FLOWFORGED_CONFIG") or DEFAULT_PATH
