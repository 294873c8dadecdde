"""The SQLite store: one writer thread with group commit, and reader connections for queries.

All of FlowForge's SQL lives in this package, behind `Store`, so that another store (PostgreSQL, for
users who run several daemons) can be added beside it.

Group commit: webhook handlers submit work to one writer thread; it takes everything waiting, runs
each item in a savepoint inside one transaction, commits once, and only then resolves each item's
future. A request is acknowledged after its commit, and many concurrent requests share one fsync.

Accept, then apply (docs/architecture.md): a webhook's raw delivery is committed and acknowledged
first (`append`); the same writer thread decodes, normalizes and applies it after, in order of
arrival, in chunks, whenever no other write waits for it, and at once when a reader waits for it or
the oldest unapplied delivery is `apply_lag` seconds old. A read sees every delivery acknowledged
before it was asked for.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from flowforged import logs
from flowforged.errors import FlowForgeError, StoreUnavailable
from flowforged.model import utcnow
from flowforged.store import queries, raw, wal
from flowforged.store.ingest import (
    Decode,
    Delivery,
    IngestResult,
    TransitionHook,
    append,
    apply_delivery,
    apply_events,
    ingest,
    oldest_unapplied,
    set_aside,
)
from flowforged.store.schema import migrate

__all__ = ["DatabaseInUse", "Delivery", "IngestResult", "Store", "connect"]

log = logs.get("flowforged.store")
T = TypeVar("T")
MAX_BATCH = 512
# SQLite errors that belong to one item's statements (a constraint, a bad statement), not to the disk.
_ITEM_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
_STOP = object()
_WAKE = object()  # a reader waits for unapplied deliveries: apply them now
APPLY_CHUNK = 128  # unapplied deliveries applied per transaction
LULL = 0.002  # seconds without a write, and no webhook being received, after which the writer applies
APPLY_LAG = 10.0  # seconds an acknowledged delivery may wait to be applied while writes keep coming
DRAIN = 20.0  # seconds a stopping daemon spends applying what is left (the rest at the next start)
CATCH_UP = 30.0  # seconds a read waits for the deliveries acknowledged before it

# Applied deliveries, each with its source and origin, handed to the event loop (Ingest.applied()).
Applied = Callable[[list[tuple[IngestResult, str, str]]], None]


class DatabaseInUse(FlowForgeError):
    """Another flowforged holds the database: two would both send every notification."""


def create_private(path: Path) -> None:
    """The data directory (0700) and the database file (0600), whatever the umask. SQLite gives the
    WAL and shared-memory files the permissions of the database file, so all three stay private."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))  # an existing file is kept as is


def lock(path: Path) -> int:
    """Hold an exclusive lock on `<database>.lock` for as long as the returned descriptor is open.

    flock(2) locks go with the process: a daemon killed with SIGKILL leaves no stale lock behind."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DatabaseInUse(
            f"the database {path} is in use by another flowforged (pid {holder}, lock {lock_path}): "
            "stop it first, or give this daemon a storage.path of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Connection(sqlite3.Connection):
    """A connection that keeps what it learnt of its database: its raw-body codecs (store/raw.py: a
    dictionary id is the database's), and whether events from before key digests exist."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.raw_codecs = raw.Codecs()
        self.legacy_event_keys: int | None = None  # store/eventrows.py: recorded_before_digests()


def connect(
    path: Path, *, readonly: bool = False, synchronous: str = "NORMAL", busy_timeout: float = 5.0
) -> sqlite3.Connection:
    """A connection with FlowForge's settings. Transactions are explicit (isolation_level=None)."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, factory=Connection
        )
    else:
        create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, factory=Connection)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives the process being killed; FULL also survives power loss.
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


class _Job:
    __slots__ = ("fn", "args", "future", "loop")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: Any, loop: Any):
        self.fn, self.args, self.future, self.loop = fn, args, future, loop


class Store:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        readers: int = 4,
        on_transition: TransitionHook | None = None,
        checkpoint_at: int = wal.CHECKPOINT_AT,
        apply_lag: float = APPLY_LAG,
    ):
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.on_transition = on_transition
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self.commits = 0  # batches committed: with `writes`, shows how well group commit groups
        self.writes = 0
        self.last_error: str | None = None
        self._lock: int | None = None
        self._stopping = threading.Event()
        self._checkpointer = wal.Checkpointer(self.path, self._connect, checkpoint_at)
        # Accept, then apply. Written by the writer thread; read by the loop's thread (plain ints).
        self.apply_lag = apply_lag
        self._applier: tuple[asyncio.AbstractEventLoop, Decode, Applied] | None = None
        self._appended = 0  # the last delivery appended (committed or about to be)
        self._applied = 0  # every delivery up to this one is applied
        self._unapplied = 0  # about how many wait (exact once the table is seen empty)
        self._since: collections.deque[tuple[int, float]] = collections.deque()  # (delivery, appended at)
        self._waiters: list[tuple[int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._waiters_lock = threading.Lock()
        self._retry_apply_at = 0.0
        self.receiving = 0  # webhook requests in progress (webhooks.py): applying waits for a pause

    # --- lifecycle ------------------------------------------------------------------------------
    def open(self) -> Store:
        """Lock the database (DatabaseInUse if another daemon has it), migrate it, start the writer."""
        create_private(self.path)
        self._lock = lock(self.path)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="store-writer", daemon=True)
        self._thread.start()
        try:
            ready.result()  # migration errors are raised here, at start
        except BaseException:
            self._unlock()
            raise
        self._stopping.clear()
        self._checkpointer.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._checkpointer.stop()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the file stays: removing it would race with a daemon starting
            self._lock = None

    # --- writing --------------------------------------------------------------------------------
    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on the writer thread; return once its transaction is committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(fn, args, future, loop))
        return await future

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """The same from a thread with no event loop (the CLI)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Job(fn, args, future, None))
        return future.result()

    async def ingest(self, delivery: Delivery, events: list[Any], now: str) -> IngestResult:
        return await self.write(ingest, delivery, events, now, self.on_transition)

    async def append(self, delivery: Delivery) -> int | None:
        """Commit a webhook's raw delivery, to be applied after (start_applying()); its deliveries.id,
        or None for a duplicate."""
        return await self.write(self._append, delivery)

    def _append(self, conn: sqlite3.Connection, delivery: Delivery) -> int | None:
        row = append(conn, delivery)
        if row is not None:  # counted before the commit: a batch that fails is recounted by _apply
            self._appended = row
            self._unapplied += 1
            self._since.append((row, time.monotonic()))
        return row

    def start_applying(self, loop: asyncio.AbstractEventLoop, decode: Decode, applied: Applied) -> None:
        """Apply what is appended with `decode`, handing each chunk's results to `applied` on `loop`.
        Deliveries left unapplied by the last run are applied first."""
        self._applier = (loop, decode, applied)
        self._queue.put(_WAKE)

    @property
    def applied_all(self) -> bool:
        """Whether every delivery acknowledged so far is applied (or nothing applies them)."""
        return self._applier is None or self._appended <= self._applied

    @property
    def unapplied(self) -> int:
        """About how many acknowledged deliveries wait to be applied (for /metrics)."""
        return self._unapplied

    def _connect(self) -> sqlite3.Connection:
        conn = connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        wal.writer_settings(conn)  # checkpoints are the checkpointer's (store/wal.py)
        return conn

    def _train(self, source: str) -> None:
        """Train the source's raw-body dictionary on its stored bodies (store/raw.py), off the writer
        thread (it takes a fraction of a second), then keep it through the writer."""
        conn = connect(self.path, readonly=True)
        try:
            bodies = raw.samples(conn, source)
        finally:
            conn.close()
        data = raw.train(bodies)
        if data is not None and not self._stopping.is_set():
            self.write_sync(raw.add_dictionary, source, data, len(bodies), utcnow())
            log.info("raw-body dictionary trained", source=source, samples=len(bodies), bytes=len(data))

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn: sqlite3.Connection | None = self._connect()
            migrate(conn)  # type: ignore[arg-type]
        except Exception as exc:
            ready.set_exception(exc)
            return
        left = conn.execute("SELECT count(*), max(delivery) FROM unapplied").fetchone()  # type: ignore[union-attr]
        if left[0]:
            log.info("deliveries left unapplied by the last run are applied first", count=left[0])
            self._unapplied, self._appended = left
            self._since.append((left[1], time.monotonic()))
        ready.set_result(None)
        while True:
            try:
                first = self._queue.get(timeout=self._wait_for_work())
            except queue.Empty:
                if self._overdue():
                    conn = self._apply(conn, yielding=False)
                elif self._pause():
                    conn = self._apply(conn, yielding=True)  # a lull: apply until a write comes
                continue
            if first is _STOP:
                break
            if first is _WAKE:
                continue
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if item is not _WAKE:
                    batch.append(item)
            conn = self._commit(conn, batch)  # type: ignore[arg-type]
            if stop:
                break
            if self._applier is not None and self._unapplied and self._overdue():
                conn = self._apply(conn, yielding=False)  # writes keep coming: a chunk between two batches
            if conn is not None and conn.raw_codecs.wanted:  # type: ignore[attr-defined]
                self._start_training(conn.raw_codecs.wanted)  # type: ignore[attr-defined]
        conn = self._drain(conn)
        if conn is not None:
            conn.close()

    # --- applying -------------------------------------------------------------------------------
    def _wait_for_work(self) -> float | None:
        """How long the writer waits for a write before it applies: for ever when nothing waits to be
        applied, not at all when it is overdue, else a lull."""
        if self._applier is None or not self._unapplied:
            return None
        if self._overdue():
            return max(0.0, self._retry_apply_at - time.monotonic())
        return max(LULL, self._retry_apply_at - time.monotonic())

    def _pause(self) -> bool:
        """No webhook is being received and no write waits: applying costs nobody an acknowledgement."""
        return not self.receiving and self._queue.empty()

    def _overdue(self) -> bool:
        if self._waiters:
            return True
        return bool(self._since) and time.monotonic() - self._since[0][1] >= self.apply_lag

    def _apply(self, conn: sqlite3.Connection | None, yielding: bool) -> sqlite3.Connection | None:
        """Apply one chunk of unapplied deliveries in one transaction, each in a savepoint; hand the
        results to the loop and wake the readers waiting for them. `yielding`: end the chunk as soon
        as a write waits or a webhook is being received (their acknowledgements go first)."""
        if self._applier is None or time.monotonic() < self._retry_apply_at:
            return conn
        loop, decode, applied = self._applier
        done: list[tuple[IngestResult, str, str]] = []
        try:
            if conn is None:
                conn = self._connect()
            rows = oldest_unapplied(conn, APPLY_CHUNK)
            last = 0
            if rows:
                now = utcnow()
                conn.execute("BEGIN IMMEDIATE")
                for row in rows:
                    conn.execute("SAVEPOINT job")
                    try:
                        done.append(apply_delivery(conn, row, decode, now, self.on_transition))
                    except Exception as exc:
                        if isinstance(exc, sqlite3.Error) and not isinstance(exc, _ITEM_ERRORS):
                            raise
                        conn.execute("ROLLBACK TO job")
                        error = f"not applied: {type(exc).__name__}: {exc}"
                        log.error("delivery kept raw: applying it failed", delivery=row, error=error)
                        set_aside(conn, row, error)
                    conn.execute("RELEASE job")
                    last = row
                    if yielding and not self._pause():
                        break
                conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the database failed: the chunk is applied again later
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
                conn.close()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store commit failed while applying deliveries", error=self.last_error)
            self._retry_apply_at = time.monotonic() + 1.0
            return None
        self.last_error = None
        if len(rows) < APPLY_CHUNK and (not rows or last == rows[-1]):
            # None left: whatever was counted but rolled back never existed.
            self._applied, self._unapplied = max(self._applied, self._appended), 0
            self._since.clear()
        else:
            self._applied = last
            self._unapplied = max(0, self._unapplied - len(done))
            while self._since and self._since[0][0] <= self._applied:
                self._since.popleft()
        if done:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
                loop.call_soon_threadsafe(applied, done)
        self._wake_readers()
        return conn

    def _drain(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """At stop: apply what is left for up to DRAIN seconds; the rest waits for the next start."""
        deadline = time.monotonic() + DRAIN
        while self._applier is not None and self._unapplied and time.monotonic() < deadline:
            if (wait := self._retry_apply_at - time.monotonic()) > 0:  # after a failed commit
                time.sleep(min(wait, deadline - time.monotonic()))
                continue
            conn = self._apply(conn, yielding=False)
            if conn is None:
                break
        if self._unapplied:
            log.warning("deliveries left to apply at the next start", count=self._unapplied)
        return conn

    def _wake_readers(self) -> None:
        with self._waiters_lock:
            ready = [w for w in self._waiters if w[0] <= self._applied]
            self._waiters = [w for w in self._waiters if w[0] > self._applied]
        for _, future, loop in ready:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_done, future)

    async def caught_up(self, within: float = CATCH_UP) -> None:
        """Return once every delivery acknowledged so far is applied, or after `within` seconds."""
        target = self._appended
        if self._applier is None or target <= self._applied:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            self._waiters.append((target, future, loop))
        if target <= self._applied:  # applied meanwhile, maybe before the waiter was seen
            self._wake_readers()
        self._queue.put(_WAKE)
        try:
            async with asyncio.timeout(within):
                await future
        except TimeoutError:
            log.warning("read without the latest deliveries: they are not applied yet", waited=within)

    def _start_training(self, wanted: set[str]) -> None:
        for source in wanted:
            threading.Thread(target=self._train, args=(source,), name="store-train", daemon=True).start()
        wanted.clear()

    def _commit(self, conn: sqlite3.Connection | None, batch: list[_Job]) -> sqlite3.Connection | None:
        """Commit a batch; return the connection to use next (None after a failure: reconnect then,
        since after an I/O error or a full disk SQLite's connection may not recover by itself)."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            if conn is None:
                conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn, *job.args)
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not isinstance(exc, _ITEM_ERRORS):
                        raise  # the database itself failed: the whole batch fails with it
                    conn.execute("ROLLBACK TO job")  # one item's bug must not fail the others
                    outcomes.append((job, None, exc))
                else:
                    outcomes.append((job, value, None))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the database itself failed (full, read-only, I/O): the whole batch
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
                conn.close()
                conn = None
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("store commit failed", error=self.last_error, batch=len(batch))
            failure = StoreUnavailable(f"the store cannot commit: {exc}")
            outcomes = [(job, None, failure) for job in batch]
        else:
            self.last_error = None
            self.commits += 1
            self.writes += len(batch)
        _resolve(outcomes)
        return conn

    # --- reading --------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) on a reader connection in the reader pool, once every delivery
        acknowledged before is applied."""
        if not self.applied_all:
            await self.caught_up()
        return await self.peek(fn, *args)

    async def peek(self, fn: Callable[..., T], *args: Any) -> T:
        """read() without waiting for deliveries to be applied: for the daemon's own bookkeeping (the
        outbox's due rows and depth), which the applying wakes anyway, and which must not make the
        writer apply a burst's deliveries before the acknowledgements waiting behind them."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader(), *args))

    async def writable(self) -> bool:
        """For /readyz: can the writer commit a real write right now (a full disk fails it)?"""
        try:
            await self.write(queries.heartbeat)
        except StoreUnavailable:
            return False
        return True

    # --- queries (the CLI uses them on their own connection) --------------------------------------
    runs = staticmethod(queries.runs)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, value, error in outcomes:
        if job.future.done():
            continue  # the awaiting request was cancelled (client went away); the commit stands
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)


def _resolve(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Wake each waiting loop once per batch, not once per item: one self-pipe write per commit."""
    by_loop: dict[Any, list[tuple[_Job, Any, BaseException | None]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        if loop is None:
            _settle(items)
            continue
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def reindex(
    conn: sqlite3.Connection,
    decode: Callable[[str, dict[str, str], bytes, str, str], tuple[list[Any], str | None]],
    now: str,
    only_errors: bool = False,
    batch: int = 500,
) -> Iterator[tuple[int, int, int]]:
    """Re-normalize raw deliveries in order, `batch` per transaction. Yields (done, events, errors).

    Idempotent: states already recorded are skipped by their key. No notification is written for what
    reindex finds: it is history by the time a parser is fixed.
    """
    where = "WHERE length(body) > 0"  # a pruned delivery (raw_retention_days) has nothing to re-read
    where += " AND id NOT IN (SELECT delivery FROM unapplied)"  # the daemon applies those, notifying
    if only_errors:
        where += " AND parse_error IS NOT NULL"
    last = 0
    done = new_events = errors = 0
    while True:
        rows = conn.execute(
            f"SELECT id, source, event, headers, header_set, delivery_id, body, received_at FROM deliveries {where}"  # noqa: S608
            " AND id > ? ORDER BY id LIMIT ?",
            (last, batch),
        ).fetchall()
        if not rows:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row_id, source, event, stored, header_set, delivery_id, body, received_at in rows:
                # Dated as when it was received, so a payload that names no time (a Jenkins notification
                # without one) gets the same key as the first time and is not stored again.
                body = raw.read(conn, row_id, body)
                headers = raw.headers(conn, stored, header_set, event, delivery_id)
                events, error = decode(source, headers, body, event, received_at)
                conn.execute("UPDATE deliveries SET parse_error = ? WHERE id = ?", (error, row_id))
                result = IngestResult(delivery=row_id)
                apply_events(conn, row_id, events, now, result, None, notify=False)
                new_events += len(result.events)
                errors += error is not None
                last = row_id
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
        done += len(rows)
        yield done, new_events, errors
