"""Trigger, re-run and cancel, as the control API asks for them (flowforged.api.base.Operations).

Each operation goes through the provider plugin with the poller's client for its source, so that it
spends the same rate-limit budget as polling, with the same ETags, backoff and figures. A re-run is
then followed by the poller until its new attempt has finished. An option the provider cannot honour
(its Capabilities) is refused with 422 before anything is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from flowforged import logs
from flowforged.errors import ProviderError
from flowforged.http import ProviderClient
from flowforged.plugin import Provider
from flowforged.poller import Poller

log = logs.get("flowforged.operations")
T = TypeVar("T")


class ProviderOperations:
    def __init__(self, poller: Poller):
        self.poller = poller

    async def trigger(
        self,
        source: str,
        pipeline: str,
        ref: str,
        inputs: Mapping[str, Any],
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        provider, client = self._for(source, "trigger", inputs=inputs, variables=variables)
        return await self._run(
            source, "trigger", lambda: provider.trigger(client, pipeline, ref, dict(inputs), dict(variables or {}))
        )

    async def rerun(self, run: Mapping[str, Any], failed_only: bool | None = None) -> dict[str, Any] | None:
        """failed_only None: the provider's own re-run (every job where it can, else the failed ones)."""
        provider, client = self._for(run["source"], "rerun", failed_only=failed_only)
        answer = await self._run(run["source"], "re-run", lambda: provider.rerun(client, run, failed_only))
        self.poller.follow(run["source"], run)
        return answer

    async def cancel(self, run: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
        provider, client = self._for(run["source"], "cancel", force=force)
        return await self._run(run["source"], "cancel", lambda: provider.cancel(client, run, force))

    def sources_status(self) -> dict[str, dict[str, Any]]:
        return self.poller.status()

    def _for(self, source: str, action: str, **options: Any) -> tuple[Provider, ProviderClient]:
        provider = self.poller.providers.get(source)
        if provider is None:
            raise ProviderError(f"no source named {source!r} is configured", status=404, code="not_found")
        refusal = provider.capabilities.refusal(provider.type, action, options)
        if refusal is not None:
            option, reason = refusal
            raise ProviderError(f"{option}: {reason} (source {source})", status=422, code="not_supported")
        client = self.poller.clients.get(source)
        if client is None:
            raise ProviderError(
                f"{source}: no API token is configured (sources.{source}.token), so runs cannot be "
                "triggered, re-run or cancelled",
                status=409,
                code="no_api_token",
            )
        return provider, client

    async def _run(self, source: str, action: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            answer = await call()
        except NotImplementedError as exc:
            raise ProviderError(f"{source}: {exc}", status=501, code="not_supported") from None
        finally:
            self.poller.report(source)
        log.info("provider operation", source=source, action=action)
        return answer
