"""The unit file: what the README's "Run it as a service" installs, and it passes `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from flowforged import config
from flowforged.secrets import SecretContext
from flowforged.systemd import Notifier
from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "flowforged.service"
UNIT_PATH = "/etc/systemd/system/flowforged.service"


def service_section() -> str:
    """The README's "Run it as a service" section: what an operator follows."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Run it as a service\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def directives(key: str) -> list[str]:
    prefix = key + "="
    return [line[len(prefix) :] for line in UNIT.read_text().splitlines() if line.startswith(prefix)]


def test_unit_has_notify_watchdog_state_credentials_limits_and_hardening():
    settings = {
        "Type": "notify",
        "WatchdogSec": "30s",
        "StateDirectory": "flowforged",
        "StateDirectoryMode": "0700",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "LimitNOFILE": "65536",
        "MemoryMax": "512M",
    }
    assert {key: directives(key) for key in settings} == {key: [value] for key, value in settings.items()}
    assert directives("LoadCredentialEncrypted")


def test_reload_checks_the_file_then_signals_the_daemon():
    start = directives("ExecStart")[0].split()
    assert start[1:] == ["run", "-c", "/etc/flowforged/config.yaml"]
    assert directives("ExecReload") == [
        f"{start[0]} check-config -c /etc/flowforged/config.yaml",
        "/bin/kill -HUP $MAINPID",
    ]


def test_unit_runs_what_the_readme_installs_and_loads_the_credentials_the_readme_makes():
    section = service_section()
    venv = re.search(r"python3 -m venv (\S+)", section)
    assert venv is not None, "the README installs flowforged into a virtual environment"
    assert directives("ExecStart")[0].split()[0] == f"{venv[1]}/bin/flowforged"
    assert re.search(rf"{re.escape(venv[1])}/bin/pip install ", section)
    assert f"install -m 0644 systemd/flowforged.service {UNIT_PATH}" in section
    for credential in directives("LoadCredentialEncrypted"):
        name, _, path = credential.partition(":")
        assert f"systemd-creds encrypt --name={name} - {path}" in section, name
    assert "systemctl enable --now flowforged" in section


def test_the_readme_config_loads_with_the_units_credentials(tmp_path: Path):
    """The config the README puts in /etc/flowforged resolves every secret from the unit's credentials."""
    blocks = re.findall(r"```yaml\n(.*?)```", service_section(), re.S)
    assert blocks, "the README shows the service's config"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for credential in directives("LoadCredentialEncrypted"):
        (credentials / credential.partition(":")[0]).write_text(f"value-of-{credential[:12]}\n")
    context = SecretContext(environ={"CREDENTIALS_DIRECTORY": str(credentials)}, use_keyring=False)
    path = tmp_path / "config.yaml"
    path.write_text(blocks[0])
    loaded = config.load(path, context)
    assert loaded.server.listen.startswith("127.0.0.1:")  # behind the TLS proxy of the README
    assert str(loaded.storage.path).startswith("/var/lib/flowforged/")  # the unit's StateDirectory
    assert {s.webhook_secret.origin for s in loaded.source_configs.values()} == {"credential"}


def test_unit_passes_systemd_analyze_verify_on_a_machine_set_up_as_the_readme_says(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    units = Path("/usr/lib/systemd/system")
    if analyze is None or not (units / "sysinit.target").exists():
        if os.environ.get("FLOWFORGE_REQUIRE_TOOLS"):
            pytest.fail("systemd-analyze or the system's units are not installed (FLOWFORGE_REQUIRE_TOOLS is set)")
        pytest.skip("systemd-analyze is not installed")
    # A root laid out as the README's steps leave a host: the OS's own units and /bin/kill (merged
    # /usr, as on Debian and Ubuntu), the venv's console script, the unit where the README puts it.
    root = tmp_path / "root"
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    venv = re.search(r"python3 -m venv (\S+)", service_section())
    assert venv is not None
    script = root / venv[1].lstrip("/") / "bin" / "flowforged"
    script.parent.mkdir(parents=True)
    # What pip writes for the [project.scripts] entry point.
    script.write_text(f"#!{venv[1]}/bin/python\nimport sys\nfrom flowforged.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    installed = root / UNIT_PATH.lstrip("/")
    installed.parent.mkdir(parents=True)
    shutil.copy(UNIT, installed)
    result = subprocess.run([analyze, "verify", f"--root={root}", UNIT_PATH], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "flowforged.service" not in result.stderr  # no warnings about our unit
    # The check has teeth: the same root without the executable fails.
    script.unlink()
    result = subprocess.run([analyze, "verify", f"--root={root}", UNIT_PATH], capture_output=True, text=True)
    assert result.returncode != 0 and "is not executable" in result.stderr


def test_notifier_understands_abstract_sockets_and_watchdog_pid():
    notifier = Notifier(
        {"NOTIFY_SOCKET": "@flowforge-test", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.address == "\0flowforge-test"
    assert notifier.watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_notify_never_blocks_when_the_managers_queue_is_full(tmp_path: Path):
    """sd_notify runs on the event loop: a manager slow to read must not stop the daemon (a reload
    sends two messages, so a blocking send hung the daemon after a few reloads)."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))  # never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    sender = threading.Thread(target=lambda: [notifier.notify("STATUS=x") for _ in range(200)], daemon=True)
    sender.start()
    sender.join(timeout=30)
    receiver.close()
    assert not sender.is_alive(), "notify blocked on a full queue"
