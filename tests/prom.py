"""Real Prometheus tooling for tests: promtool, a throwaway Prometheus server, and runs for Metrics.

Tests that need /usr/bin/promtool or /usr/bin/prometheus skip when the binary is missing, unless
FLOWFORGE_REQUIRE_PROMETHEUS=1 (as in CI), where a missing binary is a failure: a green run must not
hide that nothing was checked.

    async with prometheus_server(tmp_path, targets=[f"127.0.0.1:{port}"]) as prom:
        await wait_for_query(prom, 'flowforge_build_info', lambda result: len(result) == 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from flowforged.metrics import NOTIFICATION_OUTCOMES, POLL_OUTCOMES, WEBHOOK_OUTCOMES, Metrics
from flowforged.model import RunEvent, seconds_between
from flowforged.run_totals import RUN_STATUSES
from flowforged_plugins import github, gitlab
from tests.conftest import ROOT, fixture
from tests.daemon import free_port

REQUIRE_ENV = "FLOWFORGE_REQUIRE_PROMETHEUS"
PROMETHEUS = ROOT / "contrib" / "prometheus"
DASHBOARD = ROOT / "contrib" / "grafana" / "flowforge.json"
JOB = "flowforge"  # the job name of contrib/prometheus/prometheus.yml, which the alert rules match


def require(binary: str) -> str:
    """The path of a Prometheus binary; skip the test without it, or fail when it is required."""
    # /usr/bin explicitly: Debian's package puts them there, and a test's PATH may not include it.
    for path in (shutil.which(binary), f"/usr/bin/{binary}"):
        if path and os.access(path, os.X_OK):
            return path
    message = f"{binary} is not installed (Debian: apt-get install prometheus)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_ENV}=1")
    pytest.skip(message)


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; the result's stdout and stderr are text, for assertion messages."""
    return subprocess.run(
        [require("promtool"), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _write_config(
    tmp_path: Path,
    targets: Sequence[str],
    rule_files: Iterable[Path],
    job: str,
    metrics_path: str,
    interval: str,
) -> Path:
    home = tmp_path / f"prometheus-{time.monotonic_ns()}"
    home.mkdir()
    job_config = {
        "job_name": job,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": list(targets)}],
    }
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [job_config],
    }
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    return home


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def prometheus_server(
    tmp_path: Path,
    targets: Sequence[str],
    rule_files: Iterable[Path] = (),
    *,
    job: str = JOB,
    metrics_path: str = "/metrics",
    interval: str = "1s",
    ready_timeout: float = 30.0,
) -> AsyncIterator[str]:
    """A real Prometheus scraping `targets` every `interval`; yields its base URL, stops it after."""
    binary = require("prometheus")
    home = _write_config(tmp_path, targets, rule_files, job, metrics_path, interval)
    url = f"http://127.0.0.1:{free_port()}"
    log = (home / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await _wait_ready(url, process, time.monotonic() + ready_timeout, home / "prometheus.log")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def _wait_ready(url: str, process: asyncio.subprocess.Process, deadline: float, log: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)  # polling interval while it starts, not a wait for a result
    raise TimeoutError(f"prometheus not ready in time:\n{_tail(log)}")


async def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API; the `result` vector."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
    if body.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]


async def wait_for_query(
    url: str, expr: str, condition: Callable[[list[dict[str, Any]]], bool], within: float = 30.0
) -> list[dict[str, Any]]:
    """Query until `condition(result)` holds; fail with the last result after `within` seconds."""
    deadline = time.monotonic() + within
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = await query(url, expr)
        if condition(result):
            return result
        await asyncio.sleep(0.2)  # Prometheus scrapes every second; ask again soon after
    raise AssertionError(f"{expr!r} never met the condition within {within}s; last result: {result}")


async def alert_rules(url: str) -> list[dict[str, Any]]:
    """The alerting rules Prometheus has loaded, with their health and last evaluation."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/api/v1/rules", params={"type": "alert"}) as response:
            body = await response.json()
    return [rule for group in body["data"]["groups"] for rule in group["rules"]]


async def wait_for_rules(url: str, within: float = 30.0) -> list[dict[str, Any]]:
    """The alerting rules once every one has been evaluated (health is "unknown" until then)."""
    deadline = time.monotonic() + within
    rules: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rules = await alert_rules(url)
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return rules
        await asyncio.sleep(0.2)
    raise AssertionError(f"the rules were not all evaluated within {within}s: {rules}")


def value(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


# --- contrib/: the alert rules and the dashboard ----------------------------------------------------


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(alert name, PromQL) for every rule of contrib/prometheus/alerts.yml."""
    for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title or $variable, PromQL with Grafana's variables) for every query of the dashboard."""
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["definition"]


# --- runs as the core hands them to Metrics, derived from the real fixture payloads ----------------

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC).timestamp()  # a clock for Metrics just after those runs


def run_of(event: RunEvent, **changes: Any) -> dict[str, Any]:
    """The mapping Metrics.run_finished() takes, from a normalized run event."""
    run = {
        "source": event.source,
        "pipeline": event.pipeline,
        "branch": event.branch,
        "default_branch": event.default_branch,
        "status": str(event.status),
        "finished_at": event.finished_at,
        "duration_seconds": seconds_between(event.started_at, event.finished_at),
        "queue_seconds": seconds_between(event.created_at, event.started_at),
    }
    run.update(changes)
    return run


def github_run(
    conclusion: str = "success",
    *,
    created: str = "2026-11-27T08:40:00Z",
    started: str = "2026-11-27T08:41:30Z",
    finished: str = "2026-11-27T09:01:13Z",
    branch: str | None = None,
    source: str = "github",
    **changes: Any,
) -> dict[str, Any]:
    """workflow_run.completed.success.json, varied (conclusion, branch, times): a finished run."""
    payload = fixture("github/webhooks/workflow_run.completed.success.json")
    run = payload["workflow_run"]
    run.update(conclusion=conclusion, created_at=created, run_started_at=started, updated_at=finished)
    if branch is not None:
        run["head_branch"] = branch
    return run_of(github.normalize_run(source, run, payload.get("repository")), **changes)


def gitlab_run(
    status: str = "success",
    *,
    finished: str = "2026-11-27 09:02:00 UTC",
    ref: str | None = None,
    source: str = "gitlab",
    **changes: Any,
) -> dict[str, Any]:
    """pipeline_hook.success.json, varied: GitLab's hook carries duration and queued_duration itself."""
    payload = fixture("gitlab/webhooks/pipeline_hook.success.json")
    attrs = payload["object_attributes"]
    attrs.update(status=status, detailed_status=status, finished_at=finished)
    if ref is not None:
        attrs["ref"] = ref
    event = gitlab.normalize_pipeline(source, payload)
    return run_of(event, duration_seconds=attrs.get("duration"), queue_seconds=attrs.get("queued_duration"), **changes)


def everything(metrics: Metrics) -> Metrics:
    """One report of each kind, so that every family has samples."""
    for status in RUN_STATUSES:
        metrics.run_finished(github_run({"failed": "failure"}.get(status, status)))
    metrics.run_finished(gitlab_run("failed"))
    metrics.run_finished(github_run("failure", branch="feature/login", finished="2026-11-27T09:10:00Z"))
    for outcome in WEBHOOK_OUTCOMES:
        metrics.webhook("github", "workflow_run", outcome, 0.004)
    for outcome in POLL_OUTCOMES:
        metrics.poll_request("gitlab", outcome)
    metrics.rate_limit_remaining("github", 4990, quota=5000, reset_at=NOW + 3600)
    metrics.events_stored("github", "webhook", 2)
    metrics.events_stored("gitlab", "poll")
    for outcome in NOTIFICATION_OUTCOMES:
        metrics.notification("team-slack", outcome)
    metrics.outbox_depth_by_state({"pending": 2, "dead": 1, "sent": 40})
    metrics.notification_latency(1.5)
    return metrics


def samples(exposition: bytes | str, name: str | None = None) -> list[str]:
    """The sample lines of a text exposition, optionally those of one metric family."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    if name is None:
        return lines
    return [line for line in lines if line.split("{", 1)[0].split(" ", 1)[0] == name]
