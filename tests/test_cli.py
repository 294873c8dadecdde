"""The command line: secret set/delete, runs (table and JSON, filters)."""

from __future__ import annotations

import argparse
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
    assert "no usable keyring: FLOWFORGED_KEYRING_BACKEND=keyring.backends.fail.Keyring stores nothing" in err
    assert "$FLOWFORGED_SECRET_X" in err and "LoadCredentialEncrypted=x" in err


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


def _walk(parser: argparse.ArgumentParser, path: str = "flowforged"):
    """Every (command path, parser) of the tree, the top one included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


def test_every_subcommand_and_option_has_help_text():
    missing = []
    for path, parser in _walk(cli.parser()):
        if path != "flowforged" and not (parser.description or "").strip():
            missing.append(f"{path}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if (choice.help or "").strip()}
                missing += [f"{path} {name}: no help" for name in action.choices if name not in helped]
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []
    assert len(list(_walk(cli.parser()))) == 10  # the tree walked is the whole command set


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_option_before_or_after_every_subcommand(db_path, tmp_path, capsys, where):
    path = _config(tmp_path, db_path)
    commands = {name for name, _ in _walk(cli.parser())}
    assert {f"flowforged {c}" for c in ("run", "check-config", "runs", "reindex")} <= commands
    for command in (["check-config"], ["reindex"], ["runs"], ["notifications"], ["silence", "list"]):
        argv = ["-c", path, *command] if where == "before" else [*command, "-c", path]
        assert cli.main(argv) in (0, 1), argv
        out, err = capsys.readouterr()
        assert "/etc/flowforged" not in out + err  # the file given, not the default
    argv = ["check-config", "--config", path] if where == "after" else ["--config", path, "check-config"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok")


def test_an_option_after_the_subcommand_wins_over_the_one_before(db_path, tmp_path, capsys):
    good = _config(tmp_path, db_path)
    assert cli.main(["-c", str(tmp_path / "absent.yaml"), "check-config", "-c", good]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: ok")


@pytest.mark.parametrize("command", [["runs"], ["notifications"]])
@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_limit_must_be_a_positive_number(command, limit, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*command, "--limit", limit])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit:" in err
    assert ("must be at least 1" in err) if limit != "ten" else ("expected a whole number, got 'ten'" in err)


async def test_notify_test_needs_only_the_sinks_own_secrets(aiohttp_server, db_path, tmp_path, capsys, monkeypatch):
    """By hand, outside the service, an operator has the Slack URL but not the other credentials."""
    from tests.fakes.slack import FakeSlack

    slack = FakeSlack().script(["200"])
    server = await aiohttp_server(slack.app())
    monkeypatch.setenv("FLOWFORGED_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    config = _config(
        tmp_path,
        db_path,
        "sources: {github: {type: github, webhook_secret: {secret: github-webhook}}}\n"
        "sinks: {team-slack: {type: slack, webhook_url: {secret: slack-webhook}}}\n",
    )
    argv = ["notify-test", "team-slack", "-c", config]
    assert await asyncio.to_thread(cli.main, argv) == 1
    assert "sinks.team-slack.webhook_url: secret 'slack-webhook' not found" in capsys.readouterr().err
    monkeypatch.setenv("FLOWFORGED_SECRET_SLACK_WEBHOOK", str(server.make_url(slack.path)))
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert capsys.readouterr().out.strip() == "team-slack: sent: ok"
    assert len(slack.messages) == 1


def test_notify_test_names_the_variable_of_a_missing_env_secret(db_path, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TEAM_SLACK_URL", raising=False)
    config = _config(tmp_path, db_path, "sinks: {team-slack: {type: slack, webhook_url: {env: TEAM_SLACK_URL}}}\n")
    assert cli.main(["notify-test", "team-slack", "-c", config]) == 1
    err = capsys.readouterr().err
    assert "sinks.team-slack.webhook_url: secret 'TEAM_SLACK_URL' not found (give it in $TEAM_SLACK_URL)" in err
    assert "FLOWFORGED_SECRET_" not in err
