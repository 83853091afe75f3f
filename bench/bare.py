"""The ceiling: a bare aiohttp server doing no work.

``GET|POST /`` answers an empty 200 (the body of a form POST is not even
parsed); ``GET /ws`` is a websocket that sends every text frame straight back.
Same aiohttp, same event loop (the default asyncio one, as ``crm-hub serve``),
same ``web.run_app`` settings as the hub, so the only difference left is the
work the hub does per message.

    python bench/bare.py --port 8099
"""

from __future__ import annotations

import argparse

from aiohttp import WSMsgType, web


async def empty(request: web.Request) -> web.Response:
    return web.Response()


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/", empty)
    app.router.add_route("POST", "/", empty)
    app.router.add_route("GET", "/ws", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
