"""/metrics of a running daemon: promtool accepts it, a real Prometheus scrapes it, a restart keeps it."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import aiohttp
import pytest

from tests.conftest import base_config, github_headers, github_run, gitlab_headers, gitlab_pipeline
from tests.daemon import DaemonProcess
from tests.prom import prometheus_server, promtool, query, value, wait_for_query

pytestmark = pytest.mark.reliability
GH = "octo-org/octo-repo/.github/workflows/test.yml"


def stamp(offset: float = 0.0, gitlab: bool = False) -> str:
    """Recent times: the metrics drop pipelines that have not run for stale_after (the fixtures are old)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC" if gitlab else "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


async def feed(url: str) -> None:
    """Real fixture payloads, varied: success then failure on master, a GitLab pipeline, a redelivery."""
    async with aiohttp.ClientSession() as session:
        for n, conclusion in enumerate(("success", "failure")):
            body = json.dumps(
                github_run(conclusion, run_id=500 + n, created_at=stamp(-600 + n * 60), updated_at=stamp(-300 + n * 60))
            ).encode()
            headers = github_headers(body, delivery=f"m-{n}")
            for _ in range(2):  # the second time a duplicate
                async with session.post(f"{url}/hooks/github", data=body, headers=headers) as response:
                    assert response.status in (200, 202)
        body = json.dumps(gitlab_pipeline("failed", finished_at=stamp(-30, gitlab=True))).encode()
        async with session.post(f"{url}/hooks/gitlab", data=body, headers=gitlab_headers()) as response:
            assert response.status == 202
        async with session.post(f"{url}/hooks/github", data=b"{}", headers={"X-Hub-Signature-256": "bad"}) as r:
            assert r.status == 401


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310 - 127.0.0.1
        return response.read().decode()


@pytest.fixture
def daemon(tmp_path):
    process = DaemonProcess(tmp_path, base_config(tmp_path / "flowforge.db"))
    yield process
    process.close()


async def test_promtool_accepts_the_metrics_of_a_daemon_fed_real_payloads(daemon):
    daemon.start()
    await feed(daemon.url)
    text = scrape(daemon.url)
    result = promtool("check", "metrics", stdin=text.encode())
    assert result.returncode == 0, result.stdout + result.stderr
    # By default every pipeline counts its runs by status, and keeps no histogram (metrics.detail).
    labels = f'pipeline="{GH}",source="github",status="failed"'
    line = f"flowforge_pipeline_runs_finished_total{{{labels}}} 1.0"
    assert line in text.replace(", ", ",")
    assert f'flowforge_pipeline_run_time_seconds_count{{pipeline="{GH}",source="github"}} 2.0' in text
    assert "flowforge_pipeline_run_duration_seconds_bucket" not in text
    assert 'flowforge_webhook_deliveries_total{event="workflow_run",outcome="duplicate",source="github"} 2.0' in text
    assert 'flowforge_webhook_deliveries_total{event="unknown",outcome="rejected",source="github"} 1.0' in text


async def test_prometheus_scrapes_the_daemon_and_series_survive_a_restart(daemon, tmp_path):
    daemon.start()
    await feed(daemon.url)
    async with prometheus_server(tmp_path, [f"127.0.0.1:{daemon.port}"]) as prom:
        runs = f'flowforge_pipeline_runs_finished_total{{pipeline="{GH}", status=~"success|failed"}}'
        await wait_for_query(prom, runs, lambda r: sorted(value(r)) == [1, 1])
        status = f'flowforge_pipeline_status{{pipeline="{GH}", branch="master"}}'
        await wait_for_query(prom, status, lambda r: [s["metric"]["status"] for s in r] == ["failed"])
        gitlab = 'flowforge_pipeline_status{source="gitlab", pipeline="gitlab-org/gitlab-test", status="failed"}'
        await wait_for_query(prom, gitlab, lambda r: value(r) == [1])
        accepted = 'sum(flowforge_webhook_deliveries_total{source="github", outcome="accepted"})'
        await wait_for_query(prom, accepted, lambda r: value(r) == [2])

        before = scrape(daemon.url)
        assert daemon.kill(signal.SIGTERM) == 0
        daemon.start()
        after = scrape(daemon.url)  # first scrape after READY=1: already rebuilt from the store
        for line in before.splitlines():
            if line.startswith(
                (
                    "flowforge_pipeline_runs_finished_total",
                    "flowforge_pipeline_status{",
                    "flowforge_pipeline_last_finished_timestamp_seconds",
                )
            ):
                assert line in after, line
        # Prometheus sees no counter reset across the restart.
        restarted = "changes(process_start_time_seconds[5m])"
        await wait_for_query(prom, restarted, lambda r: value(r) == [1], within=20)  # scraped since the restart
        assert value(await query(prom, f"sum(resets({runs}[5m]))")) == [0]
