"""Start-up does not depend on how many events the store holds (docs/architecture.md, "The daemon's life"):
no statement the daemon runs at start reads a whole table that grows with deliveries, and the retention
walk that follows reads a batch, not the table (asserted on the plans SQLite chooses, EXPLAIN QUERY
PLAN, not on time). The metrics' run totals load after READY=1, and every run is counted once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time

import pytest

import flowforged.store
from flowforged import app as app_module
from flowforged.store import Delivery, Store, queries
from tests.conftest import base_config, make_config
from tests.test_store import delivery, run_event

GROWING = {"deliveries", "events", "runs", "jobs", "raw_bodies", "outbox"}
_TABLES = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+(?:AS\s+)?(\w+))?", re.IGNORECASE)
_KEYWORDS = {"where", "left", "join", "on", "indexed", "order", "group", "limit", "using", "inner", "cross", "set"}


@pytest.fixture
def traced(monkeypatch):
    """Every statement run on a connection the store opens, as SQLite expands it."""
    statements: list[str] = []
    connect = flowforged.store.connect

    def tracing(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(flowforged.store, "connect", tracing)
    return statements


def full_scans(db_path, statements: list[str]) -> list[tuple[str, str]]:
    """(plan line, statement) of each statement that reads every row of a table in GROWING."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    found = []
    try:
        for sql in statements:
            if not re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", sql, re.IGNORECASE):
                continue
            names = {}  # EXPLAIN names a table by its alias when it has one
            for table, alias in _TABLES.findall(sql):
                names[table] = table
                if alias and alias.lower() not in _KEYWORDS:
                    names[alias] = table
            for *_, detail in conn.execute(f"EXPLAIN QUERY PLAN {sql}"):
                scanned = re.match(r"SCAN (\w+)", detail)
                if scanned and names.get(scanned.group(1), scanned.group(1)) in GROWING:
                    found.append((detail, sql))
    finally:
        conn.close()
    return found


async def seeded(db_path) -> None:
    store = Store(db_path).open()
    try:
        for n, conclusion in enumerate(("success", "failure", "success", "failure", "success")):
            body = b'{"n": %d}' % n
            await store.ingest(delivery(n, body=body), [run_event(conclusion, n + 1)], "2026-01-01T00:00:00Z")
    finally:
        store.close()


async def test_start_up_reads_no_table_that_grows_with_events(aiohttp_client, db_path, traced):
    await seeded(db_path)
    traced.clear()
    app = app_module.build(make_config(base_config(db_path)))
    client = await aiohttp_client(app)  # through start-up
    # What follows the listener: the metrics' run totals and the first read of the outbox's depth.
    await asyncio.wait_for(app[app_module.REBUILT].wait(), 30)
    deadline = time.monotonic() + 30
    while not any("FROM outbox" in sql for sql in traced):
        assert time.monotonic() < deadline, "the outbox depth was never read"
        await asyncio.sleep(0.01)
    assert any("FROM run_totals" in sql for sql in traced), "the statements at start were not observed"
    assert full_scans(db_path, traced) == []
    await client.close()


async def test_the_retention_walk_reads_a_batch_not_the_deliveries(db_path, traced):
    await seeded(db_path)
    store = Store(db_path).open()
    try:
        traced.clear()
        assert await store.write(queries.prune_raw, "2100-01-01T00:00:00Z") == 5
        assert await store.write(queries.prune_raw, "2100-01-01T00:00:00Z") == 0  # nothing left before then
        assert full_scans(db_path, traced) == []
    finally:
        store.close()


def finished_runs(metrics_text: str) -> float:
    prefix = "flowforge_pipeline_runs_finished_total{"
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith(prefix))


async def test_a_run_that_finishes_while_the_totals_load_is_counted_once(aiohttp_client, db_path):
    await seeded(db_path)  # five finished runs
    app = app_module.build(make_config(base_config(db_path)))
    app[app_module.READY] = asyncio.Event()  # as serve() does: the totals load once READY=1 is sent
    client = await aiohttp_client(app)
    store, ingest = app[app_module.STORE], app[app_module.webhooks.INGEST]

    def finished(run: int) -> Delivery:
        return Delivery("github", f"late-{run}", "webhook", "workflow_run", "2026-01-01T00:00:00Z", {}, b"")

    # The hardest case: a run's commit and the totals' load in one batch of the writer, the commit first.
    # The totals count the run; the listener, which runs after the load, must not count it again.
    entered, release = threading.Event(), threading.Event()

    def hold(conn):
        entered.set()
        release.wait(30)

    held = asyncio.create_task(store.write(hold))
    await asyncio.to_thread(entered.wait, 30)
    late = asyncio.create_task(ingest.commit(finished(6), [run_event("failure", 6)]))
    app[app_module.READY].set()
    deadline = time.monotonic() + 30
    while store._queue.qsize() < 2:  # the commit and the load, waiting behind `hold`
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    release.set()
    await asyncio.wait_for(asyncio.gather(held, late, app[app_module.REBUILT].wait()), 30)
    await ingest.commit(finished(7), [run_event("success", 7)])  # after the load: the listener counts it
    reply = await client.get("/metrics")
    assert finished_runs(await reply.text()) == 7
