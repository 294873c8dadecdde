"""The normalized model every provider parses into (docs/architecture.md, "Plugins").

An event checks its own fields when it is made: a payload of an unexpected shape (an object where
text belongs, a number beyond 64 bits, text that is not valid Unicode) fails in the provider's
normalize(), where it becomes a parse error stored with the raw delivery, never in the store.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import time
from datetime import UTC, datetime


class Status(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    BLOCKED = "blocked"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def decisive(self) -> bool:
        """A status that sets its pipeline's state (cancelled and skipped runs do not)."""
        return self in (Status.SUCCESS, Status.FAILED)


TERMINAL = frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED, Status.SKIPPED})
# How providers name a run of a proposed change: GitHub's `event` of a workflow run, GitLab's
# pipeline `source` (https://docs.gitlab.com/ee/ci/jobs/job_rules.html#ci_pipeline_source-predefined-variable).
PULL_REQUEST_TRIGGERS = frozenset(
    {"pull_request", "pull_request_target", "merge_request_event", "external_pull_request_event"}
)
INT64 = (-(2**63), 2**63 - 1)  # what SQLite stores as an integer


class Transition(enum.StrEnum):
    BROKEN = "broken"
    STILL_FAILING = "still_failing"
    FIXED = "fixed"


def next_transition(previous: Status | None, current: Status) -> Transition | None:
    """What a terminal run means for its pipeline+branch, given the previous decisive status."""
    if current is Status.FAILED:
        return Transition.STILL_FAILING if previous is Status.FAILED else Transition.BROKEN
    if current is Status.SUCCESS and previous is Status.FAILED:
        return Transition.FIXED
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class RunEvent:
    """One observed state of a run (one execution of a pipeline)."""

    source: str
    pipeline: str  # GitHub: owner/repo/workflow-path; GitLab: project path
    run_id: str  # the provider's id, as a string
    attempt: int
    status: Status
    provider_status: str  # the provider's own words, e.g. "completed/failure"
    updated_at: str  # ISO 8601 UTC, see iso()
    pipeline_name: str = ""
    branch: str | None = None
    sha: str | None = None
    url: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    repo: str | None = None
    default_branch: str | None = None
    commit_message: str | None = None
    author: str | None = None
    trigger: str | None = None  # push, schedule, merge_request_event, ...
    number: int | None = None  # run number / pipeline iid, for people
    # A run of a pull (merge) request: its number, when the provider names it.
    pull_request: int | None = None
    # The repository a pull request's run takes its commit from: a fork, or `repo` itself.
    head_repo: str | None = None
    # The provider's own figures, when it gives them (GitLab): they win over times subtracted.
    duration_seconds: float | None = None
    queue_seconds: float | None = None

    kind = "run"

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def proposed(self) -> bool:
        """A run of a proposed change (a pull request, or a fork's branch): it says nothing about the
        branches of the repository it would be merged into."""
        return self.pull_request is not None or self.head_repo is not None or self.trigger in PULL_REQUEST_TRIGGERS


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One observed state of a job inside a run."""

    source: str
    run_id: str
    attempt: int
    job_id: str
    name: str
    status: Status
    provider_status: str
    updated_at: str
    pipeline: str | None = None
    url: str | None = None
    stage: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    branch: str | None = None
    sha: str | None = None

    kind = "job"

    def __post_init__(self) -> None:
        check_fields(self)


Event = RunEvent | JobEvent
_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "Status": (Status,)}


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, tuple[type, ...], bool, str], ...]:
    """(name, allowed types, may be None, declared) of each field, read once from the annotations."""
    specs = []
    for field in dataclasses.fields(cls):
        declared = [part.strip() for part in str(field.type).split("|")]
        allowed = tuple(t for name in declared for t in _TYPES.get(name, ()))
        specs.append((field.name, allowed, "None" in declared, " or ".join(declared)))
    return tuple(specs)


def check_fields(event: RunEvent | JobEvent) -> None:
    """ValueError naming the first field whose value the store cannot hold as it is declared."""
    for name, allowed, optional, declared in _field_types(type(event)):
        value = getattr(event, name)
        if value is None:
            if optional:
                continue
            raise ValueError(f"{name}: missing")
        if value.__class__ is bool or not isinstance(value, allowed):
            raise ValueError(f"{name}: expected {declared}, got {type(value).__name__}")
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{name}: not valid Unicode (a lone surrogate)") from None
        elif isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"{name}: {value} is beyond 64 bits")


def iso(value: datetime) -> str:
    """Timestamps are stored as ISO 8601 UTC with a Z, so that they sort as text."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_time(value: str | int | float | None) -> str | None:
    """Any provider timestamp (ISO 8601, GitLab's "2016-08-12 15:23:28 UTC", epoch ms) to iso()."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) == 20 and value[10] == "T" and value[19] == "Z":
        return value  # already what iso() writes (GitHub's own format): the common case, made cheap
    if isinstance(value, int | float):
        return iso(datetime.fromtimestamp(value / 1000, UTC))
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4] + "+00:00"
    elif text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return iso(parsed)


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    delta = datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    return max(delta.total_seconds(), 0.0)
