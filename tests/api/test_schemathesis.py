"""schemathesis, every check, against the daemon's application served on 127.0.0.1 with a store that
has runs, jobs, events, notifications and a silence in it, from the document the daemon serves at
/api/v1/openapi.json: the API does what its document says, for inputs nobody wrote by hand.

The event stream is left out: it answers for as long as the client listens, which a fuzzer cannot
tell from a hang (tests/api/test_stream.py covers it).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from flowforged.api.auth import FailedTokens
from tests.api.client import start
from tests.conftest import API_TOKEN

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Per operation and phase: about ten seconds on two cores. Set it higher to search longer.
EXAMPLES = int(os.environ.get("FLOWFORGE_FUZZ_EXAMPLES", "25"))
# A schema-valid request may still be one the source's provider cannot honour (a forced cancel of a
# GitLab pipeline), or a silence whose end has passed: 422, as the document says, not 400.
CONFIG = """
[[operations]]
include-method = "POST"
include-path-regex = "^/(runs/[{]id[}]/(rerun|cancel)|pipelines/[{]id[}]/trigger|silences)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "422", "429"]
"""


async def test_schemathesis_finds_nothing(aiohttp_client, db_path, tmp_path):
    api = await start(aiohttp_client, db_path)
    await api.seed()
    await api.post("/silences", {"pipelines": ["octo-org/*"], "until": "2h"})
    api.operations.started = {"run_id": "555", "url": "https://github.com/octo-org/octo-repo/actions/runs/555"}
    # ignored_auth sends wrong tokens on purpose: the limit on guesses has its own tests.
    api.context.failed_tokens = FailedTokens(limit=10**9)
    document = api.client.make_url("/api/v1/openapi.json")
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        str(document),
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {API_TOKEN}",
        "--max-examples",
        str(EXAMPLES),
        "--exclude-path",
        "/events/stream",
        "--workers",
        "1",  # hypothesis describes its filters with ast.parse, which two threads can break on 3.11
        "--seed",
        os.environ.get("FLOWFORGE_FUZZ_SEED", "20261128"),
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--output-truncate",
        "false",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-20000:]
    assert API_TOKEN not in "".join(line for line in text.splitlines() if "Authorization" not in line)
