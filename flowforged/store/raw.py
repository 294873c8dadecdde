"""Raw deliveries: bodies compressed with zstandard and a dictionary trained on each source's own payloads,
kept in the store, and headers kept once per distinct set.

A provider's deliveries are mostly the same JSON keys and URLs: a dictionary trained on a few hundred of
them makes a 20 KB GitHub `workflow_run` a few hundred bytes, where zlib alone leaves about 2.8 KB.
Bodies live in `raw_bodies`, a table of their own, so that many small bodies share a page instead of
each taking most of a `deliveries` row's page. `deliveries.body` then holds one byte, STORED, which says
"in raw_bodies"; a body stored before (zlib, whose streams start with 0x78) is read as it was, and an
empty one was pruned (storage.raw_retention_days: a trigger drops its raw_bodies row with it).

Until a source has a dictionary its bodies are compressed without one; `train()` makes one from the
bodies already stored, off the writer thread (the store calls it once TRAIN_AFTER bodies have arrived).

A source's deliveries carry the same stored headers but for the event name and the delivery id, which
the row has in columns of its own: `header_sets` keeps each distinct set once, with those two values
written as 0 and 1 (a header's value is text, so neither can be one), and the row points to its set.
Rows from before schema 10 keep their headers as JSON in `deliveries.headers`.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Mapping

import zstandard

STORED = b"\x00"  # deliveries.body of a body kept in raw_bodies; zlib streams never start with 0
LEVEL = 3  # with a dictionary: within 10% of level 9's size at half its time
DICTIONARY_BYTES = 32_768
TRAIN_AFTER = 256  # bodies of a source stored without a dictionary before one is trained
TRAIN_SAMPLES = 1_000


class Codecs:
    """Compressors and decompressors by dictionary, for one connection (a dictionary id is the store's)."""

    def __init__(self) -> None:
        self.latest: dict[str, int | None] = {}  # source -> the dictionary new bodies use
        self.plain: dict[str, int] = {}  # source -> bodies written without a dictionary since start
        self.wanted: set[str] = set()  # sources that have earned a dictionary: the store trains one
        self._compressors: dict[int | None, zstandard.ZstdCompressor] = {}
        self._decompressors: dict[int | None, zstandard.ZstdDecompressor] = {}

    def compressor(self, conn: sqlite3.Connection, source: str) -> tuple[int | None, zstandard.ZstdCompressor]:
        if source not in self.latest:
            row = conn.execute("SELECT max(id) FROM dictionaries WHERE source = ?", (source,)).fetchone()
            self.latest[source] = row[0]
        dictionary = self.latest[source]
        if dictionary not in self._compressors:
            data = _dictionary(conn, dictionary)
            self._compressors[dictionary] = zstandard.ZstdCompressor(
                level=LEVEL, dict_data=data, write_checksum=False, write_dict_id=False
            )
        return dictionary, self._compressors[dictionary]

    def decompressor(self, conn: sqlite3.Connection, dictionary: int | None) -> zstandard.ZstdDecompressor:
        if dictionary not in self._decompressors:
            self._decompressors[dictionary] = zstandard.ZstdDecompressor(dict_data=_dictionary(conn, dictionary))
        return self._decompressors[dictionary]


def codecs(conn: sqlite3.Connection) -> Codecs:
    """The connection's codecs (store.connect() gives each connection its own), else fresh ones."""
    found = getattr(conn, "raw_codecs", None)
    return found if found is not None else Codecs()


def _dictionary(conn: sqlite3.Connection, dictionary: int | None) -> zstandard.ZstdCompressionDict | None:
    if dictionary is None:
        return None
    (data,) = conn.execute("SELECT data FROM dictionaries WHERE id = ?", (dictionary,)).fetchone()
    return zstandard.ZstdCompressionDict(data)


def write(conn: sqlite3.Connection, delivery: int, source: str, body: bytes) -> None:
    """Keep a delivery's body (its deliveries row holds STORED). An empty body is not kept."""
    found = codecs(conn)
    dictionary, compressor = found.compressor(conn, source)
    if dictionary is None:
        found.plain[source] = found.plain.get(source, 0) + 1
        if found.plain[source] == TRAIN_AFTER:
            found.wanted.add(source)
    conn.execute(
        "INSERT INTO raw_bodies (delivery, dictionary, body) VALUES (?, ?, ?)",
        (delivery, dictionary, compressor.compress(body)),
    )


def read(conn: sqlite3.Connection, delivery: int, stored: bytes) -> bytes:
    """A delivery's body as it arrived, from what its deliveries row holds; b'' once pruned."""
    if not stored:
        return b""
    if stored != STORED:
        return zlib.decompress(stored)  # stored before raw_bodies existed
    row = conn.execute("SELECT dictionary, body FROM raw_bodies WHERE delivery = ?", (delivery,)).fetchone()
    if row is None:
        return b""
    return codecs(conn).decompressor(conn, row[0]).decompress(row[1])


def samples(conn: sqlite3.Connection, source: str, limit: int = TRAIN_SAMPLES) -> list[bytes]:
    """The source's latest bodies, as they arrived: what its dictionary is trained on."""
    rows = conn.execute(
        "SELECT d.id, d.body FROM deliveries d WHERE d.source = ? AND length(d.body) > 0 ORDER BY d.id DESC LIMIT ?",
        (source, limit),
    ).fetchall()
    return [body for body in (read(conn, row, stored) for row, stored in rows) if body]


def train(bodies: list[bytes]) -> bytes | None:
    """A dictionary for these bodies; None when there are too few, or too alike, to train one."""
    if len(bodies) < 8:
        return None
    try:
        return zstandard.train_dictionary(DICTIONARY_BYTES, bodies).as_bytes()
    except zstandard.ZstdError:
        return None  # zstd refuses a sample set it cannot learn from: compress without a dictionary


def add_dictionary(conn: sqlite3.Connection, source: str, data: bytes, samples: int, now: str) -> int:
    """Keep a trained dictionary; bodies written after it use it (the writer's codecs learn of it)."""
    cursor = conn.execute(
        "INSERT INTO dictionaries (source, trained_at, samples, data) VALUES (?, ?, ?, ?)", (source, now, samples, data)
    )
    codecs(conn).latest[source] = cursor.lastrowid
    return cursor.lastrowid  # type: ignore[return-value]


_EVENT, _DELIVERY_ID = 0, 1


def header_set(conn: sqlite3.Connection, headers: Mapping[str, str], event: str, delivery_id: str) -> int:
    """The id of the set these headers make (added when new): what deliveries.header_set holds."""
    shape = {
        name: _EVENT if value == event else _DELIVERY_ID if value == delivery_id else value
        for name, value in headers.items()
    }
    text = json.dumps(shape, separators=(",", ":"))
    # Looked up each time rather than cached: a set added by an item that is rolled back is gone again.
    row = conn.execute("SELECT id FROM header_sets WHERE headers = ?", (text,)).fetchone()
    if row is not None:
        return row[0]
    return conn.execute("INSERT INTO header_sets (headers) VALUES (?)", (text,)).lastrowid  # type: ignore[return-value]


def headers(conn: sqlite3.Connection, stored: str, set_id: int | None, event: str, delivery_id: str) -> dict[str, str]:
    """A delivery's headers as they were kept, from its row's headers, header_set, event and delivery_id."""
    if set_id is None:
        return json.loads(stored)  # before schema 10
    (text,) = conn.execute("SELECT headers FROM header_sets WHERE id = ?", (set_id,)).fetchone()
    values = {_EVENT: event, _DELIVERY_ID: delivery_id}
    return {name: values[value] if isinstance(value, int) else value for name, value in json.loads(text).items()}
