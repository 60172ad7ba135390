"""The admin JSON API under /api: bearer-token auth and JSON error helpers shared by API modules."""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from bot.app import RUNTIME

ApiHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def admin_auth(request: web.Request, handler: ApiHandler) -> web.StreamResponse:
    """Every /api path needs `Authorization: Bearer <admin_token>`; an empty token disables the API."""
    if not request.path.startswith("/api/") and request.path != "/api":
        return await handler(request)
    expected = request.app[RUNTIME].settings.server.admin_token
    if not expected:
        return api_error(403, "the admin API is disabled: set [server].admin_token")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return web.json_response(
            {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    return await handler(request)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    try:
        data = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body is not valid JSON"}), content_type="application/json")
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}), content_type="application/json")
    return data
