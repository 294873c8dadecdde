"""The command line: secret set/delete, runs (table and JSON, filters)."""

from __future__ import annotations

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
    assert [(r["run_id"], r["branch"], r["transition"]) for r in rows] == [("3", "dev", "broken"),
                                                                           ("2", "master", "broken")]
    assert {"id", "source", "pipeline", "run_id", "attempt", "branch", "sha", "status", "provider_status", "url",
            "started_at", "finished_at", "duration_seconds", "transition"} <= set(rows[0])
    assert cli.main(["-c", str(config), "runs", "--branch", "master"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "SOURCE", "PIPELINE", "BRANCH", "RUN", "STATUS", "TRANSITION", "FINISHED",
                                "DURATION"]
    assert [line.split()[4] for line in table[1:]] == ["2#1", "1#1"]


def test_reindex_command(db_path, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage: {{path: {db_path}}}\nsources: {{github: {{type: github, webhook_secret: {{secret: gh}}}}}}\n")
    assert cli.main(["-c", str(config), "reindex"]) == 0  # works without the secret's value
    assert "reindexed 0 deliveries" in capsys.readouterr().out
    assert sqlite3.connect(db_path).execute("PRAGMA user_version").fetchone()[0] >= 1
