"""The daemon as a provider's world tests start it: one source polled from a fake provider, a rule that
sends its transitions to a fake Slack, and the store read back as the tests check it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowforged import app as app_module
from flowforged.poller import POLLER
from tests.conftest import applied, base_config, make_config
from tests.fakes.slack import FakeSlack
from tests.test_notify import until


def query(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows as dicts; none while the daemon has not created the database yet."""
    if not db.exists():
        return []
    applied(db)
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, args)]


async def start_with_slack(
    aiohttp_client: Any,
    aiohttp_server: Any,
    db_path: Path,
    name: str,
    source: dict[str, Any],
    on: Sequence[str] = ("broken",),
    **rule: Any,
) -> tuple[Any, FakeSlack]:
    """The daemon with `source` under `name`, once its first poll cycle is done, and the fake Slack that
    every branch's `on` transitions go to."""
    slack = FakeSlack()
    slack_server = await aiohttp_server(slack.app())
    data = base_config(db_path, sources={name: source})
    data["sinks"] = {"team-slack": {"type": "slack", "webhook_url": str(slack_server.make_url(slack.path))}}
    data["rules"] = [{"name": "all", "branches": ["*"], "on": list(on), "sinks": ["team-slack"], **rule}]
    client = await aiohttp_client(app_module.build(make_config(data)))
    await until(lambda: client.app[POLLER].last_cycle(name) is not None, what="the first cycle")
    return client, slack


def late_delivery(db: Path, answer: bytes) -> list[dict[str, Any]]:
    """The stored delivery a webhook's 202 answer names: its parse error and the events it recorded."""
    return query(
        db,
        "SELECT parse_error, (SELECT count(*) FROM events WHERE delivery = d.id) AS events"
        " FROM deliveries d WHERE delivery_id = ?",
        json.loads(answer)["delivery"],
    )
