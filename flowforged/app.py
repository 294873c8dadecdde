"""Wiring: the parts of the event path (docs/architecture.md) put together into one aiohttp application,
and the daemon's life.

`serve()` binds the listener with an AppRunner, then tells systemd READY=1; SIGTERM drains: stop
accepting, finish in-flight requests and the current commit, stop the scheduler, exit 0. SIGHUP
reloads the configuration in place (flowforged.reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from flowforged import __version__, api, guard, logs, slack_actions, ui, webhooks
from flowforged.bus import Bus
from flowforged.config import Config
from flowforged.dispatch import Dispatcher
from flowforged.errors import StoreUnavailable
from flowforged.ingest import Ingest
from flowforged.metrics import Metrics
from flowforged.notify import Planner
from flowforged.operations import ProviderOperations
from flowforged.plugin import Provider, Sink, providers, sinks
from flowforged.poller import POLLER, Poller
from flowforged.reload import Reloader
from flowforged.store import DatabaseInUse, Store, outbox, queries, totals
from flowforged.store.ingest import IngestResult
from flowforged.systemd import Notifier

log = logs.get("flowforged")
CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
BUS = web.AppKey("bus", Bus)
HTTP = web.AppKey("http", aiohttp.ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
METRICS = web.AppKey("metrics", Metrics)
REBUILD = web.AppKey("rebuild", totals.Rebuild)
REBUILT = web.AppKey("rebuilt", asyncio.Event)  # the metrics hold the store's run totals
READY = web.AppKey("ready", asyncio.Event)  # serve() told systemd READY=1 (absent: not run by serve())
REBUILD_RETRY = 1.0
SCRAPE_CATCH_UP = 2.0  # seconds a scrape waits for the deliveries acknowledged before it to be applied
OUTBOX_METRICS_INTERVAL = 5.0
RETENTION_INTERVAL = 3600.0
RETENTION_DELAY = 60.0  # the first prune waits for the start to be over: it is never on the way to READY
READINESS = web.AppKey("readiness", list)  # callables returning a problem (str) or None
PLANNER = web.AppKey("planner", Planner)  # its rules are swapped on reload


def make_providers(config: Config) -> dict[str, Provider]:
    kinds = providers()
    return {name: kinds[source.type](name, source) for name, source in config.source_configs.items()}


def make_sinks(config: Config) -> dict[str, Sink]:
    kinds = sinks()
    return {name: kinds[sink.type](name, sink) for name, sink in config.sink_configs.items()}


def build(
    config: Config, *, operations: api.Operations | None = None, sse_keepalive: float = api.stream.KEEPALIVE
) -> web.Application:
    """The daemon's application. `operations` replaces the provider operations (tests of the API)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[guard.send_timeout(config.server.send_timeout), guard.refuse_compressed],
    )
    planner = Planner(config.rules)
    store = Store(
        config.storage.path,
        synchronous=config.storage.synchronous.upper(),
        busy_timeout=config.storage.busy_timeout,
        on_transition=planner.plan,
        apply_lag=config.storage.apply_lag,
    )
    bus = Bus()
    ingest = Ingest(store, make_providers(config), bus)
    app[CONFIG] = config
    app[STORE] = store
    app[BUS] = bus
    app[READINESS] = []
    app[PLANNER] = planner
    webhooks.setup(
        app,
        ingest,
        config.server.max_body_bytes,
        config.server.body_timeout,
        config.server.max_unauthenticated_bytes,
    )
    metrics = Metrics(
        CollectorRegistry(),
        branches=config.metrics.branches,
        stale_after=config.metrics.stale_after,
        version=__version__,
        detail=config.metrics.detail,
    )
    app[METRICS] = metrics
    app[webhooks.OBSERVERS].append(metrics.webhook)
    app[REBUILD] = rebuild = totals.Rebuild()
    app[REBUILT] = asyncio.Event()
    ingest.listeners.append(lambda result, source, origin: _count_ingest(metrics, rebuild, result, source, origin))
    app.router.add_get("/metrics", _metrics)
    poller = Poller(store, ingest, ingest.providers, None)  # the HTTP session is given at start
    poller.on_request.append(metrics.poll_request)
    poller.on_budget.append(metrics.rate_limit_remaining)
    app[POLLER] = poller
    app[READINESS].append(poller.problem)
    api.setup(app, operations or ProviderOperations(poller), keepalive=sse_keepalive)
    ui.setup(app)  # the web board, after the API: it reuses the API's context
    slack_actions.setup(app)  # clicks on a Slack app's buttons: the API's operations too
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_dispatcher_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    app.cleanup_ctx.append(_poller_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _count_ingest(metrics: Metrics, rebuild: totals.Rebuild, result: IngestResult, source: str, origin: str) -> None:
    if result.events:
        metrics.events_stored(source, origin, len(result.events))
    if result.finished and not rebuild.counted(result.events):
        for run in result.finished:
            metrics.run_finished(run)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await asyncio.to_thread(store.open)  # migrations run here, before the listener is bound
    app[webhooks.INGEST].start()  # deliveries left unapplied by the last run are applied first
    # The per-pipeline series come back from the store's run totals after READY=1 (half a second at
    # 10,000 pipelines that the start need not wait for): totals.Rebuild says which commits they count.
    rebuilt = asyncio.create_task(_rebuild(app))
    yield
    rebuilt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rebuilt
    await asyncio.to_thread(store.close)  # after in-flight requests: their commits finish first


async def _rebuild(app: web.Application) -> None:
    if (ready := app.get(READY)) is not None:
        await ready.wait()
    while True:
        try:
            replayed = await app[STORE].write(app[REBUILD], app[METRICS])
        except StoreUnavailable as exc:  # /readyz says so; /metrics waits for the store to come back
            log.error("metrics not rebuilt from the store yet", error=str(exc))
            await asyncio.sleep(REBUILD_RETRY)
            continue
        break
    log.info("metrics rebuilt from the store", runs=replayed)
    app[REBUILT].set()
    # The first scrape would render every pipeline's series (a second at 10,000 pipelines): rendered in
    # the background now, after that only the pipelines whose runs finish are (metrics.exposition()).
    await asyncio.get_running_loop().run_in_executor(None, app[METRICS].exposition, True)


async def _metrics(request: web.Request) -> web.StreamResponse:
    """GET /metrics, once the run totals are in: a scrape before would see counters go down."""
    await request.app[REBUILT].wait()
    store = request.app[STORE]
    await store.caught_up(SCRAPE_CATCH_UP)  # what was acknowledged before is counted, unless in a long burst
    request.app[METRICS].unapplied(store.unapplied)
    return await request.app[METRICS].handler(request)


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    # One client session for the whole daemon, with explicit timeouts (sinks, provider APIs).
    timeout = aiohttp.ClientTimeout(total=30, connect=10, sock_read=20)
    headers = {"User-Agent": f"flowforged/{__version__}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        app[HTTP] = session
        yield


async def _dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].notifications
    dispatcher = Dispatcher(
        app[STORE],
        make_sinks(app[CONFIG]),
        app[HTTP],
        max_age=config.max_age,
        backoff_base=config.backoff_base,
        backoff_cap=config.backoff_cap,
    )
    app[DISPATCHER] = dispatcher
    app[webhooks.INGEST].listeners.append(
        lambda result, source, origin: dispatcher.wake() if result.transitions else None
    )
    metrics = app[METRICS]

    def observe(sink: str, outcome: str, latency: float | None) -> None:
        metrics.notification(sink, outcome)
        if latency is not None:
            metrics.notification_latency(latency)

    dispatcher.observers.append(observe)
    dispatcher.start()
    depth = asyncio.create_task(_watch_outbox(app))
    yield
    depth.cancel()
    await dispatcher.stop()


async def _poller_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[POLLER].start(app[HTTP])  # returns at once: the first cycle (the backfill) runs in the background
    yield
    await app[POLLER].stop()  # before the HTTP session and the store close


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    days = app[CONFIG].storage.raw_retention_days
    task = asyncio.create_task(_prune_raw(app[STORE], days)) if days else None
    yield
    if task is not None:
        task.cancel()


async def _prune_raw(store: Store, days: int) -> None:
    """Every hour, drop raw bodies older than raw_retention_days, a batch per transaction."""
    await asyncio.sleep(RETENTION_DELAY)
    while True:
        before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))
        pruned = 0
        try:
            while (count := await store.write(queries.prune_raw, before)) > 0:
                pruned += count
        except Exception as exc:
            log.warning("raw deliveries not pruned", error=str(exc))
        if pruned:
            log.info("raw deliveries pruned", deliveries=pruned, before=before)
        await asyncio.sleep(RETENTION_INTERVAL)


async def _watch_outbox(app: web.Application) -> None:
    """Outbox depth for /metrics: a small query every few seconds, never on the ingest path."""
    while True:
        try:
            app[METRICS].outbox_depth_by_state(await app[STORE].peek(outbox.depth))
        except Exception as exc:  # a store hiccup must not end the watch
            log.warning("outbox depth not read", error=str(exc))
        await asyncio.sleep(OUTBOX_METRICS_INTERVAL)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    problems = []
    if not await request.app[STORE].writable():
        problems.append(f"store cannot commit: {request.app[STORE].last_error}")
    problems += [p for check in request.app[READINESS] if (p := check()) is not None]
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def serve(
    config: Config,
    notifier: Notifier | None = None,
    on_ready: Callable[[web.AppRunner], Any] | None = None,
    reload: Callable[[], Config] | None = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT; on SIGHUP, `reload()` gives the configuration to swap in."""
    notifier = notifier or Notifier()
    sys.setswitchinterval(0.0005)
    guard.raise_open_files_limit()
    for warning in config.warnings:
        log.warning(warning)
    app = build(config)
    app[READY] = asyncio.Event()
    # Signal handlers first: a SIGTERM that arrives during start-up or right after READY=1 must drain.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloader = Reloader(app, reload or (lambda: config), notifier)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)  # acted on once ready
    loop.set_exception_handler(guard.AcceptErrors())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.server.shutdown_timeout,
        keepalive_timeout=config.server.idle_timeout,
        auto_decompress=False,  # never inflate a body: guard.refuse_compressed refuses it instead
    )
    try:
        await runner.setup()
    except DatabaseInUse as exc:
        raise SystemExit(f"flowforged: {exc}") from None
    site = web.TCPSite(runner, config.server.host, config.server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"cannot listen on {config.server.listen}: {exc.strerror}") from None
    log.info(
        "flowforged ready",
        listen=config.server.listen,
        version=__version__,
        sources=sorted(app[webhooks.INGEST].providers),
        database=str(config.storage.path),
    )
    notifier.notify("READY=1")
    app[READY].set()
    reloader.ready.set()
    if on_ready is not None:
        on_ready(runner)
    watchdog = asyncio.create_task(notifier.watchdog())
    await stop.wait()
    log.info("stopping: draining in-flight requests")
    notifier.notify("STOPPING=1")
    watchdog.cancel()
    await reloader.close()
    await runner.cleanup()
    log.info("stopped")
