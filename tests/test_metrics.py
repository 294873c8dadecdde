"""GET /metrics: names promtool accepts, bounded labels, runs counted once, series that survive a restart
(rebuilt from the store's run totals)."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlite_utils
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from flowforged.metrics import MAX_EVENTS_PER_SOURCE, Metrics
from flowforged.model import RunEvent, Status, iso
from flowforged.run_totals import RUN_BUCKETS, RUN_STATUSES, Histogram
from flowforged.store import Delivery, totals
from flowforged.store.ingest import ingest
from flowforged.store.schema import MIGRATIONS, migrate
from tests.prom import NOW, everything, github_run, gitlab_run, promtool, samples

DAY = 86400.0
GH = "octo-org/octo-repo/.github/workflows/test.yml"  # the fixture's workflow
GL = "gitlab-org/gitlab-test"  # the fixture's project

# Every family Metrics exports, with its type, once each kind of event has been reported.
FAMILIES = {
    "flowforge_build_info": "gauge",
    "flowforge_webhook_deliveries_total": "counter",
    "flowforge_webhook_duration_seconds": "histogram",
    "flowforge_poll_requests_total": "counter",
    "flowforge_rate_limit_remaining": "gauge",
    "flowforge_rate_limit_quota": "gauge",
    "flowforge_rate_limit_reset_timestamp_seconds": "gauge",
    "flowforge_events_stored_total": "counter",
    "flowforge_deliveries_unapplied": "gauge",
    "flowforge_pipeline_runs_finished_total": "counter",
    "flowforge_pipeline_status": "gauge",
    "flowforge_pipeline_status_since_timestamp_seconds": "gauge",
    "flowforge_pipeline_last_finished_timestamp_seconds": "gauge",
    "flowforge_pipeline_run_time_seconds": "summary",
    "flowforge_pipeline_run_duration_seconds": "histogram",
    "flowforge_pipeline_run_queue_seconds": "histogram",
    "flowforge_notifications_total": "counter",
    "flowforge_outbox_notifications": "gauge",
    "flowforge_notification_latency_seconds": "histogram",
}


def new(clock: float | Callable[[], float] = NOW, **options) -> Metrics:
    options.setdefault("process_metrics", False)
    options.setdefault("detail", ["*"])  # every series of every pipeline; test_lean_* test the default
    now = clock if callable(clock) else lambda: clock
    return Metrics(CollectorRegistry(), clock=now, version="1.2.3", **options)


def text(metrics: Metrics) -> str:
    """What /metrics serves in the text format."""
    return metrics.body(openmetrics=False).decode()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`; None if there is none."""
    found = [line for line in samples(text(metrics), name) if _labels(line).items() >= labels.items()]
    assert len(found) <= 1, found
    return float(found[0].rsplit(" ", 1)[1]) if found else None


def _labels(line: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}", 1)[0])) if "{" in line else {}


def test_process_metrics_have_their_standard_names():
    # Stock dashboards and alerts (node/process exporters, Grafana's "Go/Python process" panels)
    # query process_* with no prefix.
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text(new(process_metrics=True)), re.M))
    process = {name for name in types if "process_" in name}
    assert {"process_start_time_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total"} <= process
    assert process == {name for name in process if name.startswith("process_")}


def test_every_family_passes_promtool_with_help_and_flowforge_prefix():
    metrics = everything(new(process_metrics=True))
    exposition = metrics.body(openmetrics=False)

    checked = promtool("check", "metrics", stdin=exposition)

    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition.decode(), re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", exposition.decode(), re.M))
    assert {name: kind for name, kind in types.items() if not name.startswith("process_")} == FAMILIES
    assert all(name.startswith(("flowforge_", "process_")) for name in types)
    assert set(helps) == set(types)
    # No `_created` series: Prometheus would ingest each one as a gauge of its own.
    assert not [line for line in samples(exposition) if "_created" in line.split("{")[0]]


def test_build_info_carries_the_version():
    assert sample(new(), "flowforge_build_info") == 1
    assert 'flowforge_build_info{version="1.2.3"} 1.0' in text(new())


async def test_handler_serves_the_text_format_and_openmetrics_on_request(aiohttp_client):
    metrics = everything(new())
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler)
    client = await aiohttp_client(app)

    plain = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    body = await plain.text()
    assert plain.status == 200
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert plain.headers["Content-Encoding"] == "gzip"  # Prometheus asks for it; 10,000 series are 1.3 MB
    assert 'flowforge_pipeline_status{branch="master"' in body

    # What Prometheus asks for first: the OpenMetrics format, which must parse as such.
    negotiated = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert negotiated.headers["Content-Type"].startswith("application/openmetrics-text")
    parsed = {family.name for family in text_string_to_metric_families(await negotiated.text())}
    assert {"flowforge_pipeline_runs_finished", "flowforge_build"} <= parsed


def test_a_run_is_counted_once_in_the_counter_and_both_histograms():
    metrics = new()
    metrics.run_finished(github_run("success"))

    counts = {
        status: sample(metrics, "flowforge_pipeline_runs_finished_total", status=status) for status in RUN_STATUSES
    }
    assert counts == {"success": 1, "failed": 0, "cancelled": 0, "skipped": 0}
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_count", pipeline=GH) == 1
    assert sample(metrics, "flowforge_pipeline_run_queue_seconds_count", pipeline=GH) == 1
    # 08:41:30 to 09:01:13 in the derived fixture: 1183 s, in the 1200 s bucket and not the 900 s one.
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_sum", pipeline=GH) == 1183
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_bucket", le="900.0") == 0
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_bucket", le="1200.0") == 1


def test_gitlab_run_uses_the_hooks_own_duration_and_queue_time():
    metrics = new()
    metrics.run_finished(gitlab_run("success"))
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_sum", pipeline=GL) == 63
    assert sample(metrics, "flowforge_pipeline_run_queue_seconds_sum", pipeline=GL) == 12
    assert sample(metrics, "flowforge_pipeline_status", source="gitlab", pipeline=GL, branch="master") == 1


def test_ci_buckets_run_from_ten_seconds_to_six_hours():
    metrics = new()
    metrics.run_finished(github_run("success", duration_seconds=6 * 3600.0))
    assert RUN_BUCKETS[0] == 10 and RUN_BUCKETS[-1] == 6 * 3600
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_bucket", le="14400.0") == 0
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_bucket", le="21600.0") == 1


def test_cancelled_and_skipped_runs_are_counted_but_leave_duration_and_status_alone():
    metrics = new()
    metrics.run_finished(github_run("failure", finished="2026-11-27T08:00:00Z"))
    metrics.run_finished(github_run("cancelled", finished="2026-11-27T08:30:00Z"))
    metrics.run_finished(github_run("skipped", finished="2026-11-27T09:00:00Z"))

    assert sample(metrics, "flowforge_pipeline_runs_finished_total", status="cancelled") == 1
    assert sample(metrics, "flowforge_pipeline_runs_finished_total", status="skipped") == 1
    assert sample(metrics, "flowforge_pipeline_status", status="failed") == 1
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_count") == 1
    assert sample(metrics, "flowforge_pipeline_run_queue_seconds_count") == 3
    assert sample(metrics, "flowforge_pipeline_last_finished_timestamp_seconds") == _at("2026-11-27T09:00:00Z")


def test_status_is_one_series_per_pipeline_and_branch_whose_label_moves():
    metrics = new()
    timeline = [
        ("success", "08:00"),
        ("failure", "08:10"),
        ("failure", "08:20"),
        ("cancelled", "08:25"),
        ("success", "08:30"),
    ]
    seen = []
    for conclusion, at in timeline:
        metrics.run_finished(github_run(conclusion, finished=f"2026-11-27T{at}:00Z"))
        status = samples(text(metrics), "flowforge_pipeline_status")
        assert len(status) == 1, status
        seen.append(_labels(status[0])["status"])
        assert _labels(status[0])["default_branch"] == "true"  # master is the fixture repository's default

    assert seen == ["success", "failed", "failed", "failed", "success"]
    # Broken at 08:10, still failing at 08:20, fixed at 08:30: since is when it changed, not the latest run.
    assert sample(metrics, "flowforge_pipeline_status_since_timestamp_seconds") == _at("2026-11-27T08:30:00Z")


def test_since_is_when_the_pipeline_broke_not_its_latest_failure():
    metrics = new()
    for conclusion, at in [("success", "08:00"), ("failure", "08:10"), ("failure", "08:20")]:
        metrics.run_finished(github_run(conclusion, finished=f"2026-11-27T{at}:00Z"))
    assert sample(metrics, "flowforge_pipeline_status_since_timestamp_seconds") == _at("2026-11-27T08:10:00Z")


def test_a_late_older_run_does_not_overwrite_the_newer_status():
    metrics = new()
    metrics.run_finished(github_run("success", finished="2026-11-27T09:01:13Z"))
    metrics.run_finished(github_run("failure", finished="2026-11-27T08:30:00Z"))  # arrives late

    assert [_labels(line)["status"] for line in samples(text(metrics), "flowforge_pipeline_status")] == ["success"]
    assert sample(metrics, "flowforge_pipeline_last_finished_timestamp_seconds") == _at("2026-11-27T09:01:13Z")
    assert sample(metrics, "flowforge_pipeline_status_since_timestamp_seconds") == _at("2026-11-27T09:01:13Z")
    assert sample(metrics, "flowforge_pipeline_runs_finished_total", status="failed") == 1  # still counted


def test_branch_label_is_the_branch_only_for_the_default_branch_and_the_configured_patterns():
    metrics = new(branches=["main", "release/*"])
    metrics.run_finished(github_run("success", branch="master"))  # the repository's default branch
    metrics.run_finished(github_run("success", branch="release/2.0"))
    metrics.run_finished(github_run("success", branch="feature/login"))
    metrics.run_finished(github_run("success", branch="dependabot/npm/lodash"))
    metrics.run_finished(gitlab_run("success", branch=None))  # a tag pipeline has no branch
    # A polled run may not say which branch is the default: the one a webhook told us still counts.
    metrics.run_finished(github_run("failure", branch="master", default_branch=None))

    labels = {
        (_labels(line)["branch"], _labels(line)["default_branch"])
        for line in samples(text(metrics), "flowforge_pipeline_last_finished_timestamp_seconds")
    }
    assert labels == {("master", "true"), ("release/2.0", "false"), ("other", "false"), ("none", "false")}
    assert sample(metrics, "flowforge_pipeline_runs_finished_total", branch="other", status="success") == 2
    assert sample(metrics, "flowforge_pipeline_status", branch="master", status="failed") == 1


def test_ten_thousand_runs_on_five_thousand_branches_stay_a_few_dozen_series():
    metrics = new()
    rng = random.Random(5)
    branches = ["master", *(f"feature/login-{number}" for number in range(4999))]
    for base in (github_run(), gitlab_run()):  # each fixture pipeline runs once on every branch
        for branch in branches:
            status = "failed" if branch == "master" else rng.choice(RUN_STATUSES)
            metrics.run_finished({**base, "branch": branch, "status": status})

    lines = samples(text(metrics))
    # Per pipeline: 2 branch labels (master, other) x (4 status counters + status + since + last finish)
    # = 14, plus the duration summary (sum + count), histogram (16 buckets + +Inf + sum + count = 19) and
    # queue (13 + 3 = 16); two pipelines; then build_info, the deliveries not yet applied, and the
    # notification latency histogram (14 + 3).
    assert len(lines) == 2 * (2 * 7 + 2 + 19 + 16) + 1 + 1 + 17
    assert {_labels(line).get("branch") for line in lines} == {None, "master", "other"}
    other = [
        sample(metrics, "flowforge_pipeline_runs_finished_total", pipeline=GL, branch="other", status=status)
        for status in RUN_STATUSES
    ]
    assert sum(other) == 4999  # every run on a feature branch is still counted, under "other"


def test_event_and_source_labels_stay_bounded_whatever_the_sender_puts_in_headers():
    metrics = new()
    metrics.webhook("my-typo-source", "workflow_run", "unknown_source", 0.001)
    metrics.webhook("github", 'x"} 1\nevil', "rejected", 0.001)
    metrics.webhook("github", "e" * 65, "rejected", 0.001)
    for number in range(200):
        metrics.webhook("github", f"event-{number}", "rejected", 0.001)

    lines = samples(text(metrics), "flowforge_webhook_deliveries_total")
    sources = {_labels(line)["source"] for line in lines}
    events = {_labels(line)["event"] for line in lines if _labels(line)["source"] == "github"}
    assert sources == {"unknown", "github"}
    assert len(events) == MAX_EVENTS_PER_SOURCE + 1 and "other" in events
    assert (
        sample(metrics, "flowforge_webhook_deliveries_total", source="github", event="other", outcome="rejected")
        == 200 + 2 - MAX_EVENTS_PER_SOURCE
    )
    assert sample(metrics, "flowforge_webhook_duration_seconds_count", source="unknown") == 1


def test_first_outcome_of_a_source_creates_the_others_at_zero():
    # So that the first rejected delivery or dead notification is an increase() that alerts fire on.
    metrics = new()
    metrics.webhook("github", "workflow_run", "accepted", 0.01)
    metrics.notification("team-slack", "sent")
    metrics.poll_request("github", "ok")
    assert sample(metrics, "flowforge_webhook_deliveries_total", outcome="rejected") == 0
    assert sample(metrics, "flowforge_notifications_total", outcome="dead") == 0
    assert sample(metrics, "flowforge_poll_requests_total", outcome="rate_limited") == 0


def test_rate_limit_none_removes_the_series():
    metrics = new()
    metrics.rate_limit_remaining("github", 12)
    assert sample(metrics, "flowforge_rate_limit_remaining", source="github") == 12
    assert sample(metrics, "flowforge_rate_limit_quota", source="github") is None
    metrics.rate_limit_remaining("github", None)
    assert sample(metrics, "flowforge_rate_limit_remaining", source="github") is None


def test_outbox_depth_by_state():
    metrics = new()
    metrics.outbox_depth(7)
    assert sample(metrics, "flowforge_outbox_notifications", state="pending") == 7
    metrics.outbox_depth_by_state({"dead": 2})
    assert sample(metrics, "flowforge_outbox_notifications", state="pending") == 0
    assert sample(metrics, "flowforge_outbox_notifications", state="dead") == 2


def test_unknown_outcomes_and_non_terminal_runs_are_refused():
    metrics = new()
    with pytest.raises(ValueError, match="webhook outcome"):
        metrics.webhook("github", "push", "ok", 0.1)
    with pytest.raises(ValueError, match="not terminal"):
        metrics.run_finished(github_run("success", status="running"))
    with pytest.raises(ValueError, match="notification outcome"):
        metrics.notification("team-slack", "delivered")


def test_pipelines_that_have_not_run_for_stale_after_drop_out_and_come_back_with_their_counts():
    clock = [NOW]
    metrics = new(lambda: clock[0], stale_after=7 * DAY)
    runs = [
        github_run("failure", finished=iso_at(NOW - DAY)),
        gitlab_run("success", finished=gitlab_at(NOW - DAY + 60)),
    ]
    for run in runs:
        metrics.run_finished(run)

    clock[0] = NOW + 6 * DAY - 1
    assert sample(metrics, "flowforge_pipeline_status", pipeline=GH) == 1

    runs.append(gitlab_run("success", finished=gitlab_at(NOW + 6 * DAY)))
    metrics.run_finished(runs[-1])
    clock[0] = NOW + 6 * DAY + 1
    per_pipeline = [line for line in samples(text(metrics)) if line.startswith("flowforge_pipeline_")]
    assert per_pipeline and all(_labels(line)["pipeline"] == GL for line in per_pipeline)

    # Back after the gap: its counters carry on from where they were, as a restart loads them.
    runs.append(github_run("success", finished=iso_at(NOW + 6 * DAY + 1)))
    metrics.run_finished(runs[-1])
    assert sample(metrics, "flowforge_pipeline_runs_finished_total", pipeline=GH, status="failed") == 1
    assert sample(metrics, "flowforge_pipeline_runs_finished_total", pipeline=GH, status="success") == 1
    assert sample(metrics, "flowforge_pipeline_run_duration_seconds_count", pipeline=GH) == 2
    assert sample(metrics, "flowforge_pipeline_status_since_timestamp_seconds", pipeline=GH) == NOW + 6 * DAY + 1
    assert text(restarted(runs, clock=clock[0])) == text(metrics)


def test_rebuild_gives_the_same_exposition_as_the_live_path():
    runs = _history(days=3, seed=1)
    live = new()
    for run in runs:
        live.run_finished(run)
    rebuilt = new()

    assert totals.rebuild(stored(runs), rebuilt) == len(runs)
    assert text(rebuilt) == text(live)
    assert samples(text(rebuilt), "flowforge_pipeline_status")


def test_after_a_restart_no_counter_is_lower_than_before_it():
    """A counter lower after a restart reads as a reset to Prometheus, which counts it all again."""
    runs = _history(days=30, seed=2)
    finishes = [_at(run["finished_at"]) for run in runs]
    assert any(later - earlier > 7 * DAY for earlier, later in zip(finishes, finishes[1:], strict=False))
    clock = [finishes[0]]
    live = new(lambda: clock[0])
    for run in runs:  # the daemon up for 30 days, scraped as the runs come, stale series left out
        clock[0] = _at(run["finished_at"])
        live.run_finished(run)
        text(live)
    before = _counters(text(live))

    after = _counters(text(restarted(runs, clock=clock[0])))

    assert before == after
    assert any(key.startswith("flowforge_pipeline_runs_finished_total") for key in after)


def test_branches_under_other_merge_into_the_status_one_label_fed_their_runs_would_have():
    # feature/a green all along; feature/b breaks at 08:10, then feature/a passes at 08:20 and 08:30:
    # `other` is green again since 08:20, a run in the middle of feature/a's own streak (looked up).
    timeline = [
        ("feature/a", "success", "08:00"),
        ("feature/a", "success", "08:05"),
        ("feature/b", "failure", "08:10"),
        ("feature/a", "success", "08:20"),
        ("feature/b", "cancelled", "08:25"),
        ("feature/a", "success", "08:30"),
    ]
    runs = [github_run(c, branch=b, finished=f"2026-11-27T{at}:00Z") for b, c, at in timeline]
    live = new()
    for run in runs:
        live.run_finished(run)

    rebuilt = restarted(runs)

    since = "flowforge_pipeline_status_since_timestamp_seconds"
    assert sample(live, since, branch="other") == _at("2026-11-27T08:20:00Z")
    assert text(rebuilt) == text(live)


def test_a_failure_and_a_success_in_the_same_second_leave_it_failed_whichever_came_first():
    for order in (("success", "failure"), ("failure", "success")):
        metrics = new()
        metrics.run_finished(github_run("success", finished="2026-11-27T08:00:00Z"))
        for conclusion in order:
            metrics.run_finished(github_run(conclusion, finished="2026-11-27T09:00:00Z"))
        assert sample(metrics, "flowforge_pipeline_status", status="failed") == 1, order
        since = sample(metrics, "flowforge_pipeline_status_since_timestamp_seconds")
        assert since == _at("2026-11-27T09:00:00Z"), order


def test_histogram_buckets_kept_under_a_bound_that_is_gone_count_in_the_bucket_that_holds_it():
    histogram = Histogram((10, 60))
    histogram.add_buckets([(30, 2), (60, 1), (math.inf, 4)], 500.0)
    assert histogram.counts == [0, 3, 4] and histogram.sum == 500.0


# --- the run totals of the store against the live path, on random histories ------------------------

BRANCHES = ["master", "release/1", "feature/a", "feature/b", "feature/c", None]  # master: the repositories' default
OWN_LABEL = {"master", "release/1", None}  # `other` gathers the feature branches
PIPELINES = [
    ("github", "octo/app/.github/workflows/ci.yml"),
    ("github", "octo/lib/.github/workflows/ci.yml"),
    ("gitlab", "group/project"),
]
OPTIONS = {"branches": ["release/*"], "stale_after": 7 * DAY, "version": "1.2.3", "process_metrics": False}
# 0: two runs in the same second; 8 days: longer than stale_after, the pipeline+branch drops out a while.
GAPS = [0, 0, 1, 60, 3600, 3 * DAY, 8 * DAY]


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[float, RunEvent]]:
    """Run events in finish order, a failure after a success of the same second; some with no finish,
    duration or queue time; some runs end twice (a retry of the same attempt), on branches with a
    label of their own (under `other`, `since` may come from the runs' rows, which keep only the last
    end of a run: BranchTotals.merge). Each event comes with the time the store records it."""
    at, events, ended = NOW - 60 * DAY, [], []
    for number in range(draw(st.integers(1, 60))):
        retry = draw(st.sampled_from([None, *ended])) if ended and draw(st.integers(0, 4)) == 0 else None
        at += draw(st.sampled_from(GAPS[3:] if retry else GAPS))
        status = draw(st.sampled_from(["success", "failed", *RUN_STATUSES]))
        if retry is None:
            source, pipeline = draw(st.sampled_from(PIPELINES))
            run_id, branch = str(number), draw(st.sampled_from(BRANCHES))
        else:  # running again, then another end
            source, pipeline, run_id, branch = retry.source, retry.pipeline, retry.run_id, retry.branch
            events.append(
                (at - 1, dataclasses.replace(retry, status=Status.RUNNING, updated_at=iso_at(at - 1), finished_at=None))
            )
        started = at - draw(st.sampled_from([5, 45, 700, 5000, 30000]))
        created = started - draw(st.sampled_from([0, 3, 100, 9000]))
        event = RunEvent(
            source=source,
            pipeline=pipeline,
            run_id=run_id,
            attempt=1,
            status=Status(status),
            provider_status=status,
            updated_at=iso_at(at),
            branch=branch,
            created_at=iso_at(created) if draw(st.booleans()) else None,
            started_at=iso_at(started) if draw(st.integers(0, 3)) else None,
            finished_at=iso_at(at) if draw(st.integers(0, 5)) else None,
            default_branch=draw(st.sampled_from(["master", None])),
        )
        events.append((at, event))
        if branch in OWN_LABEL and retry is None:
            ended.append(event)
    events.sort(key=lambda item: (item[0], item[1].status is Status.FAILED))
    return events


@settings(max_examples=150, deadline=None)
@given(
    history=histories(),
    moments=st.lists(st.sampled_from([None, "scrape", "restart"]), min_size=120, max_size=120),  # one an event
    later=st.sampled_from([0, 0, DAY, 8 * DAY]),
)
def test_a_restart_at_any_moment_shows_what_the_live_path_showed(history, moments, later):
    conn = _database()
    clock = [NOW]
    live = Metrics(CollectorRegistry(), clock=lambda: clock[0], **OPTIONS)
    finished = 0
    for (at, event), moment in zip(history, moments, strict=False):
        clock[0] = at
        conn.execute("BEGIN")
        delivery = Delivery(event.source, f"{event.run_id}@{at}", "webhook", "run", iso_at(at), {}, b"{}")
        result = ingest(conn, delivery, [event], iso_at(at))
        conn.execute("COMMIT")
        for run in result.finished:  # what app._count_ingest does after the commit
            live.run_finished(run)
            finished += 1
        if moment == "scrape":
            text(live)
        elif moment == "restart":
            _restart_shows(text(live), conn, clock[0], finished)
    clock[0] += later
    _restart_shows(text(live), conn, clock[0], finished)

    # A store from before the run totals gets the same ones from its runs at upgrade (a retry, which
    # leaves one row for two ends, aside).
    if all(event.status.terminal for _, event in history):
        tables = _totals(conn)
        conn.execute("DELETE FROM run_totals")
        conn.execute("DELETE FROM pipeline_totals")
        assert totals.backfill(conn) == finished
        assert _totals(conn) == tables


def test_a_store_from_before_the_run_totals_gets_them_at_upgrade():
    runs = _history(days=30, seed=3)
    conn = stored(runs)
    live = new(clock=_at(runs[-1]["finished_at"]))
    for run in runs:
        live.run_finished(run)
    # The store as version 3 left it: runs, no totals; then the migration that adds them. (Only that
    # one: the later ones expect the objects of their predecessors not to exist yet.)
    conn.execute("DROP TABLE run_totals")
    conn.execute("DROP TABLE pipeline_totals")
    conn.execute("DROP INDEX idx_runs_decisive")
    with conn:
        MIGRATIONS[3](sqlite_utils.Database(conn))

    upgraded = new(clock=_at(runs[-1]["finished_at"]))
    assert totals.rebuild(conn, upgraded) == len(runs)
    assert text(upgraded) == text(live)


def test_the_first_run_after_a_time_is_one_index_seek():
    for query in totals._FIRST.values():
        plan = " ".join(
            str(row[-1]) for row in _database().execute("EXPLAIN QUERY PLAN " + query, ("s", "p", "b", "t"))
        )
        assert plan.startswith("SEARCH runs USING INDEX idx_runs_decisive") and "TEMP B-TREE" not in plan, plan


def _restart_shows(exposition: str, conn: sqlite3.Connection, clock: float, finished: int) -> None:
    rebuilt = Metrics(CollectorRegistry(), clock=lambda: clock, **OPTIONS)
    assert totals.rebuild(conn, rebuilt) == finished
    assert text(rebuilt) == exposition


def _database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


def stored(runs: list[dict]) -> sqlite3.Connection:
    """A store that recorded `runs` as the ingest transaction does: a row each, then their totals."""
    conn = _database()
    for number, run in enumerate(runs):
        conn.execute(
            "INSERT INTO pipelines (source, pipeline, default_branch) VALUES (?, ?, ?) ON CONFLICT (source, pipeline)"
            " DO UPDATE SET default_branch = COALESCE(excluded.default_branch, default_branch)",
            (run["source"], run["pipeline"], run["default_branch"]),
        )
        conn.execute(
            "INSERT INTO runs (source, pipeline, run_id, attempt, branch, status, finished_at, updated_at,"
            " duration_seconds, queue_seconds) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (
                run["source"],
                run["pipeline"],
                str(number),
                run["branch"],
                run["status"],
                run["finished_at"],
                run["finished_at"],
                run["duration_seconds"],
                run["queue_seconds"],
            ),
        )
        totals.add(conn, run)
    return conn


def restarted(runs: list[dict], clock: float = NOW) -> Metrics:
    """A daemon started on a store that recorded `runs`: its metrics, rebuilt."""
    metrics = new(clock)
    totals.rebuild(stored(runs), metrics)
    return metrics


def _totals(conn: sqlite3.Connection) -> list[tuple]:
    return [
        *conn.execute("SELECT * FROM run_totals ORDER BY source, pipeline, branch"),
        *conn.execute("SELECT * FROM pipeline_totals ORDER BY source, pipeline"),
    ]


def _history(days: int, seed: int) -> list[dict]:
    """Runs of both fixture pipelines every few hours, in finish order, over `days` up to NOW; when
    that is long enough, with eight quiet days in the first half (longer than stale_after)."""
    rng = random.Random(seed)
    runs, at = [], NOW - days * DAY
    quiet = (NOW - days * DAY * 0.8, NOW - days * DAY * 0.8 + 8 * DAY) if days > 20 else (0.0, 0.0)
    while True:
        at += rng.choice([600, 3600, 4 * 3600])
        if quiet[0] <= at < quiet[1]:
            at = quiet[1]
        if at > NOW:
            return runs
        branch = rng.choice(["master", "master", "feature/a", "feature/b"])
        if rng.random() < 0.5:
            conclusion = rng.choice(["success", "failure", "cancelled", "skipped"])
            runs.append(github_run(conclusion, finished=iso_at(at), branch=branch))
        else:
            status = rng.choice(["success", "failed", "canceled", "skipped"])
            runs.append(gitlab_run(status, finished=gitlab_at(at), ref=branch))


def _counters(exposition: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in samples(exposition)
        if re.match(r"flowforge_\w+(_total|_bucket|_count|_sum)[{ ]", line)
    }


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso_at(timestamp: float) -> str:
    return iso(datetime.fromtimestamp(timestamp, UTC))


def gitlab_at(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
