"""Admin API for the content library: GET /api/content (bearer auth comes from handlers.api)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.app import RUNTIME
from bot.models import ContentItem, ContentVersion
from content.errors import InvalidFilter
from content.search import current_versions, search_items
from handlers.api import api_error

routes = web.RouteTableDef()

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
MAX_LIMIT = 1000


class _BadParam(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


@routes.get("/api/content")
async def handle_list_content(request: web.Request) -> web.Response:
    """The library as a JSON list, filtered by the query string; 400 names a bad parameter.

    Query parameters (all optional): `q` (keyword), `kind`, `stage`, `persona`, `industry`,
    `include_internal` (default **true**: this is the admin API, so rep-only material is listed and
    marked `"internal": true`), `include_retired` (default false), `limit` (default: everything,
    at most 1000). Each entry: slug, title, kind, version (current version number), stage,
    personas, industries, tags, gated, internal, summary, variant_of, attachment (file name or
    null) and retired (bool).
    """
    query = request.query
    try:
        include_internal = _flag(query, "include_internal", default=True)
        include_retired = _flag(query, "include_retired", default=False)
        limit = _limit(query)
    except _BadParam as exc:
        return api_error(400, exc.message)
    rt = request.app[RUNTIME]
    async with rt.read_sessions() as session:
        try:
            items = await search_items(
                session,
                q=query.get("q"),
                kind=query.get("kind"),
                stage=query.get("stage"),
                persona=query.get("persona"),
                industry=query.get("industry"),
                include_internal=include_internal,
                include_retired=include_retired,
                limit=limit,
            )
        except InvalidFilter as exc:
            return api_error(400, str(exc), field=exc.field, allowed=list(exc.allowed))
        versions = await current_versions(session, items)
    return web.json_response([item_json(item, versions.get(item.id)) for item in items])


def item_json(item: ContentItem, version: ContentVersion | None) -> dict[str, Any]:
    """The API's view of one item."""
    return {
        "slug": item.slug,
        "title": item.title,
        "kind": item.kind,
        "version": version.version if version else None,
        "stage": item.stage,
        "personas": list(item.personas),
        "industries": list(item.industries),
        "tags": list(item.tags),
        "gated": item.gated,
        "internal": item.internal,
        "summary": item.summary,
        "variant_of": item.variant_of,
        "attachment": version.attachment_name if version else None,
        "retired": item.retired_at is not None,
    }


def _flag(query: Any, name: str, *, default: bool) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _BadParam(f"{name} must be true or false, got {raw!r}")


def _limit(query: Any) -> int | None:
    raw = query.get("limit")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _BadParam(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)
