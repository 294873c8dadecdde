"""The web board for 2,000 pipelines: how long `GET /` takes and how much it weighs on the wire, beside
the same pipelines as JSON from `/api/v1/pipelines` (four pages of 500), in the same run.

Targets: the board renders in under 100 ms and weighs under 150 KB (gzip, as a browser asks for it).

The store is built once through the store's own ingest function (a delivery per pipeline, 25 runs on
its default branch with two jobs each, some pipelines broken, some running) and cached under var/bench/.

    .venv/bin/python bench/board.py [--pipelines 2000] [--requests 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import figure  # noqa: E402
from flowforged import app as app_module  # noqa: E402
from flowforged import config, logs  # noqa: E402
from flowforged.model import JobEvent, RunEvent, Status  # noqa: E402
from flowforged.secrets import SecretContext  # noqa: E402
from flowforged.store import connect  # noqa: E402
from flowforged.store.ingest import Delivery, ingest  # noqa: E402
from flowforged.store.schema import MIGRATIONS, migrate  # noqa: E402

TOKEN = "bench-api-token-0000"
PROVIDERS = ("github", "gitlab", "buildkite", "jenkins")
RUNS = 25
CACHE = ROOT / "var" / "bench"
FIXTURE = ROOT / "tests" / "fixtures" / "github" / "webhooks" / "workflow_run.completed.success.json"


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def events_of(source: str, index: int, rng: random.Random, now: float) -> list[RunEvent | JobEvent]:
    pipeline = f"org-{index % 40}/service-{index}"
    broken = rng.random() < 0.08
    out: list[RunEvent | JobEvent] = []
    for n in range(RUNS):
        started = now - (RUNS - n) * 3600 - rng.uniform(0, 600)
        ended = started + rng.uniform(240, 900)
        last = n == RUNS - 1
        running = last and rng.random() < 0.05
        failed = (broken and n >= RUNS - 2) or rng.random() < 0.1
        status = Status.RUNNING if running else Status.FAILED if failed else Status.SUCCESS
        run_id = f"{index}-{n}"
        common = {"source": source, "run_id": run_id, "attempt": 1, "pipeline": pipeline}
        for job, ok in (("build", True), ("test", not failed)):
            job_status = Status.RUNNING if running else Status.SUCCESS if ok else Status.FAILED
            out.append(
                JobEvent(**common, job_id=f"{run_id}-{job}", name=job, status=job_status,
                         provider_status=job_status.value, updated_at=iso(ended), started_at=iso(started),
                         finished_at=None if running else iso(ended), branch="main")
            )  # fmt: skip
        out.append(
            RunEvent(**common, status=status, provider_status=status.value, updated_at=iso(ended),
                     pipeline_name=f"service-{index} ci", branch="main", sha=f"{index:08x}{n:032x}",
                     url=f"https://ci.example/{pipeline}/{n}", created_at=iso(started), started_at=iso(started),
                     finished_at=None if running else iso(ended), repo=f"org-{index % 40}/service-{index}",
                     default_branch="main", commit_message="Bump the dependencies", author="Ada", number=n + 1,
                     trigger="push")
        )  # fmt: skip
    return out


def build(pipelines: int) -> Path:
    path = CACHE / f"board-v{len(MIGRATIONS)}-{pipelines}.db"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    rng, now = random.Random(13), time.time()
    conn = connect(partial)
    migrate(conn)
    conn.execute("BEGIN IMMEDIATE")
    for index in range(pipelines):
        source = PROVIDERS[index % len(PROVIDERS)]
        delivery = Delivery(source, f"bench-{index}", "poll", "bench", iso(now), {}, b"")
        ingest(conn, delivery, events_of(source, index, rng, now), iso(now))
    conn.execute("COMMIT")
    conn.close()
    partial.rename(path)
    return path


def daemon_config(db: Path) -> config.Config:
    sources = {name: {"type": name, "insecure_no_auth": True} for name in PROVIDERS}
    data = {"server": {"listen": "127.0.0.1:0"}, "storage": {"path": str(db)}, "api": {"token": TOKEN}}
    return config.validate({**data, "sources": sources}, SecretContext(environ={}, use_keyring=False))


async def timed(session: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[float, int, int, bytes]:
    started = time.perf_counter()
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        body = await response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - started) * 1000, len(body), response.status, body


async def webhook(session: aiohttp.ClientSession, base: str, n: int) -> None:
    """The real workflow_run payload (tests/fixtures), a new run each time."""
    payload = json.loads(FIXTURE.read_text())
    payload["workflow_run"].update(id=900_000 + n, run_number=1000 + n)
    headers = {"X-GitHub-Event": "workflow_run", "X-GitHub-Delivery": str(uuid.uuid4())}
    async with session.post(f"{base}/hooks/github", json=payload, headers=headers) as response:
        assert response.status == 202, await response.text()


async def measure(db: Path, requests: int) -> dict[str, list[float]]:
    app = app_module.build(daemon_config(db))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    base = f"http://{host}:{port}"
    results: dict[str, list[float]] = {"board_ms": [], "board_kb": [], "raw_kb": [], "json_ms": [], "json_kb": []}
    # auto_decompress off: the bytes counted are the bytes that cross the wire.
    async with aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/signin") as form:
            csrf = (await form.text()).split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with session.post(f"{base}/signin", data={"csrf": csrf, "token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303, await r.text()
        plain = await timed(session, f"{base}/", headers={"Accept-Encoding": "identity"})
        results["cold_ms"] = [plain[0]]  # the first request reads every pipeline; later ones, the changed
        assert plain[3].count(b'<li class="tile') >= int(db.stem.rsplit("-", 1)[1]), "not every pipeline is shown"
        for n in range(requests):
            await webhook(session, base, n)  # a board in use: a run changes between two looks
            ms, size, _, _ = await timed(session, f"{base}/", headers={"Accept-Encoding": "gzip"})
            results["board_ms"].append(ms)
            results["board_kb"].append(size / 1024)
            results["raw_kb"].append(plain[1] / 1024)
            total_ms = total_kb = 0.0
            cursor = None
            headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
            while True:
                params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
                ms, size, _, body = await timed(session, f"{base}/api/v1/pipelines", headers=headers, params=params)
                total_ms, total_kb = total_ms + ms, total_kb + size / 1024
                cursor = json.loads(body)["next_cursor"]
                if cursor is None:
                    break
            results["json_ms"].append(total_ms)
            results["json_kb"].append(total_kb)
    await runner.cleanup()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    logs.setup("warning")
    started = time.monotonic()
    cached = build(args.pipelines)
    print(f"store: {cached} ({cached.stat().st_size / 1e6:.0f} MB, ready in {time.monotonic() - started:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / f"board-{args.pipelines}.db"
        shutil.copy(cached, db)  # the daemon migrates and locks its database: never the cached one
        results = asyncio.run(measure(db, args.requests))
    median = {key: statistics.median(values) for key, values in results.items()}
    p90 = {key: sorted(values)[int(len(values) * 0.9)] for key, values in results.items()}
    print(f"\n{args.pipelines} pipelines, {args.requests} requests each")
    print(f"{'':<34} {'median':>10} {'p90':>10}")
    print(f"{'board GET / (gzip)':<34} {median['board_ms']:>8.1f}ms {p90['board_ms']:>8.1f}ms")
    print(f"{'JSON /api/v1/pipelines, 4 pages':<34} {median['json_ms']:>8.1f}ms {p90['json_ms']:>8.1f}ms")
    print(f"{'board, first request (reads all)':<34} {median['cold_ms']:>8.1f}ms")
    print(f"{'board on the wire (gzip)':<34} {median['board_kb']:>8.1f}KB")
    print(f"{'board uncompressed':<34} {median['raw_kb']:>8.1f}KB")
    print(f"{'JSON on the wire, 4 pages':<34} {median['json_kb']:>8.1f}KB")
    board_ms, board_kb = median["board_ms"], median["board_kb"]
    figure("board render, 2000 pipelines (median)", board_ms, "ms", round(median["json_ms"], 1), "< 100 ms",
           board_ms < 100)  # fmt: skip
    figure("board weight on the wire", board_kb, "KB", round(median["json_kb"], 1), "< 150 KB", board_kb < 150)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
