"""WAL checkpoints beside the writer, out of the commit path (docs/architecture.md, "The store").

The writer's connection never checkpoints (wal_autocheckpoint = 0): a checkpoint copies the WAL into
the database and fsyncs it, and no commit, nor the acknowledgement waiting on it, should pay for that.
This thread checkpoints instead, once the WAL holds `checkpoint_at` bytes: PASSIVE, so it never waits
for the writer. A page written many times between two checkpoints is copied once, so rarer checkpoints
write less; once the WAL is checkpointed whole, the writer starts it over from its beginning, which
bounds its size. When readers keep it from being checkpointed whole and it passes `limit`, a TRUNCATE
checkpoint waits for them and for the writer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from flowforged import logs

log = logs.get("flowforged.store")
EVERY = 0.25  # seconds between two looks at the WAL's size
CHECKPOINT_AT = 32 * 1024 * 1024  # bytes of WAL that are copied into the database
LIMIT = 256 * 1024 * 1024  # a WAL beyond this is checkpointed waiting for readers and the writer


def writer_settings(conn: sqlite3.Connection) -> None:
    """The writer's side: no checkpoint in a commit, and a WAL file cut back to LIMIT once reset."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA journal_size_limit = {LIMIT}")


class Checkpointer:
    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection], checkpoint_at: int = CHECKPOINT_AT):
        self.wal = path.with_name(path.name + "-wal")
        self.connect = connect
        self.checkpoint_at = checkpoint_at
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn = self.connect()
        try:
            while not self._stopping.wait(EVERY):
                try:
                    size = self.wal.stat().st_size if self.wal.exists() else 0
                    if size > self.checkpoint_at:
                        mode = "TRUNCATE" if size > LIMIT else "PASSIVE"
                        conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                except sqlite3.Error as exc:  # a full disk: the writer reports it; try again later
                    log.warning("WAL checkpoint failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
