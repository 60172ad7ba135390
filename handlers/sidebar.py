"""The chat-toolbar sidebar (聊天工具栏): the rep's view of the customer in the current chat.

The page learns the customer from WeCom's JS-SDK (`getContext`, `getCurExternalContact`) after
`agentConfig` with a signature from /sidebar/jsconfig, then reloads itself with `?contact=`. Send
creates the tracked link (POST /sidebar/share) and hands it to `sendChatMessage` as a news card.
Simulator mode (`?sim=1` or `[pages] simulator_mode`) swaps WeCom's script for a local stand-in.

Who may see a customer: anyone whose scope covers the contact's owner, or a member WeCom lists as
one of the customer's follow users (`externalcontact/get`, cached a few minutes), i.e. the rep is
really in a chat with them.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.app import RUNTIME
from bot.auth import Viewer
from bot.errors import NotShareable
from bot.identity import contact_for_external_userid
from bot.jsapi import agent_config_signature, page_url_for_signature, tickets
from bot.customer_text import LABELS
from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS
from bot.models import Contact
from bot.shares import create_share
from bot.sidebar import industries, library, load_panel, recent_activity
from bot.wecom.client import WeComError
from content.errors import InvalidFilter
from content.search import get_item
from content.vocab import KINDS, STAGES
from handlers.contacts_api import find_contact
from handlers.links import KIND_LABELS
from handlers.pagekit import (
    NO_STORE,
    csrf_ok,
    error_page,
    page_viewer,
    render,
    viewer_for,
)
from handlers.security import CSP

log = logging.getLogger("beacon.sidebar")
routes = web.RouteTableDef()

EXTERNAL_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ALL_KIND_LABELS = {**KIND_LABELS, "talk_track": "话术", "competitor_brief": "竞品分析"}
JOURNEY_LABELS = {"awareness": "认知", "consideration": "考虑", "decision": "决策", "retention": "留存"}
CARD_IMAGE = "/static/sidebar-card.png"


def simulated(request: web.Request) -> bool:
    return request.app[RUNTIME].settings.pages.simulator_mode or request.query.get("sim") == "1"


def _real_mode_csp(jssdk_url: str) -> str:
    """The strict CSP with WeCom's script origin added, for the real-mode sidebar page only."""
    parts = urlsplit(jssdk_url)
    return CSP.replace("script-src 'self'", f"script-src 'self' {parts.scheme}://{parts.netloc}", 1)


async def _follows(request: web.Request, userid: str, external_userid: str) -> bool:
    rt = request.app[RUNTIME]
    cache = rt.follows
    key = (userid, external_userid)
    if cache.get(key):
        return True
    try:
        answer = await rt.wecom.get("/cgi-bin/externalcontact/get", {"external_userid": external_userid})
    except WeComError as exc:
        log.info("follow check for %s failed: %s", external_userid, exc)
        return False
    if any(f.get("userid") == userid for f in answer.get("follow_user") or []):
        cache.put(key)
        return True
    return False


async def may_see(request: web.Request, viewer: Viewer, contact: Contact | None, external_userid: str) -> bool:
    """Scope first (no WeCom call); otherwise only a follow user of the customer in WeCom."""
    if contact is not None and viewer.sees_owner(contact.owner_userid):
        return True
    return viewer.userid is not None and await _follows(request, viewer.userid, external_userid)


async def _contact(request: web.Request, external_userid: str) -> Contact | None:
    async with request.app[RUNTIME].read_sessions() as session:
        return await find_contact(session, external_userid)


def _filters(request: web.Request) -> dict[str, str | None]:
    q = request.query
    return {k: (q.get(k) or "").strip()[:64] or None for k in ("q", "kind", "stage", "industry")}


@routes.get("/sidebar")
async def handle_sidebar(request: web.Request) -> web.Response:
    """The sidebar page. Without `?contact=` a shell whose script asks WeCom for the customer; with
    it, the customer's panel. 400 malformed contact id, 403 a customer the rep has no business with."""
    viewer = await page_viewer(request, member=True)
    if isinstance(viewer, web.Response):
        return viewer
    rt = request.app[RUNTIME]
    sim = simulated(request)
    external = (request.query.get("contact") or "").strip()
    values: dict[str, Any] = {
        "sim": sim, "customer": request.query.get("customer", ""), "external": external, "jssdk_url": rt.settings.pages.jssdk_url,
        "kinds": [(k, ALL_KIND_LABELS.get(k, k)) for k in KINDS], "stages": [(s, JOURNEY_LABELS[s]) for s in STAGES],
        "kind_labels": ALL_KIND_LABELS, "journey_labels": JOURNEY_LABELS, "stage_labels": STAGE_LABELS,
        "temperature_labels": TEMPERATURE_LABELS, "industry_labels": LABELS["industry"], "filters": _filters(request), "panel": None,
    }  # fmt: skip
    headers = {} if sim else {"Content-Security-Policy": _real_mode_csp(rt.settings.pages.jssdk_url)}
    if external:
        if not EXTERNAL_RE.match(external):
            return error_page(request, 400, "客户 ID 格式不正确。", viewer=viewer)
        contact = await _contact(request, external)
        if not await may_see(request, viewer, contact, external):
            return error_page(request, 403, "您不是该客户的跟进成员，无法查看。", viewer=viewer)
        async with rt.read_sessions() as session:
            values["panel"] = await load_panel(session, external, contact)
            try:
                values["sendable"], values["internal"] = await library(session, **values["filters"])
            except InvalidFilter as exc:
                return error_page(request, 400, str(exc), viewer=viewer)
            values["industries"] = await industries(session)
    return render(request, "sidebar.html", viewer=viewer, headers=headers, **values)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=NO_STORE, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def _json_error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


@routes.get("/sidebar/jsconfig")
async def handle_jsconfig(request: web.Request) -> web.Response:
    """agentConfig parameters for `?url=` (one of our sidebar pages): {corpid, agentid, timestamp,
    nonceStr, signature}. 401 not logged in, 400 a URL that is not ours, 502 WeCom gave no ticket."""
    viewer = await viewer_for(request)
    if viewer is None or not viewer.is_member:
        return _json_error(401, "log in as a WeCom member first")
    rt = request.app[RUNTIME]
    own = {f"{urlsplit(rt.settings.server.public_url).scheme}://{urlsplit(rt.settings.server.public_url).netloc}",
           f"{request.scheme}://{request.host}"}  # fmt: skip
    url = page_url_for_signature(request.query.get("url", ""), own)
    if url is None:
        return _json_error(400, "url must be this server's /sidebar page")
    try:
        ticket = await tickets(rt).agent_ticket()
    except WeComError as exc:
        log.warning("no jsapi ticket: %s", exc)
        return _json_error(502, f"WeCom gave no jsapi ticket (errcode {exc.errcode})")
    nonce = secrets.token_hex(8)
    timestamp = int(rt.clock.now().timestamp())
    body = {"corpid": rt.settings.wecom.corp_id, "agentid": rt.settings.wecom.agent_id, "timestamp": timestamp,
            "nonceStr": nonce, "signature": agent_config_signature(ticket, nonce, timestamp, url)}  # fmt: skip
    return _json(body)


@routes.post("/sidebar/share")
async def handle_share(request: web.Request) -> web.Response:
    """Create (or reuse) this rep's tracked link of an item for the customer (source "sidebar") and
    answer the news card to send: {link, title, desc, imgUrl, token}. 403 bad CSRF or not the rep's
    customer, 404 unknown item, 400 internal/retired item or bad fields."""
    rt = request.app[RUNTIME]
    viewer = await viewer_for(request)
    if viewer is None or not viewer.is_member:
        return _json_error(401, "log in as a WeCom member first")
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not csrf_ok(request, viewer, form.get("csrf", "")):
        return _json_error(403, "页面已过期，请刷新后重试。")
    slug, external = form.get("slug", "").strip(), form.get("contact", "").strip()
    if not slug or not EXTERNAL_RE.match(external):
        return _json_error(400, "slug and contact are required")
    if not await may_see(request, viewer, await _contact(request, external), external):
        return _json_error(403, "您不是该客户的跟进成员。")
    # the WeCom follow check above ran outside any transaction; the unit of work starts here
    async with rt.sessions() as session, session.begin():
        item = await get_item(session, slug)
        if item is None:
            return _json_error(404, f"unknown content: {slug}")
        contact = await contact_for_external_userid(session, external, now=rt.clock.now())
        try:
            share = await create_share(session, item, rep_userid=viewer.userid, contact_id=contact.id, source="sidebar", now=rt.clock.now())
        except NotShareable as exc:
            return _json_error(400, "内部资料不能发送给客户。" if item.internal else f"不能发送：{exc}")
        base = rt.settings.server.public_url
        body = {"link": f"{base}/l/{share.token}", "title": item.title, "desc": item.summary[:120],
                "imgUrl": f"{base}{CARD_IMAGE}", "token": share.token}  # fmt: skip
    return _json(body)


@routes.get("/sidebar/activity")
async def handle_activity(request: web.Request) -> web.Response:
    """The customer's recent activity as an HTML fragment (the page refreshes its list with it)."""
    viewer = await page_viewer(request, member=True)
    if isinstance(viewer, web.Response):
        return viewer
    external = request.query.get("contact", "")
    if not EXTERNAL_RE.match(external):
        return error_page(request, 400, "客户 ID 格式不正确。", viewer=viewer)
    contact = await _contact(request, external)
    if not await may_see(request, viewer, contact, external):
        return error_page(request, 403, "您不是该客户的跟进成员，无法查看。", viewer=viewer)
    activity = []
    if contact is not None:
        async with request.app[RUNTIME].read_sessions() as session:
            activity = await recent_activity(session, contact.id)
    return render(request, "sidebar_activity.html", viewer=viewer, activity=activity)


@routes.get("/sidebar/internal/{slug}")
async def handle_internal(request: web.Request) -> web.Response:
    """An internal item (talk track, competitor brief …) for the rep to read; never sendable. 404 for
    unknown, retired or customer-facing items (those are read through their links)."""
    viewer = await page_viewer(request, member=True)
    if isinstance(viewer, web.Response):
        return viewer
    rt = request.app[RUNTIME]
    async with rt.read_sessions() as session:
        item = await get_item(session, request.match_info["slug"])
    if item is None or not item.internal or item.retired_at is not None or item.current_version_id is None:
        return error_page(request, 404, "没有这份内部资料。", viewer=viewer)
    body_html, _ = await rt.rendered.get(item.current_version_id)
    back = {k: v for k, v in request.query.items() if k in ("contact", "sim", "customer")}
    return render(request, "sidebar_internal.html", viewer=viewer, item=item, body_html=body_html, back=back,
                  sim=simulated(request), kind_labels=ALL_KIND_LABELS)  # fmt: skip
