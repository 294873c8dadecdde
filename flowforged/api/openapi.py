"""The OpenAPI 3.1 document of `/api/v1`, served at `GET /api/v1/openapi.json`.

Its schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect), generated from the pydantic models the
handlers validate requests and serialize answers with (flowforged.api.schemas); tests/api/ validates
every response the tests receive against them and schemathesis fuzzes the daemon from it.
"""

from __future__ import annotations

import copy
import functools

from flowforged import __version__
from flowforged.api import bodies
from flowforged.api import schemas as models
from flowforged.api.base import DEFAULT_LIMIT, MAX_ID, MAX_LIMIT, PREFIX, cursor_pattern
from flowforged.api.schemas import Schema, components, ref
from flowforged.model import Status
from flowforged.store.outbox import STATES

STRING: Schema = {"type": "string"}
INTEGER_ID: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_ID}


def _error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ref(models.Error)}}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or STRING}


def _page(*kinds: str) -> list[Schema]:
    return [
        _query(
            "limit",
            f"Items per page (default {DEFAULT_LIMIT}).",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        ),
        _query(
            "cursor",
            "The `next_cursor` of the previous page.",
            {"type": "string", "pattern": cursor_pattern(*kinds)},
        ),
    ]


ID = {"name": "id", "in": "path", "required": True, "schema": INTEGER_ID}
SOURCE = _query("source", "Only this source.")
EVENT_FILTERS = [
    SOURCE,
    _query("run_id", "Only the events of this run (the provider's run id)."),
    _query("kind", "Only run or only job events.", {"type": "string", "enum": ["run", "job"]}),
]


def _body(model: type[bodies.Request], required: bool = False) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": ref(model)}}}


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
    out["responses"]["429"] = {
        **_error("Too many wrong bearer tokens from this address: retry after `Retry-After` seconds."),
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
    }
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
    "422": _error(
        "The source's provider cannot honour an option (`not_supported`); the message names it, e.g. `force`"
        " where the provider has no forced cancel. Each source's `capabilities` say what it can do."
    ),
    "501": _error("The provider plugin cannot do this (`not_supported`)."),
    "502": _error("The provider failed, or rejected the source's API token (`provider_auth_failed`)."),
}


def _paths() -> dict[str, Schema]:
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
                {"200": _ok("The sources, by name.", ref(models.SourceList))},
            )
        },
        "/pipelines": {
            "get": _op(
                "Pipelines seen, oldest first, with each branch's last decisive status",
                {"200": _ok("A page.", ref(models.PipelinePage))},
                parameters=[SOURCE, *_page("pipelines")],
            )
        },
        "/pipelines/{id}": {
            "get": _op(
                "One pipeline",
                {"200": _ok("It.", ref(models.OnePipeline))},
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
                        ref(models.TriggerAccepted),
                    ),
                    **PROVIDER,
                },
                parameters=[ID],
                body=_body(bodies.TriggerRequest, required=True),
                missing="pipeline",
            )
        },
        "/runs": {
            "get": _op(
                "Runs, newest first",
                {"200": _ok("A page.", ref(models.RunPage))},
                parameters=[
                    SOURCE,
                    _query("pipeline", "Only this pipeline."),
                    _query("branch", "Only this branch."),
                    _query(
                        "status", "Only runs in this status.", {"type": "string", "enum": [s.value for s in Status]}
                    ),
                    *_page("runs"),
                ],
            )
        },
        "/runs/{id}": {
            "get": _op(
                "One run with its jobs and its events (oldest first)",
                {"200": _ok("It.", ref(models.RunDetail))},
                parameters=[ID],
                missing="run",
            )
        },
        "/runs/{id}/rerun": {
            "post": _op(
                "Re-run the run, or only its failed jobs",
                {"202": _ok("The provider accepted.", ref(models.Accepted)), **PROVIDER},
                parameters=[ID],
                body=_body(bodies.RerunRequest),
                missing="run",
            )
        },
        "/runs/{id}/cancel": {
            "post": _op(
                "Cancel the run",
                {"202": _ok("The provider accepted.", ref(models.Accepted)), **PROVIDER},
                parameters=[ID],
                body=_body(bodies.CancelRequest),
                missing="run",
            )
        },
        "/events": {
            "get": _op(
                "The event log",
                {"200": _ok("A page.", ref(models.EventPage))},
                parameters=[
                    *EVENT_FILTERS,
                    *_page("events", "events.after"),
                    _query(
                        "after",
                        "Oldest first, from after this event id; with a cursor, a lower bound of its pages.",
                        INTEGER_ID,
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
                        "schema": INTEGER_ID,
                    },
                    _query("after", "Same as Last-Event-ID, for clients that cannot set headers.", INTEGER_ID),
                ],
            )
        },
        "/notifications": {
            "get": _op(
                "Notifications (the outbox), newest first",
                {"200": _ok("A page.", ref(models.NotificationPage))},
                parameters=[
                    _query("state", "Only this state.", {"type": "string", "enum": list(STATES)}),
                    *_page("notifications"),
                ],
            )
        },
        "/notifications/{id}/retry": {
            "post": _op(
                "Send a dead, suppressed or pending notification again, now",
                {
                    "202": _ok("Queued for its sink.", ref(models.OneNotification)),
                    "409": _error("Already sent or superseded (`not_retryable`)."),
                },
                parameters=[ID],
                body=_body(bodies.EmptyRequest),
                missing="notification",
            )
        },
        "/silences": {
            "get": _op(
                "Active silences",
                {"200": _ok("Them.", ref(models.SilenceList))},
                parameters=[_query("all", "Expired ones too.", {"type": "boolean", "default": False})],
            ),
            "post": _op(
                "Silence notifications of some sources/pipelines/branches (globs) until a time",
                {
                    "201": {
                        **_ok("Added; `Location` is its URL.", ref(models.OneSilence)),
                        "headers": {"Location": {"schema": STRING}},
                    },
                    "422": _error("`until` is not in the future, or too far in it."),
                },
                body=_body(bodies.SilenceRequest),
            ),
        },
        "/silences/{id}": {
            "get": _op(
                "One silence, active or not",
                {"200": _ok("It.", ref(models.OneSilence))},
                parameters=[ID],
                missing="silence",
            )
        },
        "/silences/{id}/expire": {
            "post": _op(
                "End a silence now (expiring an ended one changes nothing)",
                {"200": _ok("It, ended.", ref(models.OneSilence))},
                parameters=[ID],
                body=_body(bodies.EmptyRequest),
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
