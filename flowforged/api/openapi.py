"""The OpenAPI 3.1 document of `/api/v1`, served at `GET /api/v1/openapi.json`.

Its schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect); tests/api/ validates every
response the tests receive against them, so the document says what the server does.
"""

from __future__ import annotations

import copy
import functools

from flowforged import __version__
from flowforged.api.base import DEFAULT_LIMIT, MAX_LIMIT, PREFIX
from flowforged.api.schemas import CURSOR, STATUS, STRING, Schema, components, obj, ref
from flowforged.store.outbox import STATES


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list(key: str, item: str, paged: bool = True) -> Schema:
    properties = {key: {"type": "array", "items": ref(item)}}
    if paged:
        properties["next_cursor"] = CURSOR
    return obj(properties)


def _query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or STRING}


PAGE = [
    _query(
        "limit",
        f"Items per page (default {DEFAULT_LIMIT}).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    _query("cursor", "The `next_cursor` of the previous page."),
]
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
SOURCE = _query("source", "Only this source.")
EVENT_FILTERS = [
    SOURCE,
    _query("run_id", "Only the events of this run (the provider's run id)."),
    _query("kind", "Only run or only job events.", {"type": "string", "enum": ["run", "job"]}),
]


def _body(name: str, required: bool = False) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": ref(name)}}}


def _op(
    summary: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    bad: bool = True,
    missing: str | None = None,
    description: str | None = None,
) -> Schema:
    """An operation with the errors every one of them can answer."""
    out: Schema = {"summary": summary, "parameters": parameters or [], "responses": dict(responses)}
    if description:
        out["description"] = description
    if body is not None:
        out["requestBody"] = body
    if bad:
        out["responses"]["400"] = _error("A query parameter, path id or body field is invalid; the message names it.")
    out["responses"]["401"] = _error("No bearer token, or a wrong one (with `WWW-Authenticate: Bearer`).")
    if missing:
        out["responses"].setdefault("404", _error(f"No {missing} with that id."))
    out["responses"]["500"] = _error("An internal error (code `internal`); the daemon's log has the details.")
    out["responses"]["503"] = _error(
        "`api_disabled`: no api.token in the config; `store_unavailable`: the "
        "store cannot commit; `rate_limited`: the provider's budget is spent "
        "(with Retry-After)."
    )
    return out


PROVIDER = {
    "403": _error("The provider refused: the source's API token may not do this."),
    "409": _error(
        "The provider says it cannot be done now (e.g. cancel a finished run), or the source is no "
        "longer configured (`unknown_source`), or it has no API token (`no_api_token`)."
    ),
    "404": _error("No such run or pipeline here, or the provider does not know it (or the token cannot see it)."),
    "501": _error("The provider cannot do this (`not_supported`), e.g. a force-cancel where it has none."),
    "502": _error("The provider failed, or rejected the source's API token (`provider_auth_failed`)."),
}


def _paths() -> dict[str, Schema]:
    run_detail = obj(
        {
            "run": ref("Run"),
            "jobs": {"type": "array", "items": ref("Job")},
            "events": {"type": "array", "items": ref("Event")},
        }
    )
    return {
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _ok("OpenAPI 3.1, served without a token: it holds no data.", {"type": "object"})},
            }
        },
        "/sources": {
            "get": _op(
                "Every configured source, its webhook path, polling and API state",
                {"200": _ok("The sources, by name.", _list("sources", "Source", paged=False))},
            )
        },
        "/pipelines": {
            "get": _op(
                "Pipelines seen, oldest first, with each branch's last decisive status",
                {"200": _ok("A page.", _list("pipelines", "Pipeline"))},
                parameters=[SOURCE, *PAGE],
            )
        },
        "/pipelines/{id}": {
            "get": _op(
                "One pipeline",
                {"200": _ok("It.", obj({"pipeline": ref("Pipeline")}))},
                parameters=[ID],
                missing="pipeline",
            )
        },
        "/pipelines/{id}/trigger": {
            "post": _op(
                "Start a run of the pipeline on a ref",
                {
                    "202": _ok(
                        "The provider accepted; `run` is null when it does not say which run it started.",
                        ref("TriggerAccepted"),
                    ),
                    **PROVIDER,
                },
                parameters=[ID],
                body=_body("TriggerRequest", required=True),
                missing="pipeline",
            )
        },
        "/runs": {
            "get": _op(
                "Runs, newest first",
                {"200": _ok("A page.", _list("runs", "Run"))},
                parameters=[
                    SOURCE,
                    _query("pipeline", "Only this pipeline."),
                    _query("branch", "Only this branch."),
                    _query("status", "Only runs in this status.", STATUS),
                    *PAGE,
                ],
            )
        },
        "/runs/{id}": {
            "get": _op(
                "One run with its jobs and its events (oldest first)",
                {"200": _ok("It.", run_detail)},
                parameters=[ID],
                missing="run",
            )
        },
        "/runs/{id}/rerun": {
            "post": _op(
                "Re-run the run, or only its failed jobs",
                {"202": _ok("The provider accepted.", ref("Accepted")), **PROVIDER},
                parameters=[ID],
                body=_body("RerunRequest"),
                missing="run",
            )
        },
        "/runs/{id}/cancel": {
            "post": _op(
                "Cancel the run",
                {"202": _ok("The provider accepted.", ref("Accepted")), **PROVIDER},
                parameters=[ID],
                body=_body("CancelRequest"),
                missing="run",
            )
        },
        "/events": {
            "get": _op(
                "The event log",
                {"200": _ok("A page.", _list("events", "Event"))},
                parameters=[
                    *EVENT_FILTERS,
                    *PAGE,
                    _query(
                        "after",
                        "Oldest first, from after this event id (not with cursor).",
                        {"type": "integer", "minimum": 0},
                    ),
                ],
                description="Newest first. With `after`, oldest first from that event id: `next_cursor` is null once "
                "caught up; ask again with after=<the last id seen>.",
            )
        },
        "/events/stream": {
            "get": _op(
                "New events as server-sent events",
                {
                    "200": {
                        "description": "`text/event-stream`: per event `id: <id>` and `data: <an Event as JSON>`; a "
                        "`: keepalive` comment every 15 s of silence.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                parameters=[
                    *EVENT_FILTERS,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Replay the stored events after this id first, then follow.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    _query(
                        "after",
                        "Same as Last-Event-ID, for clients that cannot set headers.",
                        {"type": "integer", "minimum": 0},
                    ),
                ],
            )
        },
        "/notifications": {
            "get": _op(
                "Notifications (the outbox), newest first",
                {"200": _ok("A page.", _list("notifications", "Notification"))},
                parameters=[_query("state", "Only this state.", {"type": "string", "enum": list(STATES)}), *PAGE],
            )
        },
        "/notifications/{id}/retry": {
            "post": _op(
                "Send a dead, suppressed or pending notification again, now",
                {
                    "202": _ok("Queued for its sink.", obj({"notification": ref("Notification")})),
                    "409": _error("Already sent or superseded (`not_retryable`)."),
                },
                parameters=[ID],
                missing="notification",
            )
        },
        "/silences": {
            "get": _op(
                "Active silences",
                {"200": _ok("Them.", _list("silences", "Silence", paged=False))},
                parameters=[_query("all", "Expired ones too.", {"type": "boolean", "default": False})],
            ),
            "post": _op(
                "Silence notifications of some sources/pipelines/branches (globs) until a time",
                {
                    "201": {
                        **_ok("Added; `Location` is its URL.", obj({"silence": ref("Silence")})),
                        "headers": {"Location": {"schema": STRING}},
                    }
                },
                body=_body("SilenceRequest"),
            ),
        },
        "/silences/{id}": {
            "get": _op(
                "One silence, active or not",
                {"200": _ok("It.", obj({"silence": ref("Silence")}))},
                parameters=[ID],
                missing="silence",
            )
        },
        "/silences/{id}/expire": {
            "post": _op(
                "End a silence now (expiring an ended one changes nothing)",
                {"200": _ok("It, ended.", obj({"silence": ref("Silence")}))},
                parameters=[ID],
                missing="silence",
            )
        },
    }


@functools.cache
def _document() -> Schema:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "FlowForge control API",
            "version": __version__,
            "description": "What flowforged knows about CI runs, and the operations it can ask of the providers. "
            'Every error is `{"error": {"code", "message"}}`; an unknown path answers 404 '
            "and a known path with another method 405, both in that shape. This document is "
            "served without a token.",
        },
        "servers": [{"url": PREFIX}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The daemon's `api.token`."}
            },
            "schemas": components(),
        },
    }


def document() -> Schema:
    """A copy: callers may change it."""
    return copy.deepcopy(_document())
