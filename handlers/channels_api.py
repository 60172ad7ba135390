"""Admin API for channels (QR codes): POST /api/channels, GET /api/channels (bearer auth: handlers.api)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.app import RUNTIME
from bot.channels import ChannelExists, ChannelRequest, create_channel, list_channels
from bot.errors import InvalidInput, NotFound, NotShareable
from bot.wecom.client import WeComError
from handlers.api import api_error, read_json

routes = web.RouteTableDef()


def _request(data: dict[str, Any]) -> ChannelRequest:
    name, reps, welcome, text = data.get("name"), data.get("reps"), data.get("welcome"), data.get("text")
    if not isinstance(name, str):
        raise InvalidInput("name", "is required (a string)")
    if isinstance(reps, str):
        reps = [r for r in reps.split(",") if r.strip()]
    if reps is not None and not (isinstance(reps, list) and all(isinstance(r, str) for r in reps)):
        raise InvalidInput("reps", "must be a list of WeCom userids")
    if welcome is not None and not isinstance(welcome, str):
        raise InvalidInput("welcome", "must be a content slug or null")
    if text is not None and not isinstance(text, str):
        raise InvalidInput("text", "must be a string or null")
    return ChannelRequest(name=name, reps=tuple(reps or ()), welcome=welcome or None, text=text or "")


@routes.post("/api/channels")
async def handle_create_channel(request: web.Request) -> web.Response:
    """Create a channel QR code: body {name, reps, welcome, text} → 201 with state, config_id, qr_code.
    404 unknown rep or content; 400 bad field or internal/retired welcome item; 409 name taken;
    502 WeCom refused."""
    rt = request.app[RUNTIME]
    data = await read_json(request)
    try:
        view = await create_channel(rt.sessions, rt.wecom, _request(data), now=rt.clock.now())
    except NotFound as exc:
        return api_error(404, str(exc))
    except ChannelExists as exc:
        return api_error(409, str(exc))
    except InvalidInput as exc:
        return api_error(400, str(exc), field=exc.field)
    except NotShareable as exc:
        return api_error(400, str(exc), field="welcome")
    except WeComError as exc:
        return api_error(502, f"WeCom refused the QR code: {exc}")
    return web.json_response(view.as_json(), status=201)


@routes.get("/api/channels")
async def handle_list_channels(request: web.Request) -> web.Response:
    """Every channel with its counts: contacts (first touch), adds (contact_added events), opens of its shares."""
    rt = request.app[RUNTIME]
    async with rt.read_sessions() as session:
        views = await list_channels(session)
    return web.json_response([v.as_json() for v in views])
