"""The JSON Schemas (2020-12, OpenAPI 3.1's dialect) of what /api/v1 answers and accepts."""

from __future__ import annotations

from typing import Any

from flowforged.model import Status, Transition
from flowforged.store.outbox import STATES

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    out = dict(schema, type=[schema["type"], "null"])
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def obj(
    properties: dict[str, Schema],
    required: list[str] | None = None,
    *,
    extra: bool = False,
    description: str | None = None,
) -> Schema:
    out: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }
    if description:
        out["description"] = description
    return out


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
CURSOR: Schema = nullable({"type": "string", "description": "Pass as `cursor` for the next page; null on the last."})
STATUS: Schema = {"type": "string", "enum": [s.value for s in Status]}
GLOBS: Schema = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "default": ["*"]}


def components() -> dict[str, Schema]:
    """components/schemas: what the API answers and accepts."""
    return {
        "Error": obj(
            {
                "error": obj(
                    {
                        "code": {"type": "string", "description": "Stable, for programs."},
                        "message": {"type": "string", "description": "For people."},
                    }
                )
            }
        ),
        "Source": obj(
            {
                "name": STRING,
                "type": {"type": "string", "description": "The provider plugin: github, gitlab, ..."},
                "webhook": obj(
                    {
                        "path": {"type": "string", "description": "Where the provider posts: /hooks/{name}."},
                        "authenticated": BOOLEAN,
                    }
                ),
                "polling": obj(
                    {
                        "enabled": BOOLEAN,
                        "interval_seconds": NUMBER,
                        "last_poll_at": nullable(TIME),
                        "last_ok_at": nullable(TIME),
                        "last_error": nullable(STRING),
                        "next_poll_at": nullable(TIME),
                    }
                ),
                "api": obj(
                    {
                        "url": nullable(STRING),
                        "token_configured": BOOLEAN,
                        "rate_limit_remaining": nullable(INTEGER),
                        "rate_limited_until": nullable(TIME),
                        "requests": {
                            "type": "object",
                            "additionalProperties": INTEGER,
                            "description": "Provider API requests by outcome since start.",
                        },
                    }
                ),
                "repos": {"type": "array", "items": STRING},
            }
        ),
        "BranchState": obj(
            {
                "branch": nullable({"type": "string", "description": "null: runs of no branch (tags)."}),
                "status": {
                    "type": "string",
                    "enum": ["success", "failed"],
                    "description": "The last decisive (success or failed) status.",
                },
                "run": nullable(INTEGER),
                "consecutive_failures": INTEGER,
                "since": nullable(TIME),
            }
        ),
        "Pipeline": obj(
            {
                "id": INTEGER,
                "source": STRING,
                "pipeline": {
                    "type": "string",
                    "description": "GitHub: owner/repo/workflow path; GitLab: project path.",
                },
                "name": nullable(STRING),
                "repo": nullable(STRING),
                "default_branch": nullable(STRING),
                "first_seen": nullable(TIME),
                "last_seen": nullable(TIME),
                "branches": {"type": "array", "items": ref("BranchState")},
            }
        ),
        "Run": obj(
            {
                "id": INTEGER,
                "source": STRING,
                "pipeline": STRING,
                "run_id": {"type": "string", "description": "The provider's id."},
                "attempt": INTEGER,
                "branch": nullable(STRING),
                "sha": nullable(STRING),
                "status": STATUS,
                "provider_status": nullable(STRING),
                "url": nullable(STRING),
                "started_at": nullable(TIME),
                "finished_at": nullable(TIME),
                "duration_seconds": nullable(NUMBER),
                "transition": nullable({"type": "string", "enum": [t.value for t in Transition]}),
                "number": nullable(INTEGER),
                "created_at": nullable(TIME),
                "updated_at": TIME,
                "queue_seconds": nullable(NUMBER),
                "commit_message": nullable(STRING),
                "author": nullable(STRING),
                "trigger": nullable(STRING),
            },
            description="The fields of `flowforged runs --json`.",
        ),
        "TriggeredRun": {
            "type": "object",
            "additionalProperties": True,
            "description": "What the provider said about the run it started, in Run field names.",
        },
        "Job": obj(
            {
                "id": INTEGER,
                "job_id": STRING,
                "name": nullable(STRING),
                "stage": nullable(STRING),
                "status": STATUS,
                "provider_status": nullable(STRING),
                "url": nullable(STRING),
                "started_at": nullable(TIME),
                "finished_at": nullable(TIME),
                "updated_at": TIME,
            }
        ),
        "Event": obj(
            {
                "id": {"type": "integer", "description": "Increases with each stored event: the SSE id."},
                "type": {"const": "event"},
                "origin": nullable({"type": "string", "enum": ["webhook", "poll"]}),
                "kind": {"type": "string", "enum": ["run", "job"]},
                "source": STRING,
                "pipeline": STRING,
                "run_id": STRING,
                "attempt": INTEGER,
                "job_id": STRING,
                "name": STRING,
                "status": STATUS,
                "provider_status": STRING,
                "updated_at": TIME,
                "branch": STRING,
                "sha": STRING,
                "url": STRING,
            },
            ["id", "type", "origin", "kind", "source", "run_id", "attempt", "status", "provider_status", "updated_at"],
            extra=True,
            description="One observed state of a run or a job; absent fields are unknown.",
        ),
        "Notification": obj(
            {
                "id": INTEGER,
                "sink": STRING,
                "rule": STRING,
                "transition": {"type": "string", "enum": [t.value for t in Transition]},
                "source": STRING,
                "pipeline": STRING,
                "branch": nullable(STRING),
                "run": nullable(INTEGER),
                "sha": nullable(STRING),
                "state": {"type": "string", "enum": list(STATES)},
                "created_at": TIME,
                "due_at": TIME,
                "attempts": nullable(INTEGER),
                "last_error": nullable(STRING),
                "sent_at": nullable(TIME),
                "answer": nullable(STRING),
            }
        ),
        "Silence": obj(
            {
                "id": INTEGER,
                "sources": {"type": "array", "items": STRING},
                "pipelines": {"type": "array", "items": STRING},
                "branches": {"type": "array", "items": STRING},
                "until": TIME,
                "comment": nullable(STRING),
                "created_at": TIME,
                "expired_at": nullable(TIME),
                "active": BOOLEAN,
            }
        ),
        "Accepted": obj({"status": {"const": "accepted"}, "action": {"enum": ["rerun", "cancel"]}, "run": ref("Run")}),
        "TriggerAccepted": obj(
            {"status": {"const": "accepted"}, "action": {"const": "trigger"}, "run": nullable(ref("TriggeredRun"))}
        ),
        "RerunRequest": obj(
            {"failed_only": dict(BOOLEAN, default=False, description="Only the failed jobs, where the provider can.")},
            [],
        ),
        "CancelRequest": obj(
            {"force": dict(BOOLEAN, default=False, description="Force-cancel (GitHub), where the provider can.")}, []
        ),
        "TriggerRequest": obj(
            {
                "ref": {"type": "string", "minLength": 1, "description": "Branch or tag to run on."},
                "inputs": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean"]},
                    "description": "GitHub workflow_dispatch inputs; GitLab pipeline variables.",
                },
            },
            ["ref"],
        ),
        "SilenceRequest": obj(
            {
                "sources": GLOBS,
                "pipelines": GLOBS,
                "branches": GLOBS,
                "until": {
                    "type": "string",
                    "default": "2h",
                    "description": "A duration from now (30m, 2h, 1d) or an ISO 8601 time with its offset.",
                },
                "comment": {"type": "string", "default": ""},
            },
            [],
        ),
    }
