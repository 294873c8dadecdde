"""The baseline: a bare aiohttp app that reads the body and answers 200. Same Python, same host."""

import sys

from aiohttp import web


async def hook(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


app = web.Application(client_max_size=26214400)
app.router.add_post("/hooks/{source}", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
