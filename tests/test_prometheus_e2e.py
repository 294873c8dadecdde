"""A real Prometheus scraping Metrics.handler: what a user's Prometheus and Grafana will see."""

from __future__ import annotations

import re

from aiohttp import web
from prometheus_client import CollectorRegistry

from flowforged.metrics import Metrics
from tests.prom import (
    NOW,
    PROMETHEUS,
    dashboard,
    dashboard_expressions,
    github_run,
    gitlab_run,
    prometheus_server,
    query,
    value,
    wait_for_query,
    wait_for_rules,
)

GH = "octo-org/octo-repo/.github/workflows/test.yml"
ALERTS = PROMETHEUS / "alerts.yml"
# What Grafana puts in for the dashboard's variables when "All" is selected.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$window": "1h",
    "$source": ".*",
    "$pipeline": ".*",
}


def statuses(result: list[dict]) -> list[str]:
    return sorted(sample["metric"]["status"] for sample in result)


async def test_prometheus_sees_each_run_once_and_the_status_label_move(aiohttp_server, tmp_path):
    # The GitHub pipeline with every detail (metrics.detail), the GitLab one as every pipeline is by default.
    metrics = Metrics(CollectorRegistry(), clock=lambda: NOW, version="9.9.9", detail=[GH])
    metrics.run_finished(github_run("success"))
    metrics.run_finished(gitlab_run("success"))
    metrics.webhook("github", "workflow_run", "accepted", 0.004)
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    server = await aiohttp_server(app)

    async with prometheus_server(tmp_path, [f"127.0.0.1:{server.port}"], rule_files=[ALERTS]) as prom:
        runs = 'flowforge_pipeline_runs_finished_total{pipeline="%s", status=~"%s"}'
        await wait_for_query(prom, runs % (GH, "success"), lambda result: value(result) == [1])
        status = f'flowforge_pipeline_status{{pipeline="{GH}", branch="master", default_branch="true"}}'
        await wait_for_query(prom, status, lambda result: statuses(result) == ["success"])
        assert value(await query(prom, 'flowforge_build_info{job="flowforge", version="9.9.9"}')) == [1]

        metrics.run_finished(github_run("failure", finished="2026-11-27T09:20:00Z"))
        # The success series ends at once (Prometheus marks it stale when it leaves the scrape): a
        # dashboard or an alert never sees the pipeline both passing and failing.
        await wait_for_query(prom, status, lambda result: statuses(result) == ["failed"])
        assert value(await query(prom, runs % (GH, "success|failed"))) == [1, 1]  # each run once

        # The alert rules load and evaluate against these series without error.
        rules = await wait_for_rules(prom)
        assert {rule["name"] for rule in rules} >= {"FlowForgePipelineBroken", "FlowForgeDown"}
        assert all(rule["health"] == "ok" for rule in rules), rules
        broken = f'ALERTS{{alertname="FlowForgePipelineBroken", alertstate="pending", pipeline="{GH}"}}'
        await wait_for_query(prom, broken, lambda result: value(result) == [1])

        # Every dashboard query parses, and the pipeline panels have data.
        answers = {}
        for title, expr in dashboard_expressions(dashboard()):
            if expr.startswith("label_values("):
                continue
            answers[title, expr] = await query(prom, grafana(expr))
        panels_with_data = {title for (title, _), result in answers.items() if result}
        assert {
            "Current status",
            "Success rate over $window",
            "Webhook deliveries",
            "Run duration p50 / p95 ($window)",  # the pipeline in metrics.detail
        } <= panels_with_data
        # Both pipelines in the status table, whether in metrics.detail or not.
        table = next(result for (title, _), result in answers.items() if title == "Current status")
        assert {sample["metric"]["pipeline"] for sample in table} == {GH, "gitlab-org/gitlab-test"}


def grafana(expr: str) -> str:
    return re.sub(r"\$\w+", lambda match: GRAFANA_VARIABLES.get(match.group(0), match.group(0)), expr)
