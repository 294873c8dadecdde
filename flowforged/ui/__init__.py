"""The web board: every pipeline of every source on one page, a page per pipeline and per run, the
operations and silences, updated live from the event stream (docs/architecture.md, "Web board").

Pages are rendered on the server with Jinja2; the one script (static/live.js) only follows the event
stream and swaps in fragments the server rendered. Everything is served by the daemon itself, behind
the sign-in of flowforged.ui.access.
"""

from __future__ import annotations

from aiohttp import web

from flowforged.ui.access import OPERATOR, VIEWER, protect

__all__ = ["setup"]


def setup(app: web.Application) -> None:
    """Add the board's routes to the daemon's application (after the control API: it reuses its context)."""
    import aiohttp_jinja2
    import jinja2

    from flowforged.api import API, CONTEXT
    from flowforged.app import CONFIG, STORE
    from flowforged.ui import access, board, chart, operations, pages, signin
    from flowforged.ui.tiles import Tiles
    from flowforged.webhooks import INGEST

    config = app[CONFIG]
    if not config.ui.enabled:
        return
    # The board's handlers use the API's lookups (flowforged.api.reads), which read its context.
    app[CONTEXT] = app[API][CONTEXT]
    app[access.ACCESS] = access.Access(lambda: app[CONFIG], access.Sessions(config.ui.session_lifetime))
    app[pages.TILES] = tiles = Tiles(app[STORE], lambda: app[CONFIG])
    app[INGEST].listeners.append(tiles.ingested)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("flowforged.ui", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=board.ago, duration=board.duration, strip=chart.strip)
    get = [
        ("/", pages.board_page, "page"),
        ("/pipelines/{id}", pages.pipeline_page, "page"),
        ("/runs/{id}", pages.run_page, "page"),
        ("/silences", pages.silences_page, "page"),
        ("/ui/tiles", pages.tile_fragment, "fragment"),
        ("/ui/events", pages.events, "stream"),
        ("/ui/static/{name}", pages.static, "asset"),
    ]
    for path, handler, kind in get:
        app.router.add_get(path, protect(operations.answers_errors(handler), kind=kind), allow_head=kind != "stream")
    post = [
        ("/runs/{id}/rerun", operations.rerun),
        ("/runs/{id}/cancel", operations.cancel),
        ("/pipelines/{id}/trigger", operations.trigger),
        ("/silences", operations.add_silence),
        ("/silences/{id}/expire", operations.expire_silence),
    ]
    for path, handler in post:
        app.router.add_post(path, protect(handler, role=OPERATOR, kind="form"))
    app.router.add_get("/signin", signin.form)
    app.router.add_post("/signin", signin.sign_in)
    app.router.add_post("/signout", protect(signin.sign_out, role=VIEWER, kind="form"))
