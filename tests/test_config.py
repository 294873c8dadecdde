"""Config validation: every problem with its key path."""

from __future__ import annotations

import pytest

from flowforged import cli, config
from flowforged.errors import ConfigError
from flowforged.secrets import Secret, SecretContext
from tests.conftest import ROOT, base_config, make_config
from tests.memkeyring import MemoryKeyring


def problems(data, environ=None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as raised:
        make_config(data, environ)
    return raised.value.problems


def test_the_example_config_is_valid_and_warns_about_inline_secrets():
    cfg = config.load(ROOT / "config.example.yaml", SecretContext(environ={}, use_keyring=False))
    assert set(cfg.source_configs) == {"github", "gitlab"}
    assert cfg.rules[0].on == ["broken", "still_failing", "fixed"]  # `on:` is not the boolean True
    assert "sources.github.webhook_secret: secret written inline" in " ".join(cfg.warnings)
    assert cfg.storage.path == (ROOT / "var" / "flowforge.db")


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    data = base_config(tmp_path / "db")
    del data["sources"]["github"]["webhook_secret"]
    data["sources"]["gitlab"]["poll_interval"] = "soon"
    data["sources"]["other"] = {"type": "circleci"}
    data["server"] = {"listen": "nowhere", "max_body_bytes": -1}
    data["rules"] = [{"name": "r", "sinks": ["nope"], "on": ["exploded"]}]
    data["storage"]["colour"] = "blue"
    found = dict(problems(data))
    assert found["server.listen"] == "expected host:port, got 'nowhere'"
    assert found["server.max_body_bytes"].startswith("Input should be greater than 0")
    assert found["storage.colour"] == "unknown key"
    assert "rules.0.on" in found
    # The plugin sections are checked once the top level is valid: fix it and look again.
    data["server"] = {"listen": "127.0.0.1:0"}
    del data["storage"]["colour"]
    data["rules"] = [{"name": "r", "sinks": ["nope"]}]
    found = dict(problems(data))
    assert found["sources.github.webhook_secret"].startswith("missing")
    assert found["sources.gitlab.poll_interval"] == "not a duration: 'soon' (use e.g. 30s, 15m, 4h, 7d)"
    known = "argocd, bitbucket, buildkite, github, gitlab, jenkins, tekton"
    assert found["sources.other.type"] == f"unknown type 'circleci' (known: {known})"
    assert found["rules.0.sinks"] == "no sink named 'nope' in sinks"


def test_secret_lookup_order_credentials_keyring_environment(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    keyring = MemoryKeyring()
    keyring.store.clear()
    environ = {"CREDENTIALS_DIRECTORY": str(creds), "FLOWFORGED_SECRET_GITHUB_WEBHOOK": "from-env"}
    context = SecretContext(environ=environ, keyring=keyring)
    assert context.lookup("github-webhook").get() == "from-env"
    keyring.set_password("flowforged", "github-webhook", "from-keyring")
    assert context.lookup("github-webhook").get() == "from-keyring"
    (creds / "github-webhook").write_text("from-credential\n")
    found = context.lookup("github-webhook")
    assert (found.get(), found.origin) == ("from-credential", "credential")


def test_a_missing_secret_names_the_key_and_where_it_looked_never_a_value(tmp_path):
    data = base_config(tmp_path / "db")
    data["sources"]["github"]["webhook_secret"] = {"secret": "github-webhook"}
    data["api"]["token"] = {"env": "FF_API_TOKEN"}
    found = dict(problems(data))
    assert found["api.token"] == "environment variable FF_API_TOKEN is not set"
    data["api"]["token"] = "x" * 8
    found = dict(problems(data))
    assert found["sources.github.webhook_secret"] == (
        "secret 'github-webhook' not found (looked in $FLOWFORGED_SECRET_GITHUB_WEBHOOK)"
    )


def test_secret_values_do_not_show_in_repr_or_str():
    secret = Secret("hunter2-very-secret", "keyring", "db")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    cfg = make_config(base_config("/tmp/x.db"))
    assert "gh-webhook-secret" not in repr(cfg.source_configs)


def test_check_config_exits_2_and_lists_every_problem(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("server: {listen: bad}\nstorage: {raw_retention_days: -1}\n")
    assert cli.main(["-c", str(path), "check-config"]) == 2
    err = capsys.readouterr().err
    assert "server.listen: expected host:port, got 'bad'" in err
    assert "storage.raw_retention_days: Input should be greater than or equal to 0" in err


def test_check_config_on_yaml_that_does_not_parse(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("server: [unclosed\n")
    assert cli.main(["-c", str(path), "check-config"]) == 2
    assert "not valid YAML at line 2" in capsys.readouterr().err


def test_config_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWFORGED_CONFIG", str(tmp_path / "nope.yaml"))
    assert config.default_path(None) == str(tmp_path / "nope.yaml")
    assert config.default_path("explicit.yaml") == "explicit.yaml"
    monkeypatch.delenv("FLOWFORGED_CONFIG")
    assert config.default_path(None) == "/etc/flowforged/config.yaml"


@pytest.mark.parametrize(
    "text,seconds",
    [("90", 90), ("90s", 90), ("15m", 900), ("4h", 14400), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25)],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds
