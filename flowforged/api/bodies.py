"""The request bodies /api/v1 accepts, as the pydantic models that validate them (and from which
flowforged.api.openapi generates their schemas)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema


class Request(BaseModel):
    """A request body: every field typed as documented, and a key it does not know is an error, so
    that a misspelt option (`failedOnly`) is not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
Globs = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(min_length=1, description="Glob patterns (fnmatch); `*` matches everything."),
]


class TriggerRequest(Request):
    ref: Text = Field(description="Branch or tag to run on.")
    inputs: dict[str, str | int | float | bool] = Field(
        default={},
        description="What the pipeline declares it takes: GitHub workflow_dispatch inputs, GitLab spec:inputs,"
        " Jenkins build parameters; Buildkite takes `commit` and `message`, any other input becomes an"
        " environment variable of the build.",
    )
    variables: dict[str, str] = Field(
        default={},
        description="CI/CD variables: GitLab pipeline variables, the Buildkite build's environment. A"
        " provider without them (GitHub, Jenkins) answers 422.",
    )


class RerunRequest(Request):
    failed_only: bool | None = Field(
        default=None,
        description="true: only the failed jobs (GitHub, GitLab, Buildkite); false: every job (GitHub,"
        " Buildkite, Jenkins). Absent: every job where the provider can, else the failed ones (GitLab"
        " re-runs only failed and cancelled jobs). A provider that cannot do what is asked answers 422.",
    )


class CancelRequest(Request):
    force: bool = Field(
        default=False,
        description="Stop at once, without the cleanup a cancel allows (GitHub force-cancel, Jenkins term)."
        " A provider without it (GitLab, Buildkite) answers 422.",
    )


# `flowforged silence add --until` takes the same (flowforged.config.parse_duration), spaces aside.
DURATION = r"^[0-9]+(\.[0-9]+)?$|^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"
RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"


def _until(value: str) -> str:
    if not (re.fullmatch(DURATION, value) or re.fullmatch(RFC3339, value)):
        raise ValueError("expected a duration (30m, 2h, 1d) or an RFC 3339 time with its offset")
    return value


Until = Annotated[
    str,
    AfterValidator(_until),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": DURATION}, {"type": "string", "format": "date-time"}],
            "description": "A duration from now (30m, 2h, 1d) or an RFC 3339 time with its offset; in the future"
            " (else 422).",
        }
    ),
]


class SilenceRequest(Request):
    sources: Globs = Field(default=["*"])
    pipelines: Globs = Field(default=["*"])
    branches: Globs = Field(default=["*"])
    until: Until = "2h"
    comment: str = ""


class EmptyRequest(Request):
    """Operations that take no options: an empty body, or `{}`."""


REQUESTS: tuple[type[Request], ...] = (TriggerRequest, RerunRequest, CancelRequest, SilenceRequest, EmptyRequest)
