"""The README's first steps work as written: the example config, the signed curl, `flowforged runs`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.reliability


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block


def test_example_config_curl_and_runs(tmp_path):
    if not (shutil.which("curl") and shutil.which("openssl")):
        pytest.fail("the README's example needs curl and openssl")
    config = yaml.safe_load((ROOT / "config.example.yaml").read_text().replace("on: [", "'on': ["))
    config["storage"]["path"] = str(tmp_path / "flowforge.db")
    daemon = DaemonProcess(tmp_path, config)
    try:
        daemon.start()
        sent = subprocess.run(
            [str(ROOT / "examples" / "send-webhook.sh"), f"{daemon.url}/hooks/github"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(sent.stdout)["status"] == "accepted"
        listed = subprocess.run(
            [sys.executable, "-m", "flowforged", "-c", str(daemon.config_path), "runs", "--json"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        [run] = json.loads(listed.stdout)
        assert (run["pipeline"], run["status"], run["transition"]) == (
            "octo-org/octo-repo/.github/workflows/ci.yml",
            "failed",
            "broken",
        )
        deadline = time.monotonic() + 10  # the example's log sink tells the operator
        while '"event": "pipeline broken"' not in daemon.output():
            assert time.monotonic() < deadline, daemon.output()
            time.sleep(0.05)
    finally:
        daemon.close()
