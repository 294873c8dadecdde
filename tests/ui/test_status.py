"""`flowforged status`: the board's tiles in a terminal, and --watch redrawing from the event stream."""

from __future__ import annotations

import argparse
import asyncio
import io
import json

import yaml

from flowforged import app as app_module
from flowforged import cli, status
from tests.conftest import applied, github_headers, github_run, make_config
from tests.test_notify import until
from tests.ui.helpers import board_config, seed


def filters(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"source": "", "provider": "", "state": "", "search": "", "watch": False, **given})


async def test_status_prints_the_board_broken_first(aiohttp_client, db_path, tmp_path, capsys):
    data = board_config(db_path)
    client = await aiohttp_client(app_module.build(make_config(data)))
    await seed(client)
    applied(db_path)  # the CLI reads the database file, not the API
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    assert await asyncio.to_thread(cli.main, ["-c", str(config_path), "status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 failing, 0 running, 1 passing, 2 in all"
    assert lines[1].split()[:4] == ["STATE", "PROVIDER", "PIPELINE", "BRANCH"]
    assert lines[2].startswith("✗ failing") and " github " in lines[2] and lines[2].split()[-1] == "✓✗"
    assert lines[3].startswith("✓ passing") and " gitlab " in lines[3]
    assert await asyncio.to_thread(cli.main, ["-c", str(config_path), "status", "--provider", "gitlab"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


async def test_status_without_a_database_says_so(tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(board_config(tmp_path / "none.db")))
    assert cli.main(["-c", str(config_path), "status"]) == 1
    assert "no database" in capsys.readouterr().err


async def test_watch_redraws_when_a_run_fails(aiohttp_client, db_path):
    config = make_config(board_config(db_path))
    client = await aiohttp_client(app_module.build(config))
    body = json.dumps(github_run("success", run_id=1)).encode()
    assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
    applied(db_path)  # the first drawing reads the database file, not the API
    config.server.listen = f"127.0.0.1:{client.port}"
    out = io.StringIO()
    watching = asyncio.create_task(status.watch(config, filters(watch=True), out))
    try:
        await until(lambda: "✓ passing" in out.getvalue(), what="the first drawing")
        body = json.dumps(github_run("failure", run_id=2, updated_at="2020-10-05T17:00:00Z")).encode()
        assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
        await until(lambda: "✗ failing" in out.getvalue().rsplit(status.CLEAR, 1)[-1], what="a redraw")
    finally:
        watching.cancel()
