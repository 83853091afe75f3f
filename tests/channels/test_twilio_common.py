"""What a failed request to Twilio means for the message: a request that never
got there (refused, unknown host) was not sent; a timeout or a connection
dropped once the request was written may have been."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from channels.twilio_common import NOT_REACHED, send_failure
from tests.hub.twilio_helpers import free_port


async def _failure(url: str) -> BaseException:
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(url, data={"To": "+15550001111"}) as r:
                await r.read()
        except aiohttp.ClientError as exc:
            return exc
    raise AssertionError("the request did not fail")


async def test_a_refused_connection_was_not_sent() -> None:
    exc = await _failure(f"http://127.0.0.1:{free_port()}/Messages.json")
    result = send_failure(exc, 15)
    assert result.retryable and result.extras == {NOT_REACHED: True}
    assert result.reason and result.reason.startswith(
        "Twilio could not be reached, nothing was sent: ClientConnectorError"
    )


async def test_a_dropped_connection_or_a_timeout_may_have_been_sent() -> None:
    async def drop(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/Messages.json", drop)
    async with TestServer(app, host="127.0.0.1") as server:
        exc = await _failure(str(server.make_url("/Messages.json")))
    assert isinstance(exc, aiohttp.ServerDisconnectedError)
    dropped = send_failure(exc, 15)
    assert dropped.retryable and NOT_REACHED not in dropped.extras
    timed_out = send_failure(TimeoutError(), 15)
    assert timed_out.retryable and NOT_REACHED not in timed_out.extras
    assert timed_out.reason == "Twilio did not answer within 15 s"
