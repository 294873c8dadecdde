"""SIGHUP: the configuration file read again and swapped into the running daemon.

Sources (webhook verification, polling jobs and clients), sinks, rules, notifications, `api.token`
and `logging.level` take effect at once. The listener stays bound throughout and a delivery in
flight finishes with the source it started with: nothing is swapped while a request waits, because
the swap itself never awaits. `server.*`, `storage.*` and `metrics.*` are read once at start: a change
there is logged as needing a restart, and the running values stay. A file that does not validate
changes nothing: every problem is logged with its key path. How the parts fit: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from flowforged import logs
from flowforged.config import Config
from flowforged.errors import ConfigError
from flowforged.plugin import Provider
from flowforged.systemd import Notifier

log = logs.get("flowforged.reload")

RESTART_SECTIONS = ("server", "storage", "metrics")  # read once at start: listener, database, collectors
LIVE_SECTIONS = ("api", "logging", "sources", "sinks", "rules", "notifications")
CATCH_UP_ROUNDS = 5  # waits for deliveries acknowledged while waiting, before the swap goes ahead anyway


def needs_restart(running: Config, new: Config) -> list[str]:
    """The keys whose new value takes a restart to apply, e.g. `server.listen`."""
    keys = []
    for section in RESTART_SECTIONS:
        before, after = getattr(running, section), getattr(new, section)
        keys += [f"{section}.{key}" for key in type(before).model_fields if getattr(before, key) != getattr(after, key)]
    return keys


def swap_providers(providers: dict[str, Provider], fresh: Mapping[str, Provider]) -> dict[str, list[str]]:
    """Put the new configuration's providers in place, in the dict the webhooks and the poller share.
    A source whose config is unchanged keeps its provider object."""
    added = [name for name in fresh if name not in providers]
    changed = [name for name in fresh if name in providers and providers[name].config != fresh[name].config]
    removed = [name for name in providers if name not in fresh]
    kept = {name: providers[name] for name in fresh if name not in added + changed}
    providers.clear()
    providers.update({name: kept.get(name, provider) for name, provider in fresh.items()})
    return {"added": added, "changed": changed, "removed": removed}


class Reloader:
    """Reloads on request (the SIGHUP handler), one reload at a time, only once the daemon is ready."""

    def __init__(self, app: web.Application, load: Callable[[], Config], notifier: Notifier):
        self.app = app
        self.load = load
        self.notifier = notifier
        self.ready = asyncio.Event()  # set by serve() once the listener is bound
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._closed = False

    def request(self) -> None:
        if self._closed:  # stopping: the parts a reload would touch are being shut down
            log.info("reload ignored: the daemon is stopping")
            return
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def reload(self) -> bool:
        """Load the file and apply it; on any problem keep the running configuration. True if applied."""
        await self.ready.wait()
        async with self._lock:
            # sd_notify(3): RELOADING=1 while the service reloads, READY=1 once it is done.
            self.notifier.notify("RELOADING=1")
            try:
                return await self._reload()
            finally:
                self.notifier.notify("READY=1")

    async def _reload(self) -> bool:
        try:
            new = await asyncio.to_thread(self.load)  # the file, and the keyring: both may block
        except ConfigError as exc:
            for key, message in exc.problems:
                log.error("configuration problem", key=key, problem=message)
            log.error(
                "configuration not reloaded: the running configuration stays",
                problems=len(exc.problems),
                keys=[key for key, _ in exc.problems],
            )
            return False
        except Exception as exc:  # a keyring that fails, a plugin that cannot load: same answer
            log.error("configuration not reloaded: the running configuration stays", error=str(exc))
            return False
        await self.apply(new)
        return True

    async def apply(self, new: Config) -> None:
        from flowforged.app import CONFIG, DISPATCHER, PLANNER, STORE, make_providers, make_sinks
        from flowforged.poller import POLLER
        from flowforged.webhooks import INGEST

        running = self.app[CONFIG]
        restart = needs_restart(running, new)
        fresh_providers, fresh_sinks = make_providers(new), make_sinks(new)
        # What was acknowledged under the running configuration is applied under it, by its parsers and
        # its rules (docs/architecture.md, "Accept, then apply"): a rule added now tells of nothing older.
        store = self.app[STORE]
        for _ in range(CATCH_UP_ROUNDS):
            if store.applied_all:
                break
            await store.caught_up()
        # Sources, rules and sections swap without an await between them: no request sees half of
        # one config and half of the other. The rules go before the sinks: a removed sink gets no new
        # message, and one a new rule names is written to the outbox and waits for its worker.
        sources = swap_providers(self.app[INGEST].providers, fresh_providers)  # type: ignore[arg-type]
        self.app[PLANNER].rules = new.rules
        dispatcher = self.app[DISPATCHER]
        dispatcher.max_age = new.notifications.max_age
        dispatcher.backoff_base = new.notifications.backoff_base
        dispatcher.backoff_cap = new.notifications.backoff_cap
        for section in LIVE_SECTIONS:  # the one Config object everyone holds (the API reads api.token)
            setattr(running, section, getattr(new, section))
        running.source_configs, running.sink_configs, running.warnings = (
            new.source_configs,
            new.sink_configs,
            new.warnings,
        )
        logging.getLogger().setLevel(new.logging.level.upper())
        sinks = await dispatcher.reload(fresh_sinks)
        self.app[POLLER].reload(sources["added"] + sources["changed"], sources["removed"])
        for warning in new.warnings:
            log.warning(warning)
        log.info("configuration reloaded", **_summary(sources, sinks, len(new.rules)))
        if restart:
            log.warning("configuration change needs a restart; the running values stay", keys=restart)


def _summary(sources: dict[str, list[str]], sinks: dict[str, list[str]], rules: int) -> dict[str, Any]:
    out: dict[str, Any] = {f"sources_{what}": names for what, names in sources.items() if names}
    out |= {f"sinks_{what}": names for what, names in sinks.items() if names}
    return out | {"rules": rules}
