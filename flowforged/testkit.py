"""The test kit a plugin author uses (docs/plugins.md): the contract every registered provider and
sink must pass, as plain functions that answer the problems found (an empty list: it passes), so that
any test runner can call them. The fake-server base is in flowforged/fakeapi.py.

    from flowforged.testkit import provider_problems
    def test_contract():
        assert provider_problems(AcmeProvider) == []

The core's own test runs them over every installed entry point (tests/test_contract.py).
"""

from __future__ import annotations

import json

from multidict import CIMultiDict

from flowforged.config import SinkConfig, SourceConfig
from flowforged.errors import WebhookRejected
from flowforged.model import JobEvent, RunEvent, Status, check_fields
from flowforged.plugin import Example, Provider, Sink

NOW = 1_767_607_500.0  # the moment the example is signed and checked at (2026-01-05T10:05:00Z)


def overrides(cls: type, method: str, base: type = Provider) -> bool:
    """Whether a provider class has its own `method` rather than the default of `base`."""
    return getattr(cls, method) is not getattr(base, method)


def contract_problems(cls: type[Provider]) -> list[str]:
    """What a provider class declares but does not do, or does but does not declare: its capabilities
    against the methods it overrides, and polling against its RemoteAPI."""
    caps = cls.capabilities
    found = []
    for flag, method in (("trigger", "trigger"), ("rerun", "rerun"), ("rerun_failed", "rerun"), ("cancel", "cancel")):
        if getattr(caps, flag) and not overrides(cls, method):
            found.append(f"capabilities.{flag} is declared but {cls.__name__} does not override {method}()")
    for method, flags in (("trigger", ("trigger",)), ("rerun", ("rerun", "rerun_failed")), ("cancel", ("cancel",))):
        if overrides(cls, method) and not any(getattr(caps, f) for f in flags):
            found.append(f"{cls.__name__} overrides {method}() but declares none of capabilities.{'/'.join(flags)}")
    for option, needs in (("inputs", "trigger"), ("variables", "trigger"), ("force_cancel", "cancel")):
        if getattr(caps, option) and not getattr(caps, needs):
            found.append(f"capabilities.{option} needs capabilities.{needs}")
    polls = overrides(cls, "poll_target") or overrides(cls, "poll")
    operates = any(overrides(cls, m) for m in ("trigger", "rerun", "cancel"))
    if (polls or operates) and cls.remote is None and not overrides(cls, "make_client"):
        found.append(f"{cls.__name__} polls or operates but declares no remote (a RemoteAPI)")
    if cls.remote is not None and not callable(getattr(cls.remote.pagination, "following", None)):
        found.append("remote.pagination is not a pagination style (flowforged/pagination.py)")
    return found


def provider_problems(cls: type[Provider], name: str | None = None) -> list[str]:
    """Everything the contract finds wrong with a provider class registered as `name`: its
    declarations (contract_problems) and what it does with its own Example (example_problems)."""
    found = contract_problems(cls)
    if name is not None and getattr(cls, "type", None) != name:
        found.append(f"{cls.__name__}.type is {getattr(cls, 'type', None)!r}, registered as {name!r}")
    if not issubclass(cls.config_model, SourceConfig):
        found.append(f"{cls.__name__}.config_model is not a SourceConfig")
    try:
        example = cls.example()
    except NotImplementedError as exc:
        return [*found, str(exc)]
    return found + example_problems(cls, example)


def example_problems(cls: type[Provider], example: Example) -> list[str]:
    """The pure half against the example: its config validates with no problem, verify() accepts the
    request its signing helper signs and refuses one signed with another secret or not at all, the
    body decodes to the payload, event_name() names it (and says its name or "unknown" without the
    payload), normalize() makes valid events of it, and no stored header carries the secret."""
    try:
        config = cls.config_model.model_validate(dict(example.config))
    except ValueError as exc:
        return [f"the example config does not validate: {exc}"]
    found = [f"the example config: {key}: {message}" for key, message in config.problems()]
    provider = cls("example", config)
    body = json.dumps(example.payload).encode()
    headers = CIMultiDict(example.sign(example.config, body, NOW))
    try:
        provider.verify(headers, body, NOW)
    except WebhookRejected as exc:
        found.append(f"verify() rejects the request its own signing helper signed: {exc}")
    found += _refusals(cls, example, provider, body, headers)
    if provider.decode(headers, body) != example.payload:
        found.append("decode() of the example body is not the example payload")
    if provider.event_name(headers, example.payload) != example.event:
        found.append(f"event_name() of the example is not {example.event!r}")
    try:  # at acceptance, before anything decodes the body (docs/plugins.md)
        first = provider.event_name(headers, None)
    except Exception as exc:
        found.append(f"event_name() without the payload raises {type(exc).__name__}: {exc}")
    else:
        if first not in (example.event, "unknown"):
            found.append(f"event_name() without the payload is {first!r}, neither {example.event!r} nor 'unknown'")
    found += _normalized(provider, example)
    return found


def _refusals(
    cls: type[Provider], example: Example, provider: Provider, body: bytes, headers: CIMultiDict[str]
) -> list[str]:
    found = []
    secret = str(example.config.get("webhook_secret") or "")
    if not secret:
        return ["the example config has no webhook_secret: verify() cannot be checked"]
    wrong = example.sign({**example.config, "webhook_secret": "wrong-" + secret}, body, NOW)
    for label, sent in (("signed with another secret", wrong), ("with no credentials", {})):
        try:
            provider.verify(CIMultiDict(sent), body, NOW)
        except WebhookRejected:
            continue
        found.append(f"verify() accepts a request {label}")
    stored = {h.lower() for h in cls.stored_headers}
    for header, value in headers.items():
        if secret in value and header.lower() in stored:
            found.append(f"stored_headers keeps {header}, which carries the secret")
    return found


def _normalized(provider: Provider, example: Example) -> list[str]:
    try:
        events = provider.normalize(example.event, example.payload)
    except Exception as exc:  # the contract reports it, whatever it is
        return [f"normalize() of the example raises {type(exc).__name__}: {exc}"]
    if not any(isinstance(e, RunEvent) for e in events):
        return ["normalize() of the example gives no run event"]
    found = []
    for event in events:
        if not isinstance(event, RunEvent | JobEvent):
            found.append(f"normalize() gives a {type(event).__name__}, not a RunEvent or JobEvent")
            continue
        try:
            check_fields(event)
        except ValueError as exc:
            found.append(f"normalize() gives an event the store cannot hold: {exc}")
        if event.source != provider.name or not isinstance(event.status, Status) or not event.updated_at:
            found.append("an event lacks its source's name, a Status or updated_at")
    return found


def sink_problems(cls: type[Sink], name: str | None = None) -> list[str]:
    """A sink class: registered under its type, sends, declares a non-negative min_interval and a
    SinkConfig model."""
    found = []
    if name is not None and getattr(cls, "type", None) != name:
        found.append(f"{cls.__name__}.type is {getattr(cls, 'type', None)!r}, registered as {name!r}")
    if getattr(cls.send, "__isabstractmethod__", False):
        found.append(f"{cls.__name__} does not implement send()")
    if not isinstance(cls.min_interval, int | float) or cls.min_interval < 0:
        found.append(f"{cls.__name__}.min_interval is not a number of seconds")
    if not issubclass(cls.config_model, SinkConfig):
        found.append(f"{cls.__name__}.config_model is not a SinkConfig")
    return found
