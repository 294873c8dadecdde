"""Accept, then apply (docs/architecture.md): a webhook is acknowledged once its raw delivery is
committed, and applied after by the store's writer. What is acknowledged is never lost, a read sees
what was acknowledged before it, and a delivery the daemon could not apply before it died is applied,
and notified, by the next start."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flowforged import app as app_module
from flowforged.bus import Bus
from flowforged.ingest import Ingest, delivery_id, stored_headers
from flowforged.model import utcnow
from flowforged.notify import Planner
from flowforged.store import Delivery, Store, connect, queries, reindex
from tests.conftest import API_TOKEN, applied, base_config, github_headers, github_run, make_config
from tests.daemon import DaemonProcess

RULES = [{"name": "all", "sinks": ["console"]}]


def config(db: Path) -> Any:
    return make_config(base_config(db, rules=RULES))


def failure(n: int) -> tuple[bytes, dict[str, str]]:
    """A run of its own on master, failed when n is even and passed when odd: each one a transition
    that the rule notifies (broken, fixed, broken, ...)."""
    created = f"2026-11-01T10:{n // 60:02d}:{n % 60:02d}Z"
    body = json.dumps(github_run("success" if n % 2 else "failure", run_id=50_000 + n, created_at=created)).encode()
    return body, github_headers(body, delivery=f"apply-{n}")


def delivery(cfg: Any, n: int) -> Delivery:
    """What Ingest.webhook() appends for the n-th failure."""
    body, headers = failure(n)
    github = app_module.make_providers(cfg)["github"]
    return Delivery(
        source="github",
        delivery_id=delivery_id(github, headers, body),
        origin="webhook",
        event="workflow_run",
        received_at=utcnow(),
        headers=stored_headers(github, headers),
        body=body,
    )


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]


class Gate:
    """Ingest.decode() held shut until opened: the writer is stuck applying, as it is in a long burst."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.open = threading.Event()

    def __call__(self, *args: Any) -> Any:
        assert self.open.wait(10)
        return self.ingest.decode(*args)


async def test_a_read_waits_for_the_deliveries_acknowledged_before_it(db_path):
    cfg = config(db_path)
    store = Store(db_path, on_transition=Planner(cfg.rules).plan).open()
    try:
        ingest = Ingest(store, app_module.make_providers(cfg), Bus())
        gate = Gate(ingest)
        store.start_applying(asyncio.get_running_loop(), gate, ingest.applied)
        assert await store.append(delivery(cfg, 1)) is not None  # acknowledged: committed raw
        read = asyncio.create_task(store.read(lambda conn: queries.runs(conn, limit=10)))
        await asyncio.sleep(0.2)
        assert not read.done(), "a read returned before the delivery acknowledged before it was applied"
        gate.open.set()
        async with asyncio.timeout(10):
            page = await read
        assert [(run["run_id"], run["status"]) for run in page] == [("50001", "success")]
        assert store.unapplied == 0
    finally:
        gate.open.set()
        await asyncio.to_thread(store.close)


async def test_deliveries_left_unapplied_are_applied_and_notified_at_the_next_start(db_path, aiohttp_client):
    cfg = config(db_path)
    # The state a daemon leaves when it dies between the acknowledgement and the applying: appended
    # (committed, acknowledged), never applied.
    store = Store(db_path).open()
    try:
        for n in range(3):
            assert await store.append(delivery(cfg, n)) is not None
    finally:
        await asyncio.to_thread(store.close)
    assert count(db_path, "SELECT count(*) FROM unapplied") == 3
    assert count(db_path, "SELECT count(*) FROM runs") == 0

    client = await aiohttp_client(app_module.build(cfg))  # the next start
    response = await client.get("/api/v1/runs", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status == 200
    assert sorted(run["run_id"] for run in (await response.json())["runs"]) == ["50000", "50001", "50002"]
    assert count(db_path, "SELECT count(*) FROM unapplied") == 0
    # broken, fixed, broken: one notification each, planned with the transitions
    assert count(db_path, "SELECT count(*) FROM outbox") == 3
    await client.close()


async def test_a_delivery_that_fails_to_apply_is_kept_raw_and_holds_up_nothing(db_path):
    cfg = config(db_path)
    store = Store(db_path).open()
    try:
        ingest = Ingest(store, app_module.make_providers(cfg), Bus())

        def decode(source: str, headers: dict[str, str], body: bytes, event: str, received: str) -> Any:
            if b'"id": 50001,' in body:
                raise RuntimeError("a bug in a parser")
            return ingest.decode(source, headers, body, event, received)

        for n in range(3):
            await store.append(delivery(cfg, n))
        store.start_applying(asyncio.get_running_loop(), decode, ingest.applied)
        await store.caught_up()
        assert await store.read(lambda conn: [tuple(r) for r in conn.execute("SELECT run_id FROM runs")]) == [
            ("50000",),
            ("50002",),
        ]
        errors = await store.read(
            lambda conn: [tuple(r) for r in conn.execute("SELECT delivery_id, parse_error FROM deliveries")]
        )
        assert errors == [
            ("apply-0", None),
            ("apply-1", "not applied: RuntimeError: a bug in a parser"),
            ("apply-2", None),
        ]
        assert store.unapplied == 0
    finally:
        await asyncio.to_thread(store.close)


async def test_reindex_leaves_unapplied_deliveries_to_the_daemon_which_notifies_them(db_path):
    cfg = config(db_path)
    providers = app_module.make_providers(cfg)
    store = Store(db_path, on_transition=Planner(cfg.rules).plan).open()
    try:
        await store.append(delivery(cfg, 0))
        conn = connect(db_path)
        try:  # `flowforged reindex` while the delivery waits: it must not apply it without notifying
            steps = list(reindex(conn, lambda *a: Ingest(store, providers, Bus()).decode(*a)[1:], utcnow()))
        finally:
            conn.close()
        assert steps == []
        ingest = Ingest(store, providers, Bus())
        ingest.start()
        await store.caught_up()
        assert count(db_path, "SELECT count(*) FROM runs") == 1
        assert count(db_path, "SELECT count(*) FROM outbox") == 1  # the breakage is notified
    finally:
        await asyncio.to_thread(store.close)


async def post_all(url: str, deliveries: list[tuple[bytes, dict[str, str]]], acked: list[str]) -> None:
    queue = list(deliveries)

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            body, headers = queue.pop(0)
            async with session.post(f"{url}/hooks/github", data=body, headers=headers) as response:
                assert response.status == 202
                acked.append(headers["X-GitHub-Delivery"])

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(session) for _ in range(16)))


@pytest.mark.reliability
async def test_sigkill_after_the_acknowledgement_before_the_applying_loses_nothing(tmp_path):
    db = tmp_path / "flowforge.db"
    daemon = DaemonProcess(tmp_path, base_config(db, rules=RULES, storage={"path": str(db), "apply_lag": "1h"}))
    try:
        daemon.start()
        acked: list[str] = []
        await post_all(daemon.url, [failure(n) for n in range(400)], acked)
        await daemon.akill(signal.SIGKILL)  # at once after the last acknowledgement
        assert len(acked) == 400
        left = count(db, "SELECT count(*) FROM unapplied")
        # The burst is acknowledged faster than it is applied: some were still waiting at the kill.
        assert left > 0, "every delivery was applied before the kill: the test did not kill in between"
        assert count(db, "SELECT count(*) FROM deliveries") == 400
        daemon.start()  # the next start applies what was left
        applied(db)
        assert count(db, "SELECT count(*) FROM runs") == 400
        # one transition per run (broken, fixed, ...), each notification planned once
        assert count(db, "SELECT count(*) FROM outbox") == 400
        assert daemon.kill(signal.SIGTERM) == 0
    finally:
        daemon.close()


async def test_a_client_that_never_finishes_its_body_does_not_hold_applying_back(daemon, db_path):
    client = await daemon(storage={"path": str(db_path), "apply_lag": "1h"})
    # Unauthenticated and slow: headers and half a body, then nothing (it would be 408 after body_timeout).
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: flowforge\r\nContent-Length: 1000\r\n\r\n" + b"{" * 500)
    await writer.drain()
    try:
        body, headers = failure(0)
        assert (await client.post("/hooks/github", data=body, headers=headers)).status == 202
        # Applied in the next pause, although a request is still being received; not an hour later.
        await asyncio.to_thread(applied, db_path, 5.0)
        assert count(db_path, "SELECT count(*) FROM runs") == 1
    finally:
        writer.close()


async def test_a_delivery_acknowledged_before_a_reload_is_applied_under_the_rules_it_arrived_under(
    aiohttp_client, db_path
):
    from flowforged.reload import Reloader
    from flowforged.systemd import Notifier
    from flowforged.webhooks import INGEST

    app = app_module.build(make_config(base_config(db_path)))  # no rule: nobody is told
    client = await aiohttp_client(app)
    ingest = app[INGEST]
    gate = Gate(ingest)
    app[app_module.STORE].start_applying(asyncio.get_running_loop(), gate, ingest.applied)
    body, headers = failure(0)
    assert (await client.post("/hooks/github", data=body, headers=headers)).status == 202  # held unapplied
    reload = asyncio.create_task(Reloader(app, lambda: config(db_path), Notifier({})).apply(config(db_path)))
    await asyncio.sleep(0.2)
    assert not reload.done(), "the rules were swapped before the delivery acknowledged under the old ones applied"
    gate.open.set()
    async with asyncio.timeout(10):
        await reload
    assert app[app_module.PLANNER].rules  # the new rule is in
    assert count(db_path, "SELECT count(*) FROM runs") == 1
    assert count(db_path, "SELECT count(*) FROM outbox") == 0  # broken before the rule existed: not told
