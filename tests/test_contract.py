"""The plugin contract (flowforged/testkit.py), run over every provider and sink installed under the
entry point groups: the built-in ones, and any other package's, as a user has them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flowforged import plugin
from flowforged.capabilities import Capabilities
from flowforged.errors import WebhookRejected
from flowforged.model import Event
from flowforged.plugin import Example, Headers, Provider, RemoteAPI
from flowforged.testkit import provider_problems, sink_problems
from flowforged_plugins.github import GitHubProvider

PROVIDERS = sorted(plugin.providers().items())
SINKS = sorted(plugin.sinks().items())


@pytest.mark.parametrize(("name", "cls"), PROVIDERS, ids=[name for name, _ in PROVIDERS])
def test_every_registered_provider_passes_the_contract(name: str, cls: type[Provider]) -> None:
    assert provider_problems(cls, name) == []


@pytest.mark.parametrize(("name", "cls"), SINKS, ids=[name for name, _ in SINKS])
def test_every_registered_sink_passes_the_contract(name: str, cls: type[plugin.Sink]) -> None:
    assert sink_problems(cls, name) == []


def test_the_built_in_providers_are_all_checked() -> None:
    assert {"github", "gitlab", "buildkite", "jenkins"} <= {name for name, _ in PROVIDERS}


# --- the contract finds what is wrong ---------------------------------------------------------------


class Careless(GitHubProvider):
    """Says it can cancel and re-run, accepts any request, and polls without a remote half."""

    type = "careless"
    capabilities = Capabilities(trigger=True, rerun=True, cancel=True, force_cancel=True)
    remote: ClassVar[RemoteAPI | None] = None

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        return None

    async def trigger(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None

    async def rerun(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None

    async def cancel(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        return None


class Silent(Careless):
    """Declares nothing it does, and keeps the header its secret travels in."""

    capabilities = Capabilities()
    stored_headers = ("X-Hub-Signature-256", "X-Token")

    @classmethod
    def example(cls) -> Example:
        base = GitHubProvider.example()
        return dataclasses.replace(
            base, sign=lambda config, body, now: {**base.sign(config, body, now), "X-Token": config["webhook_secret"]}
        )

    def verify(self, headers: Headers, body: bytes, now: float) -> None:
        raise WebhookRejected("nothing is ever authentic")

    def normalize(self, event: str, payload: Any) -> list[Event]:
        return []


def test_the_contract_names_what_a_provider_does_not_do() -> None:
    problems = provider_problems(Careless, "careless")
    assert "Careless polls or operates but declares no remote (a RemoteAPI)" in problems
    assert "verify() accepts a request signed with another secret" in problems
    assert "verify() accepts a request with no credentials" in problems
    assert not any("capabilities." in p for p in problems)  # what it declares, it overrides


def test_the_contract_names_undeclared_operations_and_leaked_secrets() -> None:
    problems = provider_problems(Silent, "silent")
    assert "Silent.type is 'careless', registered as 'silent'" in problems
    assert "Silent overrides cancel() but declares none of capabilities.cancel" in problems
    assert "verify() rejects the request its own signing helper signed: nothing is ever authentic" in problems
    assert "stored_headers keeps X-Token, which carries the secret" in problems
    assert "normalize() of the example gives no run event" in problems


def test_a_provider_without_an_example_fails_the_contract() -> None:
    class Bare(Provider):
        type = "bare"

        def verify(self, headers: Headers, body: bytes, now: float) -> None: ...

        def delivery_id(self, headers: Headers) -> str | None:
            return None

        def event_name(self, headers: Headers, payload: Mapping[str, Any]) -> str:
            return "x"

        def normalize(self, event: str, payload: Any) -> list[Event]:
            return []

    assert provider_problems(Bare, "bare") == ["Bare gives no Example for the contract test"]


def test_a_capability_without_its_action_is_named() -> None:
    class Forceful(Careless):
        capabilities = Capabilities(trigger=True, rerun=True, force_cancel=True)

    problems = provider_problems(Forceful)
    assert "capabilities.force_cancel needs capabilities.cancel" in problems
    assert "Forceful overrides cancel() but declares none of capabilities.cancel" in problems


def test_a_sink_without_send_fails_the_contract() -> None:
    class Mute(plugin.Sink):
        type = "mute"
        min_interval = -1.0

    assert sink_problems(Mute, "mute") == [
        "Mute does not implement send()",
        "Mute.min_interval is not a number of seconds",
    ]


def test_the_core_names_no_provider_added_as_a_plugin_only():
    """Bitbucket, Tekton and Argo CD were added as plugins with no edit to the core: flowforged/ must not
    know them by name (the built-in four predate the plugin contract and are named in docstrings)."""
    core = Path(__file__).resolve().parents[1] / "flowforged"
    named = [
        f"{path.relative_to(core.parent)}:{number}"
        for path in core.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"bitbucket|tekton|argo", line, re.IGNORECASE)
    ]
    assert named == []
