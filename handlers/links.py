"""Tracked links: the landing page, the gate form, tracking beacons and attachment downloads.

Hot path: resolve the token (cached), record the event through the group-commit log, render from a
per-version cache. Attribution to a contact and scoring happen behind it, in the tracker.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bot.app import RUNTIME
from bot.edge import edge
from bot.identity import normalize_phone
from bot.pages import PAGE_TEXT, page_lang
from bot.previews import is_preview_fetch
from bot.shares import LinkInfo
from bot.tracking import VISITOR_COOKIE, new_visitor_id
from handlers.link_oauth import is_rep_preview, oauth_redirect, wants_oauth
from handlers.unavailable import RETRY_AFTER_S, answered_unavailable

log = logging.getLogger("beacon.links")
routes = web.RouteTableDef()

_COOKIE_RE = re.compile(r"^[A-Za-z0-9_-]{24}$")
_PV_RE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
BEACON_MAX_BYTES = 2048
READ_MARKS = (25, 50, 75, 100)
CTAS = ("demo", "contact")
KIND_LABELS = {
    "whitepaper": "白皮书", "case_study": "客户案例", "solution": "解决方案", "product_manual": "产品手册",
    "pitch_deck": "公司介绍", "faq": "常见问题", "report": "行业报告", "webinar": "直播回放", "blog": "文章",
}  # fmt: skip


def _visitor(request: web.Request) -> tuple[str, bool]:
    cookie = request.cookies.get(VISITOR_COOKIE, "")
    if _COOKIE_RE.match(cookie):
        return cookie, False
    return new_visitor_id(), True


def _set_visitor_cookie(request: web.Request, response: web.StreamResponse, cookie: str) -> None:
    rt = request.app[RUNTIME]
    response.set_cookie(
        VISITOR_COOKIE,
        cookie,
        max_age=rt.settings.links.cookie_days * 86400,
        httponly=True,
        samesite="Lax",
        secure=rt.settings.server.public_url.startswith("https://"),
        path="/",
    )


def _unlock_cookie(item_id: int) -> str:
    return f"bcn_u{item_id}"


def _unlocked(request: web.Request, link: LinkInfo, cookie: str) -> bool:
    if not link.gated:
        return True
    signer = request.app[RUNTIME].signer
    return signer.verify(request.cookies.get(_unlock_cookie(link.item_id), ""), "unlock", str(link.item_id), cookie)


async def _link_or_error(request: web.Request) -> LinkInfo | web.Response:
    rt = request.app[RUNTIME]
    lang = page_lang(request)
    link = await rt.links.resolve(request.match_info["token"])
    if link is None or link.internal:  # internal material is never reachable by a link
        return rt.pages.error(404, lang)
    if link.retired or link.current_version_id is None:
        return rt.pages.error(410, lang)
    return link


async def _body_html(request: web.Request, version_id: int) -> tuple[str, str | None]:
    return await request.app[RUNTIME].rendered.get(version_id)


@routes.get("/l/{token}")
@edge
async def handle_landing(request: web.Request) -> web.StreamResponse:
    """The landing page of one share (or the gate form for gated items). Records an `open` unless
    the request is a preview fetcher or a reload within the window."""
    rt = request.app[RUNTIME]
    found = await _link_or_error(request)
    if isinstance(found, web.Response):
        return found
    link = found
    lang = page_lang(request)
    cookie, new_cookie = _visitor(request)
    # Fetchers and members previewing their own link (known from OAuth) are not customer engagement.
    preview = is_preview_fetch(request.method, request.headers) or is_rep_preview(request, cookie)
    own = await _own_child_parent(request, link, cookie)
    if own is not None:
        # The viewer is back on the address their own page put in the bar (a reload, or reopening
        # it): that is the share they opened, not a forward to themselves.
        link, child = own, link.token
    else:
        child = None if preview else rt.signer.sign("child", link.token, cookie, length=24)
    if not preview and own is None and wants_oauth(request):
        response = oauth_redirect(request, link.token, cookie)
        if new_cookie:
            _set_visitor_cookie(request, response, cookie)
        return response
    unlocked = _unlocked(request, link, cookie)
    outdated = link.version_id != link.current_version_id
    if not preview:
        now = rt.clock.now()
        if not rt.recent_opens.is_reload(link.share_id, cookie):
            try:
                await rt.events.link_event(
                    "open", link, cookie, now=now,
                    props={"gated": link.gated, "unlocked": unlocked, "outdated": outdated},
                    key=rt.recent_opens.bucket_key(link.share_id, cookie, now),
                    user_agent=request.headers.get("User-Agent", ""),
                    child_token=child,
                )
            except Exception as exc:
                if not answered_unavailable(request, exc):
                    log.exception("could not record open for share %s", link.share_id)
                unavailable = rt.pages.error(503, lang)
                unavailable.headers["Retry-After"] = str(RETRY_AFTER_S)
                return unavailable
            rt.tracker.wake()
    about = {"title": link.title, "summary": link.summary, "kind_label": KIND_LABELS.get(link.kind, "")}
    if link.gated and not unlocked:
        response = rt.pages.response(
            "gate.html", lang, token=link.token, **about, csrf=rt.signer.sign("csrf", link.token, cookie), errors={}, values={}
        )
    else:
        body_html, attachment = await _body_html(request, link.current_version_id)  # type: ignore[arg-type]
        slots = {"token": link.token, "beacon_key": rt.signer.sign("beacon", link.token, cookie),
                 "pageview": secrets.token_urlsafe(9)}
        if child is not None:
            slots["child_token"] = child
        response = rt.pages.slotted_response(
            "landing.html", lang, slots,
            **about,
            body_html=body_html if unlocked else "",
            unlocked=unlocked,
            outdated=outdated,
            attachment=attachment,
            track=not preview,
        )
    if new_cookie and not preview:
        _set_visitor_cookie(request, response, cookie)
    response.headers["Cache-Control"] = "private, no-store"
    return response


async def _own_child_parent(request: web.Request, link: LinkInfo, cookie: str) -> LinkInfo | None:
    """The parent share when `link` is this browser's own child link, else None."""
    if link.parent_token is None or not request.app[RUNTIME].signer.verify(link.token, "child", link.parent_token, cookie, length=24):
        return None
    parent = await request.app[RUNTIME].links.resolve(link.parent_token)
    return parent if parent is not None and not parent.internal and not parent.retired else None


def _validate_gate(form: dict[str, str], lang: str) -> dict[str, str]:
    t = PAGE_TEXT[lang]
    errors: dict[str, str] = {}
    for field, limit in (("name", 64), ("company", 128), ("title", 64)):
        value = form.get(field, "").strip()
        if field != "title" and not value:
            errors[field] = t["err_required"].format(field=t[field])
        elif len(value) > limit:
            errors[field] = t["err_too_long"].format(field=t[field], n=limit)
    if not form.get("phone", "").strip():
        errors["phone"] = t["err_required"].format(field=t["phone"])
    elif normalize_phone(form["phone"]) is None:
        errors["phone"] = t["err_phone"]
    return errors


@routes.post("/l/{token}/gate")
@edge
async def handle_gate(request: web.Request) -> web.StreamResponse:
    """The lead-capture form of a gated item. Invalid fields: the form again (400) with a message
    beside each field and the values kept. Valid: a `form_submit` event, the item unlocked for this
    browser, and a redirect back to the page (303)."""
    rt = request.app[RUNTIME]
    found = await _link_or_error(request)
    if isinstance(found, web.Response):
        return found
    link = found
    lang = page_lang(request)
    cookie, new_cookie = _visitor(request)
    form = {k: str(v) for k, v in (await request.post()).items() if isinstance(v, str)}
    common = {"token": link.token, "title": link.title, "summary": link.summary, "kind_label": KIND_LABELS.get(link.kind, "")}
    csrf = rt.signer.sign("csrf", link.token, cookie)
    values = {k: form.get(k, "") for k in ("name", "company", "title", "phone")}
    if new_cookie or not rt.signer.verify(form.get("csrf", ""), "csrf", link.token, cookie):
        response = rt.pages.response(
            "gate.html", lang, status=403, **common, csrf=csrf, errors={"csrf": PAGE_TEXT[lang]["err_csrf"]}, values=values
        )
        if new_cookie:
            _set_visitor_cookie(request, response, cookie)
        return response
    errors = _validate_gate(form, lang)
    if errors:
        return rt.pages.response("gate.html", lang, status=400, **common, csrf=csrf, errors=errors, values=values)
    props = {k: v.strip() for k, v in values.items()}
    props["phone"] = normalize_phone(props["phone"]) or ""
    await rt.events.link_event(
        "form_submit", link, cookie, now=rt.clock.now(), props=props, user_agent=request.headers.get("User-Agent", "")
    )
    rt.tracker.wake()
    response = web.Response(status=303, headers={"Location": f"/l/{link.token}"})
    response.set_cookie(
        _unlock_cookie(link.item_id),
        rt.signer.sign("unlock", str(link.item_id), cookie),
        max_age=rt.settings.links.cookie_days * 86400,
        httponly=True,
        samesite="Lax",
        secure=rt.settings.server.public_url.startswith("https://"),
        path="/",
    )
    return response


def _beacon_event(data: dict[str, Any], link: LinkInfo, cookie: str, now: dt.datetime, window_s: int) -> tuple[str, dict[str, Any], str] | None:
    kind = data.get("t")
    pv = data.get("pv")
    if not isinstance(pv, str) or not _PV_RE.match(pv):
        return None
    if kind == "read" and data.get("d") in READ_MARKS:
        depth = data["d"]
        return "read", {"depth": depth}, f"read:{link.share_id}:{cookie}:{depth}"
    if kind == "dwell":
        seconds, seq = data.get("s"), data.get("n")
        if isinstance(seconds, int) and 1 <= seconds <= 1800 and isinstance(seq, int) and 1 <= seq <= 1000:
            return "dwell", {"seconds": seconds, "pageview": pv}, f"dwell:{link.share_id}:{pv}:{seq}"
        return None
    if kind == "cta" and data.get("c") in CTAS:
        bucket = int(now.timestamp() // max(window_s, 1))
        return "cta", {"cta": data["c"]}, f"cta:{link.share_id}:{cookie}:{data['c']}:{bucket}"
    return None


@routes.post("/l/{token}/b")
@edge
async def handle_beacon(request: web.Request) -> web.Response:
    """A tracking beacon from the landing page: read depth, visible time or a CTA click.
    204 when recorded (or a harmless repeat); 400 malformed; 403 key not valid for this browser
    and link (a beacon cannot be forged for another contact); 413 too big; 429 too many."""
    rt = request.app[RUNTIME]
    if request.content_length is not None and request.content_length > BEACON_MAX_BYTES:
        return web.Response(status=413)
    raw = await request.content.read(BEACON_MAX_BYTES + 1)
    if len(raw) > BEACON_MAX_BYTES:
        return web.Response(status=413)
    link = await rt.links.resolve(request.match_info["token"])
    if link is None or link.internal or link.retired:
        return web.Response(status=404)
    cookie = request.cookies.get(VISITOR_COOKIE, "")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return web.Response(status=400, text="beacon is not JSON")
    if not isinstance(data, dict):
        return web.Response(status=400, text="beacon must be a JSON object")
    if not _COOKIE_RE.match(cookie) or not rt.signer.verify(str(data.get("k", "")), "beacon", link.token, cookie):
        return web.Response(status=403)
    if not rt.beacon_limiter.allow((link.token, cookie), rt.clock.now().timestamp()):
        return web.Response(status=429)
    now = rt.clock.now()
    parsed = _beacon_event(data, link, cookie, now, rt.settings.links.reload_window_s)
    if parsed is None:
        return web.Response(status=400, text="unknown or invalid beacon")
    type_, props, key = parsed
    await rt.events.link_event(type_, link, cookie, now=now, props=props, key=key)
    rt.tracker.wake()
    return web.Response(status=204)


@routes.get("/l/{token}/file")
@edge
async def handle_download(request: web.Request) -> web.StreamResponse:
    """The item's attachment, through the tracked link (gated items need the form first)."""
    rt = request.app[RUNTIME]
    found = await _link_or_error(request)
    if isinstance(found, web.Response):
        return found
    link = found
    cookie, new_cookie = _visitor(request)
    if not _unlocked(request, link, cookie):
        raise web.HTTPSeeOther(location=f"/l/{link.token}")
    attachment = await rt.rendered.attachment(link.current_version_id)  # type: ignore[arg-type]
    if attachment is None:
        return rt.pages.error(404, page_lang(request))
    name, data = attachment
    if not is_preview_fetch(request.method, request.headers):
        now = rt.clock.now()
        await rt.events.link_event(
            "download", link, cookie, now=now, props={"file": name},
            key=f"download:{link.share_id}:{cookie}:{int(now.timestamp() // max(rt.settings.links.reload_window_s, 1))}",
            user_agent=request.headers.get("User-Agent", ""),
        )
        rt.tracker.wake()
    response = web.Response(body=data, content_type=_content_type(name))
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    response.headers["Cache-Control"] = "private, no-store"
    if new_cookie:
        _set_visitor_cookie(request, response, cookie)
    return response


def _content_type(name: str) -> str:
    import mimetypes

    return mimetypes.guess_type(name)[0] or "application/octet-stream"
