"""One place where errors become HTTP answers: always JSON
``{"error": {"code", "message"}}`` with the right status."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from hub import metrics
from hub.errors import HubError, PayloadTooLarge

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
}


def error_response(status: int, code: str, message: str, details: object = None) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except HubError as exc:
        status = exc.status
        return web.json_response(exc.to_json(), status=exc.status, headers=exc.headers or None)
    except web.HTTPRequestEntityTooLarge as exc:
        status = 413
        err = PayloadTooLarge(f"request body is too large: {exc.text}")
        return web.json_response(err.to_json(), status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            status = exc.status
            raise
        status = exc.status
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.text or exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        return error_response(exc.status, code, message)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal_error", "internal error; the server log has the details")
    finally:
        metrics.HTTP_REQUESTS.labels(request.method, route, str(status)).inc()
