"""What /api/v1 answers, as pydantic models: the handlers serialize every answer through them and
flowforged.api.openapi generates the document's schemas from them (and from flowforged.api.bodies for
what it accepts), so that the document cannot say something the code does not do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import models_json_schema

from flowforged.api.bodies import REQUESTS
from flowforged.api.times import Time, timestamp
from flowforged.model import Status, Transition
from flowforged.store.outbox import STATES

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"


# --- responses --------------------------------------------------------------------------------------


class Response(BaseModel):
    """An answer: built from store rows (extra columns are not shown), every field always present."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_serialization_defaults_required=True,
        json_schema_extra={"additionalProperties": False},
    )


class ErrorDetail(Response):
    code: str = Field(description="Stable, for programs.")
    message: str = Field(description="For people.")


class Error(Response):
    error: ErrorDetail


class Webhook(Response):
    path: str = Field(description="Where the provider posts: /hooks/{name}.")
    authenticated: bool


class Polling(Response):
    enabled: bool
    interval_seconds: float
    last_poll_at: Time = None
    last_ok_at: Time = None
    last_error: str | None = None
    next_poll_at: Time = None


class SourceApi(Response):
    url: str | None
    token_configured: bool
    rate_limit_remaining: int | None = None
    rate_limited_until: Time = None
    requests: dict[str, int] = Field(default_factory=dict, description="Provider API requests by outcome since start.")


class Capabilities(Response):
    """What the control API can ask of this source's provider; the rest answers 422."""

    trigger: bool
    inputs: bool
    variables: bool
    rerun: bool = Field(description="Re-run every job of a run.")
    rerun_failed: bool = Field(description="Re-run only the failed jobs.")
    cancel: bool
    force_cancel: bool


class Source(Response):
    name: str
    type: str = Field(description="The provider plugin: github, gitlab, ...")
    webhook: Webhook
    polling: Polling
    api: SourceApi
    capabilities: Capabilities
    repos: list[str]


class BranchState(Response):
    branch: str | None = Field(description="null: runs of no branch (tags).")
    status: Literal["success", "failed"] = Field(description="The last decisive (success or failed) status.")
    run: int | None
    consecutive_failures: int
    since: Time


class Pipeline(Response):
    id: int
    source: str
    pipeline: str = Field(description="GitHub: owner/repo/workflow path; GitLab: project path.")
    name: str | None
    repo: str | None
    default_branch: str | None
    first_seen: Time
    last_seen: Time
    branches: list[BranchState]


class Run(Response):
    """The fields of `flowforged runs --json`."""

    id: int
    source: str
    pipeline: str
    run_id: str = Field(description="The provider's id.")
    attempt: int
    branch: str | None
    sha: str | None
    status: Status
    provider_status: str | None
    url: str | None
    started_at: Time
    finished_at: Time
    duration_seconds: float | None
    transition: Transition | None
    number: int | None
    created_at: Time
    updated_at: Time
    queue_seconds: float | None
    commit_message: str | None
    author: str | None
    trigger: str | None
    pull_request: int | None = Field(default=None, description="The pull or merge request the run belongs to.")


class Job(Response):
    id: int
    job_id: str
    name: str | None
    stage: str | None
    status: Status
    provider_status: str | None
    url: str | None
    started_at: Time
    finished_at: Time
    updated_at: Time


class _TimesNormalized(BaseModel):
    """A provider's own words with extra keys kept: every `*_at` among them is a time too."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _times(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: timestamp(v) if k.endswith("_at") else v for k, v in data.items()}
        return data


class Event(_TimesNormalized):
    """One observed state of a run or a job; null fields are unknown, other keys may follow."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)

    id: int = Field(description="Increases with each stored event: the SSE id.")
    type: Literal["event"]
    origin: Literal["webhook", "poll"] | None = None
    kind: Literal["run", "job"]
    source: str
    pipeline: str | None = None
    run_id: str
    attempt: int
    job_id: str | None = None
    name: str | None = None
    status: Status
    provider_status: str
    updated_at: Time = None
    branch: str | None = None
    sha: str | None = None
    url: str | None = None


class TriggeredRun(_TimesNormalized):
    """What the provider said about the run it started (Run field names where it says them)."""

    run_id: str | None = None
    url: str | None = None


class Notification(Response):
    id: int
    sink: str
    rule: str
    transition: Transition
    source: str
    pipeline: str
    branch: str | None
    run: int | None
    sha: str | None
    state: Literal[STATES]  # type: ignore[valid-type]
    created_at: Time
    due_at: Time
    attempts: int | None
    last_error: str | None
    sent_at: Time
    answer: str | None


class Silence(Response):
    id: int
    sources: list[str]
    pipelines: list[str]
    branches: list[str]
    until: Time
    comment: str | None
    created_at: Time
    expired_at: Time
    active: bool


Cursor = Annotated[str | None, Field(description="Pass as `cursor` for the next page; null on the last.")]


class SourceList(Response):
    sources: list[Source]


class PipelinePage(Response):
    pipelines: list[Pipeline]
    next_cursor: Cursor


class OnePipeline(Response):
    pipeline: Pipeline


class RunPage(Response):
    runs: list[Run]
    next_cursor: Cursor


class RunDetail(Response):
    run: Run
    jobs: list[Job]
    events: list[Event]


class EventPage(Response):
    events: list[Event]
    next_cursor: Cursor


class NotificationPage(Response):
    notifications: list[Notification]
    next_cursor: Cursor


class OneNotification(Response):
    notification: Notification


class SilenceList(Response):
    silences: list[Silence]


class OneSilence(Response):
    silence: Silence


class Accepted(Response):
    status: Literal["accepted"]
    action: Literal["rerun", "cancel"]
    run: Run


class TriggerAccepted(Response):
    status: Literal["accepted"]
    action: Literal["trigger"]
    run: TriggeredRun | None


RESPONSES: tuple[type[BaseModel], ...] = (
    Error,
    SourceList,
    PipelinePage,
    OnePipeline,
    RunPage,
    RunDetail,
    EventPage,
    NotificationPage,
    OneNotification,
    SilenceList,
    OneSilence,
    Accepted,
    TriggerAccepted,
)


def ref(model: type[BaseModel]) -> Schema:
    return {"$ref": REF.format(model=model.__name__)}


def components() -> dict[str, Schema]:
    """components/schemas: generated from the models, requests as they are validated and responses
    as they are serialized."""
    pairs = [(model, "validation") for model in REQUESTS] + [(model, "serialization") for model in RESPONSES]
    _, schemas = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    return schemas["$defs"]
