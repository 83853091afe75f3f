"""Routes declared once: the aiohttp route, the request validation and the
OpenAPI document all come from the same declaration, so the published
contract cannot drift from what the server does (a test checks that every
registered route is documented)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from hub.core import is_unicode
from hub.errors import BadRequest, ValidationFailed

Handler = Callable[..., Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: bool = True
    admin: bool = False
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    #: The query parameters, each with its description. Declared (even as
    #: ``{}``), they are all the route takes: any other is refused with a 400
    #: naming it, so a misspelt filter is not silently ignored. Left out
    #: (None), an agent API route (``/api/v1/``) takes none; any other route
    #: (pages, scripts, provider webhooks: browsers and providers add their
    #: own parameters) does not have its query checked.
    query: dict[str, str] | None = None
    content_type: str = "application/json"
    websocket: bool = False
    errors: tuple[int, ...] = ()
    # Served by worker processes too (health, metrics), not only by web ones.
    everywhere: bool = False

    def __post_init__(self) -> None:
        if self.query is None and self.path.startswith("/api/v1/"):
            self.query = {}


class Registry:
    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, tag: str, **kw: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, handler, summary, tag, **kw))
            return handler

        return register

    def install(self, app: web.Application, *, web_routes: bool = True) -> None:
        for op in self.operations:
            if not (web_routes or op.everywhere):
                continue
            if op.method == "GET" and not op.websocket:
                # HTTP requires HEAD wherever GET is served (RFC 9110 9.1), and
                # providers rely on it: Twilio checks an MMS file's type with HEAD.
                app.router.add_get(op.path, _checking_query(op))
            else:
                app.router.add_route(op.method, op.path, _checking_query(op))


#: Routes that document their query but do not refuse others: the Twilio
#: status callback hands its whole query to the receipt handlers (the
#: campaigns' reads ``campaign_recipient``), and a provider's callback refused
#: with a 400 is a receipt lost, never retried.
QUERY_UNCHECKED = frozenset({("POST", "/webhooks/twilio/sms/status")})


def _checking_query(op: Operation) -> Handler:
    """``op``'s handler, refusing a query parameter the route does not declare."""
    if op.query is None or (op.method, op.path) in QUERY_UNCHECKED:
        return op.handler
    known = frozenset(op.query)
    takes = f"it takes {', '.join(op.query)}" if op.query else "it takes none"
    handler = op.handler

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        unknown = sorted({name[:40] for name in request.query if name not in known})
        # Handlers read one value; a second would be dropped without a word
        # (lists are comma-separated: ?status=open,pending).
        repeated = sorted({name for name in request.query if name in known and len(request.query.getall(name)) > 1})
        if (unknown or repeated) and op.auth:
            # Who may not call the endpoint hears that first, not which
            # parameters it takes.
            from hub.web.api import current_agent

            await current_agent(request)
        if unknown:
            message = "not a query parameter of this endpoint"
            raise BadRequest(
                f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: {takes}",
                details=[{"field": name, "message": message} for name in unknown],
            )
        if repeated:
            message = "given more than once: give it once, several values separated by commas"
            raise BadRequest(
                f"query parameter{'s' if len(repeated) > 1 else ''} {', '.join(map(repr, repeated))} "
                f"given more than once: give each once (a list as comma-separated values)",
                details=[{"field": name, "message": message} for name in repeated],
            )
        return await handler(request)

    return checked


#: How deep a request body may nest arrays and objects. None of ours goes
#: past a handful of levels; the cap keeps the recursive walks over a body
#: (the NUL check, validation) well inside Python's recursion limit.
MAX_BODY_DEPTH = 64


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body; errors name the offending field."""
    if not request.can_read_body:
        raise BadRequest("a JSON body is required")
    raw = load_json(await request.read())
    found = _bad_text_at(raw)
    if found is not None:
        # PostgreSQL refuses both in text and JSON: a 422 naming the field, not a 500 at the write.
        where, message = found
        details = [{"field": where, "message": message}]
        raise ValidationFailed(f"invalid request body: {where}: {message}", details=details)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise ValidationFailed(f"invalid request body: {summary}", details=details) from exc


def load_json(body: bytes) -> Any:
    """A request body as JSON, or a 400 saying why not (malformed, or nested
    deeper than ``MAX_BODY_DEPTH``, which would exhaust the stack further on)."""
    too_deep = f"body nests arrays and objects more than {MAX_BODY_DEPTH} levels deep"
    try:
        raw = json.loads(body)
    except RecursionError as exc:
        # json.loads recurses once per level: some thousand levels exhaust the stack.
        raise BadRequest(too_deep) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if _depth_over(raw, MAX_BODY_DEPTH):
        raise BadRequest(too_deep)
    return raw


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``value``
    (without recursion: the point is not to need the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


NUL = "the NUL character (\\u0000) is not allowed"
# Worded as pydantic words it for a string field, which refused these before
# this check ran for every body.
LONE_SURROGATE = (
    "Input should be a valid string, not half of a \\uXXXX surrogate pair without the other half "
    "(an emoji escaped as \\ud83d\\ude0a needs both)"
)


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL
    # json.loads joins an escaped pair into one character; a half on its own
    # stays, and no database, encoder or browser takes it.
    return None if is_unicode(text) else LONE_SURROGATE


def _bad_text_at(value: Any, path: str = "") -> tuple[str, str] | None:
    """The dotted path of the first string (value or key) that is not storable
    text (a NUL character, a lone surrogate), and why."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return (path or "(body)", problem) if problem is not None else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            problem = _text_problem(str(key))
            if problem is not None:
                return here.encode("utf-8", "backslashreplace").decode("utf-8"), problem
            found = _bad_text_at(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text_at(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}

_STATUS_TEXT = {
    400: "Malformed request",
    401: "Missing, invalid or expired token",
    403: "Not allowed",
    404: "Unknown id",
    409: "Conflicts with the current state",
    413: "Body too large",
    422: "Validation failed",
    429: "Too many requests",
}

# Every 429 is a TooManyRequests, which says when to try again.
_ERROR_HEADERS = {
    429: {
        "Retry-After": {
            "description": "seconds to wait before trying again",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}


def openapi(registry: Registry, *, title: str, version: str, server_url: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for op in registry.operations:
        item: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": op.handler.__name__,
            "responses": {},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(op.path)
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": desc}
            for name, desc in (op.query or {}).items()
        ]
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(op.body)}}}
        if op.websocket:
            item["description"] = "WebSocket endpoint: upgrade with a GET request. " + (op.handler.__doc__ or "")
            item["responses"]["101"] = {"description": "Switching protocols to a websocket"}
        elif op.response is not None:
            item["responses"][str(op.status)] = {
                "description": "OK",
                "content": {op.content_type: {"schema": ref(op.response)}},
            }
        else:
            item["responses"][str(op.status)] = {"description": "OK", "content": {op.content_type: {}}}
        codes = set(op.errors)
        if op.auth:
            codes.add(401)
        if op.admin:
            codes.add(403)
        if op.body is not None:
            codes |= {400, 413, 422}
        if op.query is not None:
            codes.add(400)  # a query parameter it does not take
        for code in sorted(codes):
            item["responses"][str(code)] = {
                "description": _STATUS_TEXT.get(code, "Error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            if code in _ERROR_HEADERS:
                item["responses"][str(code)]["headers"] = _ERROR_HEADERS[code]
        if op.auth:
            item["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _path_params(path: str) -> list[str]:
    out = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            out.append(part[1:-1].split(":", 1)[0])
    return out


# The hub's routes; the modules under hub.web register into it on import.
ROUTES = Registry()
