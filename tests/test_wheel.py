"""The package as users get it: the wheel built from this tree, installed into a fresh virtual
environment outside it, finds its built-in plugins through their entry points and takes a webhook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import GITHUB_SECRET, ROOT, github_headers, github_run
from tests.daemon import free_port

pytestmark = pytest.mark.reliability

PROVIDERS = {"github", "gitlab", "buildkite", "jenkins"}
SINKS = {"log", "slack", "email", "webhook"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`flowforged` of a fresh venv where the built wheel, and only it (with its dependencies), is installed."""
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so that the build leaves nothing in the tree (build/, *.egg-info).
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "var", "build", "dist", "*.egg-info", "__pycache__", ".*cache"),
    )
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = dist.glob("flowforged-*.whl")
    env = work / "venv"
    venv.create(env, with_pip=True)
    subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env / "bin" / "flowforged"


def environ(extra: dict[str, str]) -> dict[str, str]:
    """Outside the source tree and without its variables: what the venv has is all there is."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"FLOWFORGED_KEYRING_BACKEND": "keyring.backends.fail.Keyring"} | extra


def run_env(executable: Path, extra: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(executable), *args], cwd=cwd, env=environ(extra), capture_output=True, text=True, check=True, timeout=60
    )


def start_env(executable: Path, extra: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[bytes]:
    log = (cwd / "daemon.log").open("wb")
    return subprocess.Popen([str(executable), *args], cwd=cwd, env=environ(extra), stdout=log, stderr=subprocess.STDOUT)


def post_when_up(url: str, body: bytes, headers: dict[str, str], daemon: subprocess.Popen[bytes]) -> tuple[int, str]:
    """POST once the daemon listens (it answers /healthz); fail if it exits first."""
    health = url.split("/hooks/")[0] + "/healthz"
    deadline = time.monotonic() + 60
    while True:
        assert daemon.poll() is None, f"flowforged exited with {daemon.returncode}"
        try:
            with urllib.request.urlopen(health, timeout=5):
                break
        except OSError:
            assert time.monotonic() < deadline, "flowforged did not start listening"
            time.sleep(0.1)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_wheel_holds_every_module_of_the_source_tree(installed):
    wheel = next(installed.parents[2].glob("dist/flowforged-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tree = {str(p.relative_to(ROOT)) for p in (ROOT / "flowforged").rglob("*.py")}
    tree |= {"flowforged_plugins/" + str(p.relative_to(ROOT / "plugins")) for p in (ROOT / "plugins").rglob("*.py")}
    assert tree - names == set()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = flowforged_plugins." in text for name in PROVIDERS | SINKS)


def test_installed_wheel_checks_a_config_and_takes_a_signed_webhook(installed, tmp_path):
    outside = tmp_path / "elsewhere"  # not the source tree, not a folder where flowforged could be imported from
    outside.mkdir()
    python = installed.parent / "python"
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import json, flowforged; from flowforged import plugin; "
            "print(json.dumps([flowforged.__file__, sorted(plugin.providers()), sorted(plugin.sinks())]))",
        ],
        cwd=outside,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module, providers, sinks = json.loads(found)
    assert module.startswith(str(installed.parents[1]))  # the venv's copy, not this tree's
    assert set(providers) >= PROVIDERS and set(sinks) >= SINKS  # found through the entry points

    port = free_port()
    config = outside / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"listen": f"127.0.0.1:{port}"},
                "storage": {"path": "flowforge.db"},
                "sources": {
                    "github": {"type": "github", "webhook_secret": {"secret": "github-webhook"}},
                    "ci": {"type": "buildkite", "webhook_secret": {"secret": "github-webhook"}},
                },
                "sinks": {"console": {"type": "log"}},
                "rules": [{"name": "all", "sinks": ["console"]}],
            }
        )
    )
    secret = {"FLOWFORGED_SECRET_GITHUB_WEBHOOK": GITHUB_SECRET}
    checked = run_env(installed, secret, "check-config", "-c", str(config), cwd=outside)
    assert checked.stdout.startswith(f"{config}: ok (2 sources, 1 sinks, 1 rules)"), checked.stderr

    daemon = start_env(installed, secret, "run", "-c", str(config), cwd=outside)
    try:
        body = json.dumps(github_run("failure", run_id=4242)).encode()
        status, answer = post_when_up(f"http://127.0.0.1:{port}/hooks/github", body, github_headers(body), daemon)
        assert status == 202, answer
        listed = run_env(installed, secret, "runs", "--json", "-c", str(config), cwd=outside)
        [row] = json.loads(listed.stdout)
        assert (row["source"], row["run_id"], row["status"]) == ("github", "4242", "failed")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
