"""From transitions to outbox rows: the rules (docs/architecture.md: "The parts, in the order a delivery
travels").

`Planner.plan` runs on the writer thread, inside the ingest transaction of the delivery that caused the
transition, so a notification is stored exactly when its transition is. It decides, in order:
  1. which rules match (source, pipeline and branch globs; the transitions a rule is `on`; runs of pull
     requests only for a rule with `pull_requests: true`); the first match wins unless that rule says
     `continue`;
  2. min_consecutive_failures: a flaky pipeline is announced broken only at its N-th failure in a row,
     and fixed only if its breakage was announced;
  3. repeat_interval: still_failing at most once per interval per pipeline+branch (a broken message
     counts as the first);
  4. a fix that arrives during the breakage's group_wait cancels both (a re-run that passed);
  5. silences: a silenced notification is stored as `suppressed`, never sent.
"""

from __future__ import annotations

import fnmatch
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from flowforged.config import RuleConfig
from flowforged.store import outbox

DEFAULT_BRANCHES = ("main", "master")
NOTIFICATION_FIELDS = (
    "transition",
    "source",
    "pipeline",
    "branch",
    "run_id",
    "attempt",
    "url",
    "sha",
    "commit_message",
    "author",
    "duration_seconds",
    "pipeline_name",
    "finished_at",
    "pull_request",
    "head_repo",
)


def _matches(value: str | None, patterns: list[str]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def branch_matches(rule: RuleConfig, record: dict[str, Any]) -> bool:
    """Without `branches`, a rule follows each repository's default branch, else main and master. A
    run of a pull request is taken only by a rule with `pull_requests`: any pull request, or those
    whose head branch (or state, `pull/12`) matches `branches`."""
    branch, default_branch = record["branch"], record.get("default_branch")
    if record.get("proposed"):
        if not rule.pull_requests:
            return False
        if rule.branches is None:
            return True
        return _matches(branch, rule.branches) or _matches(record.get("head_branch"), rule.branches)
    if rule.branches is not None:
        return _matches(branch, rule.branches)
    if default_branch:
        return branch == default_branch
    return branch in DEFAULT_BRANCHES


def matching_rules(rules: list[RuleConfig], record: dict[str, Any]) -> list[tuple[RuleConfig, str]]:
    """(rule, transition to announce) for each rule that takes this record: the first, and the ones
    after it while the matching rules say `continue`."""
    matched = []
    for rule in rules:
        transition = announced_as(rule, record)
        if (
            transition in rule.on
            and _matches(record["source"], rule.sources)
            and _matches(record["pipeline"], rule.pipelines)
            and branch_matches(rule, record)
        ):
            matched.append((rule, transition))
            if not rule.continue_:
                break
    return matched


def announced_as(rule: RuleConfig, record: dict[str, Any]) -> str | None:
    """The transition to announce under this rule's min_consecutive_failures, or None."""
    transition, need = record["transition"], rule.min_consecutive_failures
    if transition == "fixed":
        return "fixed" if record.get("previous_failures", 0) >= need else None
    failures = record.get("consecutive_failures", 1)
    if failures < need:
        return None
    return "broken" if failures == need else "still_failing"


class Planner:
    def __init__(self, rules: list[RuleConfig], clock: Callable[[], float] = time.time):
        self.rules = rules
        self.clock = clock

    def plan(self, conn: sqlite3.Connection, record: dict[str, Any], notify: bool) -> None:
        if not notify or not self.rules:
            return
        if not record.get("default_branch"):
            row = conn.execute(
                "SELECT default_branch FROM pipelines WHERE source = ? AND pipeline = ?",
                (record["source"], record["pipeline"]),
            ).fetchone()
            record = {**record, "default_branch": row[0] if row else None}
        now = self.clock()
        for rule, transition in matching_rules(self.rules, record):
            if (
                transition == "fixed"
                and rule.group_wait > 0
                and outbox.supersede_waiting_breakage(conn, record["source"], record["pipeline"], record["branch"], now)
            ):
                continue
            for sink in rule.sinks:
                self._add(conn, rule, sink, transition, record, now)

    def _add(
        self, conn: sqlite3.Connection, rule: RuleConfig, sink: str, transition: str, record: dict[str, Any], now: float
    ) -> None:
        key = (rule.name, sink, record["source"], record["pipeline"], record["branch"])
        if transition == "still_failing":
            last = outbox.last_failure_notice(conn, *key)
            if last is not None and now - last < rule.repeat_interval:
                return
        silence = outbox.active_silence(conn, record["source"], record["pipeline"], record["branch"], now)
        payload = {field: record.get(field) for field in NOTIFICATION_FIELDS} | {"transition": transition}
        outbox.insert(
            conn,
            {
                "sink": sink,
                "rule": rule.name,
                "transition": transition,
                "source": record["source"],
                "pipeline": record["pipeline"],
                "branch": record["branch"],
                "run": record["id"],
                "sha": record.get("sha"),
                "group_key": f"{rule.name}|{sink}|{record.get('sha')}" if rule.group_wait > 0 else None,
                "dedupe_key": f"{record['id']}|{record.get('finished_at')}|{transition}|{rule.name}|{sink}",
                "state": "suppressed" if silence else "pending",
                "last_error": f"silenced by silence {silence}" if silence else None,
                "created_at": now,
                "due_at": now + rule.group_wait,
                "attempts": 0,
                "payload": json.dumps(payload),
            },
        )
