"""/api/v1 as a whole: the bearer token on every route, and JSON errors for everything that goes wrong."""

from __future__ import annotations

import pytest

from flowforged import api as api_module
from flowforged.api.auth import FailedTokens
from tests.api.client import DOC, PREFIX, concrete, start
from tests.conftest import API_TOKEN

# --- authentication -------------------------------------------------------------------------------


async def test_every_route_needs_the_bearer_token(api, caplog):
    api.context.failed_tokens = FailedTokens(limit=1000)  # this test is not about guessing
    routes = [(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops if p != "/openapi.json"]
    assert len(routes) == len(api_module.ROUTES)
    for method, path in routes:
        for token in (None, "wrong-token", API_TOKEN + "x", ""):
            reply = await api.call(method, concrete(path), token=token)
            assert reply.status == 401, (method, path, token)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert reply.body["error"]["code"] == "unauthorized"
        response = await api.client.request(
            method, PREFIX + concrete(path), headers={"Authorization": f"Basic {API_TOKEN}"}
        )
        assert response.status == 401
    assert API_TOKEN not in caplog.text and "wrong-token" not in caplog.text  # no token given is logged


async def test_document_is_public_and_lists_exactly_the_routes(api):
    response = await api.client.get(PREFIX + "/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served["openapi"].startswith("3.1") and served == DOC
    assert served["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The daemon's `api.token`.",
    }
    routes = {
        (r.method, r.resource.canonical)
        for r in api.client.app[api_module.API].router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m.upper(), PREFIX + p) for p, ops in DOC["paths"].items() for m in ops}
    assert routes == documented


def test_document_refs_and_path_parameters_resolve():
    schemas = DOC["components"]["schemas"]

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                assert node["$ref"].removeprefix("#/components/schemas/") in schemas, node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOC)
    for path, operations in DOC["paths"].items():
        for method, op in operations.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == ({"id"} if "{id}" in path else set()), (method, path)
            if path != "/openapi.json":
                assert {"401", "500", "503"} <= set(op["responses"]), (method, path)


async def test_api_without_a_token_configured_is_disabled(aiohttp_client, db_path):
    api = await start(aiohttp_client, db_path, api={})
    reply = await api.get("/runs")
    assert (reply.status, reply.body) == (
        503,
        {"error": {"code": "api_disabled", "message": "set api.token in the config"}},
    )
    assert (await api.client.get(PREFIX + "/openapi.json")).status == 200


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/runs", {"limit": "abc"}, "limit"),
        ("/runs", {"limit": "0"}, "limit"),
        ("/runs", {"limit": "501"}, "limit"),
        ("/runs", {"status": "bogus"}, "status"),
        ("/runs", {"cursor": "!!"}, "cursor"),
        ("/runs", {"stauts": "failed"}, "stauts"),
        ("/events", {"kind": "step"}, "kind"),
        ("/events", {"after": "-1"}, "after"),
        ("/notifications", {"state": "lost"}, "state"),
        ("/silences", {"all": "yes"}, "all"),
        ("/runs/abc", {}, "id"),
        ("/pipelines", {"cursor": "bm9wZTox"}, "cursor"),
    ],
)
async def test_bad_parameters_are_400_naming_them(api, path, params, named):
    reply = await api.get(path, **params)
    assert reply.status == 400
    assert reply.body["error"]["code"] == "invalid_parameter"
    assert reply.body["error"]["message"].startswith(f"{named}:")


async def test_a_cursor_of_another_list_is_refused(api):
    await api.seed()
    cursor = (await api.get("/runs", limit=1)).body["next_cursor"]
    assert (await api.get("/events", cursor=cursor)).status == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/runs/999"),
        ("POST", "/runs/999/rerun"),
        ("POST", "/runs/999/cancel"),
        ("GET", "/pipelines/999"),
        ("POST", "/notifications/999/retry"),
        ("GET", "/silences/999"),
        ("POST", "/silences/999/expire"),
        ("GET", "/nothing-here"),
    ],
)
async def test_unknown_ids_and_paths_are_404_json(api, method, path):
    reply = await api.call(method, path)
    assert reply.status == 404 and reply.body["error"]["code"] == "not_found"
    assert api.operations.calls == []


async def test_unknown_pipeline_trigger_is_404(api):
    reply = await api.post("/pipelines/999/trigger", {"ref": "main"})
    assert reply.status == 404 and api.operations.calls == []


async def test_wrong_method_is_405_json(api):
    reply = await api.call("DELETE", "/runs")
    assert reply.status == 405 and reply.body["error"]["code"] == "method_not_allowed"
    assert "GET" in reply.headers["Allow"]


async def test_an_unexpected_failure_is_a_logged_500_without_a_traceback(api, caplog):
    api.operations.error = RuntimeError("boom in the poller")
    reply = await api.get("/sources")
    assert reply.status == 500
    assert reply.body == {"error": {"code": "internal", "message": "internal error; the daemon's log has the details"}}
    assert any(r.exc_info and str(r.exc_info[1]) == "boom in the poller" for r in caplog.records)
