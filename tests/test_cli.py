"""The command line: secret set/delete, runs (table and JSON, filters)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

import pytest

from flowforged import cli
from flowforged.secrets import KEYRING_SERVICE
from tests.conftest import github_headers, github_run
from tests.memkeyring import MemoryKeyring


@pytest.fixture
def keyring(monkeypatch):
    monkeypatch.setenv("FLOWFORGED_KEYRING_BACKEND", "tests.memkeyring.MemoryKeyring")
    MemoryKeyring.store.clear()
    return MemoryKeyring.store


def test_secret_set_reads_stdin_and_delete_removes_it(keyring, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-value\n"))
    assert cli.main(["secret", "set", "github-webhook"]) == 0
    assert keyring[(KEYRING_SERVICE, "github-webhook")] == "s3cret-value"
    out = capsys.readouterr().out
    assert "s3cret-value" not in out and "MemoryKeyring" in out
    assert cli.main(["secret", "delete", "github-webhook"]) == 0
    assert keyring == {}
    assert cli.main(["secret", "delete", "github-webhook"]) == 1


def test_secret_set_without_a_keyring_says_what_to_do_instead(monkeypatch, capsys):
    monkeypatch.setenv("FLOWFORGED_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setattr("sys.stdin", io.StringIO("value\n"))
    assert cli.main(["secret", "set", "x"]) == 1
    err = capsys.readouterr().err
    assert "no system keyring is available" in err and "FLOWFORGED_SECRET_X" in err


async def test_runs_lists_table_and_json_with_filters(daemon, db_path, tmp_path, capsys):
    client = await daemon()
    for run_id, conclusion, branch in ((1, "success", "master"), (2, "failure", "master"), (3, "failure", "dev")):
        body = json.dumps(github_run(conclusion, run_id=run_id, branch=branch)).encode()
        assert (await client.post("/hooks/github", data=body, headers=github_headers(body))).status == 202
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{path: {db_path}}}\n")
    assert cli.main(["-c", str(config), "runs", "--json", "--status", "failed"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["branch"], r["transition"]) for r in rows] == [
        ("3", "dev", "broken"),
        ("2", "master", "broken"),
    ]
    assert {
        "id",
        "source",
        "pipeline",
        "run_id",
        "attempt",
        "branch",
        "sha",
        "status",
        "provider_status",
        "url",
        "started_at",
        "finished_at",
        "duration_seconds",
        "transition",
    } <= set(rows[0])
    assert cli.main(["-c", str(config), "runs", "--branch", "master"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "ID",
        "SOURCE",
        "PIPELINE",
        "BRANCH",
        "RUN",
        "STATUS",
        "TRANSITION",
        "FINISHED",
        "DURATION",
    ]
    assert [line.split()[4] for line in table[1:]] == ["2#1", "1#1"]


def test_reindex_command(db_path, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage: {{path: {db_path}}}\nsources: {{github: {{type: github, webhook_secret: {{secret: gh}}}}}}\n"
    )
    assert cli.main(["-c", str(config), "reindex"]) == 0  # works without the secret's value
    assert "reindexed 0 deliveries" in capsys.readouterr().out
    assert sqlite3.connect(db_path).execute("PRAGMA user_version").fetchone()[0] >= 1


def _config(tmp_path, db_path, extra: str = "") -> str:
    path = tmp_path / "config.yaml"
    path.write_text(f"storage: {{path: {db_path}}}\n{extra}")
    return str(path)


def test_silence_add_list_expire(db_path, tmp_path, capsys):
    config = _config(tmp_path, db_path)
    assert (
        cli.main(
            [
                "-c",
                config,
                "silence",
                "add",
                "--pipeline",
                "octo-org/*",
                "--branch",
                "main",
                "--until",
                "2h",
                "--comment",
                "deploy freeze",
            ]
        )
        == 0
    )
    assert "silence 1 added until" in capsys.readouterr().out
    assert cli.main(["-c", config, "silence", "list", "--json"]) == 0
    [silence] = json.loads(capsys.readouterr().out)
    assert (silence["sources"], silence["pipelines"], silence["branches"], silence["comment"]) == (
        ["*"],
        ["octo-org/*"],
        ["main"],
        "deploy freeze",
    )
    assert cli.main(["-c", config, "silence", "expire", "1"]) == 0
    assert cli.main(["-c", config, "silence", "list"]) == 0
    assert capsys.readouterr().out.strip().endswith("no active silences")
    assert cli.main(["-c", config, "silence", "expire", "1"]) == 1
    assert cli.main(["-c", config, "silence", "add", "--until", "tomorrow"]) == 1
    assert "--until 'tomorrow': expected a duration" in capsys.readouterr().err


async def test_notifications_list_and_retry(db_path, tmp_path, capsys):
    import time

    from flowforged.store import Store, outbox

    store = Store(db_path).open()
    await store.write(
        outbox.insert,
        {
            "sink": "team-slack",
            "rule": "main",
            "transition": "broken",
            "source": "github",
            "pipeline": "octo/repo/ci.yml",
            "branch": "main",
            "state": "dead",
            "created_at": time.time() - 7200,
            "due_at": 0,
            "attempts": 5,
            "last_error": "no_service",
            "dedupe_key": "k",
            "payload": "{}",
        },
    )
    store.close()
    config = _config(tmp_path, db_path)
    assert cli.main(["-c", config, "notifications", "--state", "dead"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["ID", "STATE", "SINK", "TRANSITION"]
    assert table[1].split()[:4] == ["1", "dead", "team-slack", "broken"] and "no_service" in table[1]
    assert cli.main(["-c", config, "notifications", "retry", "1"]) == 0
    assert cli.main(["-c", config, "notifications", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (row["state"], row["attempts"]) == ("pending", 0) and row["due_at"] > time.time() - 60
    assert cli.main(["-c", config, "notifications", "retry", "99"]) == 1


async def test_notify_test_reports_the_sinks_answer(aiohttp_server, db_path, tmp_path, capsys):
    from tests.fakes.slack import FakeSlack

    slack = FakeSlack().script(["200", "404:no_service"])
    server = await aiohttp_server(slack.app())
    url = server.make_url(slack.path)
    config = _config(tmp_path, db_path, f"sinks: {{team-slack: {{type: slack, webhook_url: '{url}'}}}}\n")
    assert await asyncio.to_thread(cli.main, ["-c", config, "notify-test", "team-slack"]) == 0
    assert capsys.readouterr().out.strip() == "team-slack: sent: ok"
    assert "test notification" in json.dumps(slack.messages[0])
    assert await asyncio.to_thread(cli.main, ["-c", config, "notify-test", "team-slack"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: permanent error" in out and "no_service" in out
    assert await asyncio.to_thread(cli.main, ["-c", config, "notify-test", "nope"]) == 1
