"""The database's disk full, for real (a small tmpfs): 503, nothing half-written, recovery.

A read-only remount is refused by the kernel while SQLite holds the file open for writing, so a disk
that turns read-only under the daemon cannot be staged here; SQLite reports it as the same
OperationalError as a full disk, which is the path tested here (503, reconnect, recover)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import uuid

import pytest

from tests.conftest import github_headers, github_run

pytestmark = pytest.mark.reliability


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs of its own: filling it fills nothing else. Needs root (CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        if os.environ.get("FLOWFORGE_REQUIRE_TOOLS"):
            pytest.fail(f"cannot mount a tmpfs: {result.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory) -> None:
    with contextlib.suppress(OSError), open(directory / "filler", "wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
            os.fsync(out.fileno())


def counts(db) -> tuple[int, int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("deliveries", "events", "runs"))


async def send(client, run_id: int) -> tuple[int, str]:
    delivery = str(uuid.uuid4())
    body = json.dumps(github_run("failure" if run_id % 2 else "success", run_id=run_id)).encode()
    response = await client.post("/hooks/github", data=body, headers=github_headers(body, delivery=delivery))
    return response.status, delivery


async def test_disk_full_gives_503_stores_nothing_half_and_recovers(daemon, small_disk):
    db = small_disk / "flowforge.db"
    client = await daemon(storage={"path": str(db), "busy_timeout": "100ms"})
    for n in range(5):
        assert (await send(client, n))[0] == 202
    fill(small_disk)
    outcomes = [await send(client, 100 + n) for n in range(60)]
    assert {status for status, _ in outcomes} <= {202, 503}
    refused = [delivery for status, delivery in outcomes if status == 503]
    assert refused, "the full disk never refused a delivery"
    assert (await client.get("/readyz")).status == 503
    accepted = 5 + len(outcomes) - len(refused)
    deliveries, events, runs = counts(db)
    assert deliveries == accepted  # every 202 stored, no 503 stored
    assert events == runs == accepted  # and each stored delivery whole: its event and its run

    (small_disk / "filler").unlink()  # space comes back
    assert (await client.get("/readyz")).status == 200
    assert (await send(client, 500))[0] == 202
    assert counts(db)[0] == accepted + 1
