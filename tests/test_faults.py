"""The database's disk full, for real (a small tmpfs): 503, nothing half-written, recovery.

A delivery is acknowledged once its raw body is committed and applied after, in transactions of its
own (docs/architecture.md, "Accept, then apply"): while the disk is full an append commits or not,
and an acknowledged delivery is either applied whole or still waits, untouched, to be applied.

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

from tests.conftest import applied, github_headers, github_run

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


COUNTS = {
    "deliveries": "SELECT count(*) FROM deliveries",
    "unapplied": "SELECT count(*) FROM unapplied",
    "events": "SELECT count(*) FROM events",
    "runs": "SELECT count(*) FROM runs",
    "events of unapplied deliveries": "SELECT count(*) FROM events WHERE delivery IN (SELECT delivery FROM unapplied)",
}


def counts(db) -> dict[str, int]:
    """One read transaction, so that the counts agree with each other."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None) as conn:
        conn.execute("BEGIN")
        found = {what: conn.execute(sql).fetchone()[0] for what, sql in COUNTS.items()}
        conn.execute("COMMIT")
    return found


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
    now = counts(db)
    assert now["deliveries"] == accepted  # every 202 stored, no 503 stored
    # Each delivery is a run of its own: one applied is whole (its event and its run); one not yet
    # applied (the disk was full when its turn came) has nothing applied and is still listed.
    assert now["events"] == now["runs"] == accepted - now["unapplied"], now
    assert now["events of unapplied deliveries"] == 0, now

    (small_disk / "filler").unlink()  # space comes back
    assert (await client.get("/readyz")).status == 200
    assert (await send(client, 500))[0] == 202
    applied(db)  # every acknowledged delivery, the ones that waited out the full disk too, is applied
    assert counts(db) == {
        "deliveries": accepted + 1,
        "unapplied": 0,
        "events": accepted + 1,
        "runs": accepted + 1,
        "events of unapplied deliveries": 0,
    }
