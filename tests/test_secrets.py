"""Secrets: an empty one refuses start like a missing one; `secret set` on a host without a keyring."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from flowforged import cli
from flowforged.errors import ConfigError
from flowforged.secrets import SecretContext
from flowforged_plugins import github as github_plugin
from tests.conftest import ROOT, base_config, make_config
from tests.memkeyring import MemoryKeyring


def _problems(data, context: SecretContext) -> dict[str, str]:
    from flowforged import config

    with pytest.raises(ConfigError) as raised:
        config.validate(data, context)
    return dict(raised.value.problems)


def test_an_empty_webhook_secret_refuses_start_instead_of_accepting_an_empty_key_signature(tmp_path):
    data = base_config(tmp_path / "db")
    data["sources"]["github"]["webhook_secret"] = {"secret": "github-webhook"}
    context = SecretContext(environ={"FLOWFORGED_SECRET_GITHUB_WEBHOOK": ""}, use_keyring=False)
    try:
        cfg = make_config(data, {"FLOWFORGED_SECRET_GITHUB_WEBHOOK": ""})
    except ConfigError:
        pass
    else:  # what loading an empty secret used to mean: anyone who signs with "" is let in
        provider = github_plugin.GitHubProvider("github", cfg.source_configs["github"])
        body = b'{"action": "completed"}'
        headers = {"X-Hub-Signature-256": github_plugin.sign("", body), "X-GitHub-Event": "workflow_run"}
        provider.verify(headers, body, 0.0)
        pytest.fail("an empty webhook secret loaded, and a signature made with an empty key was accepted")
    found = _problems(data, context)
    assert (
        found["sources.github.webhook_secret"] == "secret 'github-webhook' is empty ($FLOWFORGED_SECRET_GITHUB_WEBHOOK)"
    )


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_every_kind_of_empty_secret_names_its_key(tmp_path, blank):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gitlab-webhook").write_text(blank)
    keyring = MemoryKeyring()
    keyring.store.clear()
    keyring.set_password("flowforged", "api-token", blank)
    data = base_config(tmp_path / "db")
    data["sources"]["github"]["webhook_secret"] = blank
    data["sources"]["gitlab"]["webhook_secret"] = {"secret": "gitlab-webhook"}
    data["sinks"]["team"] = {"type": "slack", "webhook_url": {"env": "SLACK_URL"}}
    environ = {"CREDENTIALS_DIRECTORY": str(creds), "SLACK_URL": blank}
    context = SecretContext(environ=environ, keyring=keyring)
    found = _problems(data, context)
    assert found["sources.github.webhook_secret"] == "secret is empty (written inline)"
    assert found["sources.gitlab.webhook_secret"] == "secret 'gitlab-webhook' is empty ($CREDENTIALS_DIRECTORY)"
    assert found["sinks.team.webhook_url"] == "environment variable SLACK_URL is empty"
    data["api"]["token"] = {"secret": "api-token"}
    found = _problems(data, context)  # the top-level sections are checked before the plugins'
    assert found == {"api.token": "secret 'api-token' is empty (keyring service 'flowforged')"}


def test_check_config_refuses_an_empty_secret_and_names_the_key(tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(
        "sources:\n  github: {type: github, webhook_secret: {secret: github-webhook}}\n"
        f"storage: {{path: {tmp_path / 'db'}}}\n"
    )
    monkeypatch.setenv("FLOWFORGED_SECRET_GITHUB_WEBHOOK", "")
    monkeypatch.setenv("FLOWFORGED_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sources.github.webhook_secret: secret 'github-webhook' is empty" in err


def test_lenient_commands_still_read_a_database_without_the_secrets(tmp_path):
    data = base_config(tmp_path / "db")
    data["sources"]["github"]["webhook_secret"] = {"secret": "github-webhook"}
    from flowforged import config

    cfg = config.validate(data, SecretContext(environ={}, use_keyring=False, lenient=True))
    assert cfg.source_configs["github"].webhook_secret.origin == "missing"


class ForgetfulKeyring(KeyringBackend):
    """A backend that says yes and keeps nothing, like keyring's null backend but not named so."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        pass

    def delete_password(self, service: str, username: str) -> None:
        raise PasswordDeleteError(username)


def secret_set(name: str, value: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """`flowforged secret set` as a user runs it on a server: no desktop session, so no D-Bus."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "FLOWFORGED_"))}
    env.pop("XDG_RUNTIME_DIR", None)  # where a session bus would be found without DBUS_SESSION_BUS_ADDRESS
    return subprocess.run(
        [sys.executable, "-m", "flowforged", "secret", "set", name],
        input=value,
        capture_output=True,
        text=True,
        env=env | environ,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        (None, "keyring.backends.SecretService.Keyring cannot work here"),
        ("keyring.backends.SecretService.Keyring", "keyring.backends.SecretService.Keyring cannot work here"),
        ("keyring.backends.null.Keyring", "FLOWFORGED_KEYRING_BACKEND=keyring.backends.null.Keyring stores nothing"),
        ("keyring.backends.fail.Keyring", "FLOWFORGED_KEYRING_BACKEND=keyring.backends.fail.Keyring stores nothing"),
        ("tests.test_secrets.ForgetfulKeyring", "tests.test_secrets.ForgetfulKeyring did not keep it"),
    ],
)
def test_secret_set_on_a_headless_host_says_what_to_do_and_never_claims_it_stored(backend, reason):
    environ = {"FLOWFORGED_KEYRING_BACKEND": backend} if backend else {}
    done = secret_set("github-webhook", "s3cret-value-9f\n", **environ)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "stored" not in done.stdout, done.stderr
    assert done.stderr.startswith(f"error: no usable keyring: {reason}")
    assert "systemd-creds encrypt --name=github-webhook" in done.stderr
    assert "LoadCredentialEncrypted=github-webhook" in done.stderr
    assert "$FLOWFORGED_SECRET_GITHUB_WEBHOOK" in done.stderr
    assert "keyrings.alt.file.PlaintextKeyring" in done.stderr
    assert "s3cret-value" not in done.stdout + done.stderr


def test_secret_set_with_a_working_backend_stores_and_says_so():
    done = secret_set(
        "github-webhook", "s3cret-value-9f\n", FLOWFORGED_KEYRING_BACKEND="tests.memkeyring.MemoryKeyring"
    )
    # The memory keyring lives in that process only: "stored" means it was read back there.
    assert done.returncode == 0, done.stderr
    assert "stored secret 'github-webhook'" in done.stdout and "s3cret-value" not in done.stdout
