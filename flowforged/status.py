"""`flowforged status`: the web board in a terminal, for people on the server.

It reads the database directly (read-only, beside the running daemon) and prints the board's tiles
(flowforged.ui.board) as lines, broken first. With --watch it follows the daemon's event stream
(`/api/v1/events/stream`, with api.token) and redraws when a run changes; when the stream drops, it
reconnects with Last-Event-ID and redraws, so nothing is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from flowforged import config as config_module
from flowforged.errors import FlowForgeError
from flowforged.store import board as board_reads
from flowforged.ui import board

SYMBOLS = {"success": "✓", "failed": "✗", "running": "◔", "pending": "◔", "blocked": "◔"}
CLEAR = "\x1b[H\x1b[2J"
RECONNECT = 2.0
DEBOUNCE = 0.3


def register(sub: Any, common: argparse.ArgumentParser, load: Callable[..., config_module.Config]) -> None:
    text = "the board in the terminal: every pipeline's state, broken first"
    parser = sub.add_parser("status", parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
    parser.add_argument("--source", default="", help="only this source")
    parser.add_argument("--provider", default="", help="only sources of this provider (github, gitlab, ...)")
    parser.add_argument("--state", default="", choices=["", *board.FILTER_STATES], help="only tiles in this state")
    parser.add_argument("--search", default="", help="only pipelines whose name, repository or branch has this")
    parser.add_argument("--watch", action="store_true", help="redraw as runs change (needs the daemon and api.token)")
    parser.set_defaults(func=lambda args: run(args, load(args, lenient=True)))


def run(args: argparse.Namespace, config: config_module.Config, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not config.storage.path.exists():
        raise FlowForgeError(f"no database at {config.storage.path} yet: start the daemon first")
    if not args.watch:
        out.write(render(config, args))
        return 0
    if config.api.token is None:
        raise FlowForgeError("--watch follows the daemon's event stream: set api.token in the config")
    try:
        asyncio.run(watch(config, args, out))
    except KeyboardInterrupt:
        pass
    return 0


WAIT_APPLIED = 2.0  # seconds to wait for deliveries acknowledged and not yet applied (architecture.md)


def tiles(config: config_module.Config) -> list[board.Tile]:
    from flowforged.store import connect, queries

    conn = connect(config.storage.path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        queries.wait_applied(conn, WAIT_APPLIED)  # what the daemon acknowledged, as the API would show
        branches = list(config.metrics.branches)
        data = board_reads.board(conn, branches)
    finally:
        conn.close()
    providers = {name: source.type for name, source in config.source_configs.items()}
    return board.tiles(data, providers, branches)


def render(config: config_module.Config, args: argparse.Namespace) -> str:
    found = tiles(config)
    shown = board.select(found, args.source, args.provider, args.state, args.search)
    counts = board.counts(found)
    head = f"{counts['failing']} failing, {counts['running']} running, {counts['passing']} passing, {len(found)} in all"
    return head + "\n" + table(shown, datetime.now(UTC)) + "\n"


def table(shown: list[board.Tile], now: datetime) -> str:
    columns: list[tuple[str, Callable[[board.Tile], str]]] = [
        ("STATE", lambda t: f"{t.symbol} {t.state}" + (" ◔" if t.running and t.state != "running" else "")),
        ("PROVIDER", lambda t: t.provider),
        ("PIPELINE", lambda t: t.name if t.name == t.where else f"{t.where} {t.name}"),
        ("BRANCH", lambda t: t.branch or "-"),
        ("SINCE", lambda t: board.ago(t.since, now)),
        ("LAST", lambda t: board.duration(t.last_duration)),
        ("USUAL", lambda t: board.duration(t.usual_duration)),
        ("RECENT", lambda t: "".join(SYMBOLS.get(status, "·") for status in t.strip)),
        ("FAILED JOBS", lambda t: ", ".join(t.failed_jobs)),
    ]
    if not shown:
        return "no pipeline to show"
    cells = [[get(tile) for _, get in columns] for tile in shown]
    widths = [max([len(title)] + [len(row[i]) for row in cells]) for i, (title, _) in enumerate(columns)]
    lines = ["  ".join(title.ljust(w) for (title, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


async def watch(config: config_module.Config, args: argparse.Namespace, out: TextIO) -> None:
    """Redraw now, then at each run event of the stream (a burst is one redraw)."""
    import aiohttp

    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
    url = f"http://{host}:{config.server.port}/api/v1/events/stream"
    headers = {"Authorization": f"Bearer {config.api.token.get()}"}  # type: ignore[union-attr]
    last_id: str | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            out.write(CLEAR + await asyncio.to_thread(render, config, args))
            out.flush()
            try:
                last_id = await _follow(session, url, {**headers, **_resume(last_id)}, config, args, out, last_id)
            except (aiohttp.ClientError, ConnectionError) as exc:
                out.write(f"\nevent stream lost ({exc.__class__.__name__}); reconnecting…\n")
                out.flush()
            await asyncio.sleep(RECONNECT)


def _resume(last_id: str | None) -> dict[str, str]:
    return {"Last-Event-ID": last_id} if last_id else {}


async def _follow(
    session: Any,
    url: str,
    headers: dict[str, str],
    config: config_module.Config,
    args: argparse.Namespace,
    out: TextIO,
    last_id: str | None,
) -> str | None:
    async with session.get(url, headers=headers) as response:
        if response.status != 200:
            raise FlowForgeError(f"the event stream answered {response.status}: {(await response.text())[:200]}")
        redraw: asyncio.Task[None] | None = None
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("id:"):
                last_id = line[3:].strip()
            elif line.startswith("data:") and '"kind":"run"' in line.replace(" ", ""):
                if redraw is None or redraw.done():
                    redraw = asyncio.create_task(_redraw_soon(config, args, out))
    return last_id


async def _redraw_soon(config: config_module.Config, args: argparse.Namespace, out: TextIO) -> None:
    await asyncio.sleep(DEBOUNCE)
    out.write(CLEAR + await asyncio.to_thread(render, config, args))
    out.flush()
