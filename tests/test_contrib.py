"""contrib/: Prometheus config and alert rules that promtool accepts, a dashboard that matches the metrics."""

from __future__ import annotations

import re

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from flowforged.metrics import Metrics
from tests.prom import (
    DASHBOARD,
    NOW,
    PROMETHEUS,
    dashboard,
    dashboard_expressions,
    everything,
    promtool,
    rule_expressions,
    samples,
)

METRIC_NAME = re.compile(r"\b(flowforge_[A-Za-z0-9_]+)")
REQUIRED_PANELS = {
    "status": "Current status",
    "success rate": "Success rate",
    "failures": "Failed runs",
    "duration": "Run duration p50 / p95",
    "mean duration": "Mean run duration",
    "queue": "Queue time",
    "webhooks": "Webhook deliveries",
    "polling": "Poll requests",
    "budget": "API budget left",
    "notifications": "Notifications",
    "outbox": "Outbox depth",
}


def exported_series() -> set[str]:
    """The names Prometheus stores for what Metrics exports: counters with _total, histograms as
    _bucket, _sum and _count. A query naming a histogram's family name alone would find nothing."""
    metrics = everything(Metrics(CollectorRegistry(), process_metrics=False, clock=lambda: NOW, detail=["*"]))
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in samples(generate_latest(metrics.registry))}


def test_alert_rules_pass_promtool_check():
    checked = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_alert_rules_unit_tests_pass():
    tested = promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {name for name, _ in rule_expressions()}
    assert alerts == firing == quiet


def test_alert_rules_cover_what_an_operator_pages_on():
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert rules["FlowForgePipelineBroken"]["for"] == "30m"
    assert 'default_branch="true"' in rules["FlowForgePipelineBroken"]["expr"]
    assert rules["FlowForgeDown"]["expr"].strip() == 'up{job="flowforge"} == 0'
    assert {
        "FlowForgeWebhooksRejected",
        "FlowForgeRateLimitLow",
        "FlowForgeOutboxGrowing",
        "FlowForgeNotificationsDead",
    } <= set(rules)


def test_prometheus_config_passes_promtool_and_scrapes_flowforged():
    # Run from its own folder: rule_files are relative to the config file, as a user would deploy them.
    checked = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "flowforge" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    assert config["rule_files"] == ["alerts.yml"]


def test_dashboard_takes_its_datasource_and_filters_from_variables():
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("source", "pipeline"):
        assert variables[name]["definition"].startswith("label_values(flowforge_")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
    # No datasource pinned to someone's Grafana anywhere in the file.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) - {"flowforge"} <= {"${datasource}", "-- Grafana --"}


def test_dashboard_has_the_panels_people_look_for():
    titles = [panel["title"] for panel in dashboard()["panels"]]
    missing = {
        what: title
        for what, title in REQUIRED_PANELS.items()
        if not any(existing.startswith(title) for existing in titles)
    }
    assert not missing
    expressions = "\n".join(expr for _, expr in dashboard_expressions(dashboard()))
    assert "histogram_quantile(0.5," in expressions and "histogram_quantile(0.95," in expressions


def test_every_metric_in_the_rules_and_the_dashboard_is_one_flowforged_exports():
    exported = exported_series()
    used = {
        (where, name)
        for where, expr in [*rule_expressions(), *dashboard_expressions(dashboard())]
        for name in METRIC_NAME.findall(expr)
    }
    unknown = sorted((where, name) for where, name in used if name not in exported)
    assert not unknown, f"not exported by flowforged.metrics: {unknown}"
    # Sanity of the check itself: it saw the histograms' series and the counters' _total names.
    names = {name for _, name in used}
    assert {
        "flowforge_pipeline_run_duration_seconds_bucket",
        "flowforge_pipeline_run_time_seconds_sum",
        "flowforge_pipeline_runs_finished_total",
    } <= names
    # Outside flowforge_*, the rules may only use Prometheus's own `up`.
    for _, expr in rule_expressions():
        bare = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", expr)) - {"up"}
        assert all(name.startswith("flowforge_") for name in bare), expr
