"""Who opened a link inside WeChat or WeCom: silent OAuth (snsapi_base), tried once per browser.

The landing page sends a not-yet-identified WeChat/WeCom browser to WeCom's authorize page; WeCom
comes back to /l/{token}/oauth with a single-use code, which `auth/getuserinfo` turns into an
external_userid (a customer: the browser is bound to that contact) or a userid (a member: the rep
previewing their own link, whose views are not customer engagement). Declined or failed: the page
shows as usual, and the browser is not asked again.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select

from bot.app import RUNTIME
from bot.identity import contact_for_external_userid
from bot.inbox import insert_ignore
from bot.models import Visitor
from bot.tracker import bind_visitor
from bot.tracking import VISITOR_COOKIE

log = logging.getLogger("beacon.links.oauth")
routes = web.RouteTableDef()
TRIED_COOKIE = "bcn_o"
REP_COOKIE = "bcn_rep"


def in_wechat(request: web.Request) -> bool:
    ua = request.headers.get("User-Agent", "")
    return "MicroMessenger" in ua or "wxwork" in ua


def wants_oauth(request: web.Request) -> bool:
    """Only inside WeChat/WeCom, only when enabled and configured, only once per browser."""
    rt = request.app[RUNTIME]
    return (
        rt.settings.links.oauth
        and rt.settings.wecom.configured
        and in_wechat(request)
        and request.cookies.get(TRIED_COOKIE) is None
    )


def oauth_redirect(request: web.Request, token: str, cookie: str) -> web.Response:
    """302 to WeCom's authorize page; the state binds the answer to this link and browser."""
    rt = request.app[RUNTIME]
    query = urlencode({
        "appid": rt.settings.wecom.corp_id,
        "redirect_uri": f"{rt.settings.server.public_url}/l/{token}/oauth",
        "response_type": "code",
        "scope": "snsapi_base",
        "agentid": rt.settings.wecom.agent_id,
        "state": rt.signer.sign("oauth", token, cookie, length=24),
    })
    response = web.Response(status=302, headers={"Location": f"{rt.settings.links.oauth_authorize_url}?{query}#wechat_redirect"})
    response.set_cookie(TRIED_COOKIE, "1", max_age=rt.settings.links.cookie_days * 86400, httponly=True, samesite="Lax", path="/")
    return response


def is_rep_preview(request: web.Request, cookie: str) -> bool:
    value = request.cookies.get(REP_COOKIE, "")
    userid, _, sig = value.partition(".")
    return bool(userid) and request.app[RUNTIME].signer.verify(sig, "rep", userid, cookie)


@routes.get("/l/{token}/oauth")
async def handle_oauth_return(request: web.Request) -> web.Response:
    """WeCom's redirect back: identify the browser, then show the link (303). A bad state: 403."""
    rt = request.app[RUNTIME]
    token = request.match_info["token"]
    cookie = request.cookies.get(VISITOR_COOKIE, "")
    back = web.Response(status=303, headers={"Location": f"/l/{token}"})
    if not cookie or not rt.signer.verify(request.query.get("state", ""), "oauth", token, cookie, length=24):
        return web.Response(status=403, text="forbidden")
    code = request.query.get("code", "")
    if not code:
        return back  # the person declined
    from bot.wecom.client import WeComError

    try:
        who = await rt.wecom.get("/cgi-bin/auth/getuserinfo", {"code": code})
    except WeComError as exc:
        log.warning("link OAuth failed: %s", exc)
        return back
    userid = who.get("userid") or who.get("UserId")
    if userid:
        back.set_cookie(REP_COOKIE, f"{userid}.{rt.signer.sign('rep', userid, cookie)}", httponly=True, samesite="Lax", path="/")
        return back
    external = who.get("external_userid")
    if external:
        now = rt.clock.now()
        async with rt.sessions() as session, session.begin():
            await session.execute(
                insert_ignore(session.bind.dialect.name, Visitor.__table__, "cookie_id"),
                {"cookie_id": cookie, "user_agent": request.headers.get("User-Agent", "")[:512], "first_seen_at": now, "contact_id": None},
            )
            visitor = await session.scalar(select(Visitor).where(Visitor.cookie_id == cookie))
            contact = await contact_for_external_userid(session, external, now=now)
            if visitor.contact_id is None:
                await bind_visitor(session, visitor, contact.id)
        rt.tracker.wake()
    return back
