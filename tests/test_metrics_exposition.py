"""/metrics at the size of a large organization: what every pipeline keeps by default, what only the
pipelines in `metrics.detail` have, and the served text against prometheus_client's own encoders."""

from __future__ import annotations

import gzip

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from flowforged import exposition
from flowforged.metrics import Metrics
from tests.prom import NOW, everything, github_run, promtool, samples

PIPELINES = 10_000
BRANCHES = ("main", "develop", "release")  # as bench/bigstore.py builds them: labels main and other
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def _organization(**options) -> Metrics:
    """10,000 pipelines x 3 branches, each having succeeded, failed and been cancelled."""
    metrics = Metrics(CollectorRegistry(), clock=lambda: NOW, version="1.2.3", process_metrics=False, **options)
    base = {**github_run(), "default_branch": "main"}
    for n in range(PIPELINES):
        pipeline = f"org{n % 97:02d}/repo{n:05d}/.github/workflows/ci.yml"
        for branch in BRANCHES:
            for status in ("success", "failed", "cancelled"):
                metrics.run_finished({**base, "pipeline": pipeline, "branch": branch, "status": status})
    return metrics


async def _scrape(aiohttp_client, metrics: Metrics) -> str:
    """As Prometheus scrapes: OpenMetrics first, gzip."""
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    client = await aiohttp_client(app)
    reply = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert reply.status == 200 and reply.headers["Content-Encoding"] == "gzip"
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    return await reply.text()


async def test_ten_thousand_pipelines_stay_under_a_hundred_thousand_samples_by_default(aiohttp_client):
    body = await _scrape(aiohttp_client, _organization())

    lines = samples(body)
    assert len(lines) < 100_000, len(lines)  # 490,000 when every pipeline had both histograms
    names = {line.split("{", 1)[0] for line in lines}
    # What the dashboard and the alert ask of every pipeline: still there for each of them.
    for family, per_pipeline in (
        ("flowforge_pipeline_status", 1),  # its default branch: what the alert watches
        ("flowforge_pipeline_status_since_timestamp_seconds", 1),
        ("flowforge_pipeline_last_finished_timestamp_seconds", 1),
        ("flowforge_pipeline_runs_finished_total", 4),  # by status
        ("flowforge_pipeline_run_time_seconds_sum", 1),  # the mean duration
        ("flowforge_pipeline_run_time_seconds_count", 1),
    ):
        assert len(samples(body, family)) == PIPELINES * per_pipeline, family
    assert 'branch="main",default_branch="true"' in samples(body, "flowforge_pipeline_status")[0]
    assert not {name for name in names if name.startswith("flowforge_pipeline_") and name.endswith("_bucket")}


async def test_the_pipelines_in_metrics_detail_have_their_histograms_and_branches(aiohttp_client):
    body = await _scrape(aiohttp_client, _organization(detail=["org01/*"]))

    chosen = {
        line.split('pipeline="', 1)[1].split('"', 1)[0]
        for line in samples(body)
        if line.startswith("flowforge_pipeline_") and "_bucket{" in line
    }
    assert chosen and all(pipeline.startswith("org01/") for pipeline in chosen)
    assert len(chosen) == len(range(1, PIPELINES, 97))
    other = [line for line in samples(body, "flowforge_pipeline_status") if 'branch="other"' in line]
    assert other and all('pipeline="org01/' in line for line in other)
    assert len(samples(body)) < 100_000


def test_the_served_text_reads_as_prometheus_clients_own_encoders_write_it():
    metrics = everything(Metrics(CollectorRegistry(), clock=lambda: NOW, version="1.2.3", detail=["*"]))
    for served, generic, parse in (
        (metrics.body(openmetrics=False), generate_latest(metrics.registry), parse_text),
        (metrics.body(openmetrics=True), generate_openmetrics(metrics.registry), parse_openmetrics),
    ):
        families = {
            f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
            for f in parse(served.decode())
        }
        expected = {
            f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
            for f in parse(generic.decode())
        }
        # Process metrics move between the two reads.
        assert {k: v for k, v in families.items() if k.startswith("flowforge")} == {
            k: v for k, v in expected.items() if k.startswith("flowforge")
        }
        assert {k for k in families if k.startswith("process")} == {k for k in expected if k.startswith("process")}
    assert promtool("check", "metrics", stdin=metrics.body(openmetrics=False)).returncode == 0


def test_gzip_only_when_the_scraper_accepts_it():
    assert exposition.accepts_gzip("gzip") and exposition.accepts_gzip("deflate, gzip;q=0.5")
    assert not exposition.accepts_gzip("gzip;q=0") and not exposition.accepts_gzip("identity")


def test_a_finished_run_and_a_pipeline_going_stale_change_the_cached_text():
    clock = [NOW]
    metrics = Metrics(CollectorRegistry(), clock=lambda: clock[0], stale_after=3600, process_metrics=False)
    metrics.run_finished(github_run("failure"))
    first = metrics.body(openmetrics=True, gzipped=True)
    assert gzip.decompress(first) == metrics.body(openmetrics=True)
    assert samples(metrics.body(openmetrics=False), "flowforge_pipeline_status")

    metrics.run_finished(github_run("success", finished="2026-11-27T09:20:00Z"))
    assert 'status="success"' in samples(metrics.body(openmetrics=False), "flowforge_pipeline_status")[0]

    clock[0] = NOW + 7200  # nothing finished since: the pipeline goes stale all the same
    assert not samples(metrics.body(openmetrics=False), "flowforge_pipeline_status")
    assert not samples(metrics.body(openmetrics=True), "flowforge_pipeline_status")
