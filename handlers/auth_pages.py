"""Logging in to the member pages: WeCom OAuth, the admin token, and (simulator mode) picking a member.

OAuth: /auth/wecom/start remembers a random nonce (and where to go back) in a short-lived cookie
and sends the browser to WeCom's authorize page with the nonce as `state`; /auth/wecom/callback
accepts the code only with the same nonce (no login CSRF), trades it once for a userid via
`auth/getuserinfo`, and sets the session cookie.
"""

from __future__ import annotations

import base64
import hmac
import logging
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select

from bot.app import RUNTIME
from bot.auth import (
    LOGIN_COOKIE,
    OAUTH_COOKIE,
    SESSION_COOKIE,
    Sessions,
    new_nonce,
    safe_next,
)
from bot.models import Rep
from bot.team import ensure_rep
from handlers.pagekit import (
    NO_STORE,
    csrf_ok,
    error_page,
    page_viewer,
    render,
    viewer_for,
)
from handlers.security import client_ip

log = logging.getLogger("beacon.pages.auth")
routes = web.RouteTableDef()
OAUTH_COOKIE_S = 600


def _cookie_flags(request: web.Request) -> dict[str, object]:
    secure = request.app[RUNTIME].settings.server.public_url.startswith("https://")
    return {"httponly": True, "samesite": "Lax", "secure": secure, "path": "/"}


def _start_session(request: web.Request, kind: str, userid: str | None, to: str) -> web.Response:
    sessions = Sessions(request.app[RUNTIME])
    response = web.Response(status=303, headers={"Location": to, **NO_STORE})
    cookie = sessions.issue(kind, userid)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=sessions.max_age(), **_cookie_flags(request))  # type: ignore[arg-type]
    return response


async def _login_page(request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
    rt = request.app[RUNTIME]
    nonce = request.cookies.get(LOGIN_COOKIE) or new_nonce()
    members: list[tuple[str, str, str]] = []
    if rt.settings.pages.simulator_mode:
        async with rt.read_sessions() as session:
            rows = await session.execute(select(Rep.userid, Rep.name, Rep.role).where(Rep.active.is_(True)).order_by(Rep.userid))
            members = [(u, n or u, r) for u, n, r in rows]
    response = render(
        request, "dash_login.html", viewer=None, status=status, error=error,
        next=safe_next(request.query.get("next")), login_csrf=rt.signer.sign("login", nonce),
        admin_enabled=bool(rt.settings.server.admin_token), wecom_enabled=bool(rt.settings.wecom.corp_id),
        simulator=rt.settings.pages.simulator_mode, members=members,
    )  # fmt: skip
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **_cookie_flags(request))  # type: ignore[arg-type]
    return response


@routes.get("/login")
async def handle_login_page(request: web.Request) -> web.Response:
    """The login page: WeCom login, the admin-token form, and in simulator mode "log in as"."""
    if await viewer_for(request) is not None:
        return web.Response(status=303, headers={"Location": safe_next(request.query.get("next")), **NO_STORE})
    return await _login_page(request)


def _login_form_ok(request: web.Request, form: dict[str, str]) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    return bool(nonce) and request.app[RUNTIME].signer.verify(form.get("csrf", ""), "login", nonce)


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


@routes.post("/login")
async def handle_admin_login(request: web.Request) -> web.Response:
    """The admin token → an admin session (303 to `next`). Wrong token 401, stale form 403,
    too many attempts from one address 429."""
    rt = request.app[RUNTIME]
    if not rt.login_limiter.allow(client_ip(request, rt.settings.security.trusted_proxies), rt.clock.now().timestamp()):
        return error_page(request, 429, "登录尝试过多，请一分钟后再试。")
    form = await _form(request)
    if not _login_form_ok(request, form):
        return await _login_page(request, status=403, error="页面已过期，请重新提交。")
    expected = rt.settings.server.admin_token
    # Constant-time: response timing must not reveal how much of a guess was right.
    if not expected or not hmac.compare_digest(form.get("token", "").strip().encode(), expected.encode()):
        return await _login_page(request, status=401, error="管理员令牌不正确。")
    return _start_session(request, "admin", None, safe_next(form.get("next")))


@routes.post("/login/sim")
async def handle_sim_login(request: web.Request) -> web.Response:
    """Simulator mode only: log in as a team member without WeCom (the demo). 404 otherwise."""
    rt = request.app[RUNTIME]
    if not rt.settings.pages.simulator_mode:
        return error_page(request, 404, "模拟登录未开启。")
    form = await _form(request)
    if not _login_form_ok(request, form):
        return await _login_page(request, status=403, error="页面已过期，请重新提交。")
    async with rt.read_sessions() as session:
        rep = await session.get(Rep, form.get("userid", ""))
    if rep is None or not rep.active:
        return await _login_page(request, status=400, error="未知成员。")
    return _start_session(request, "sim", rep.userid, safe_next(form.get("next"), "/sidebar?sim=1"))


@routes.get("/auth/wecom/start")
async def handle_oauth_start(request: web.Request) -> web.Response:
    """302 to WeCom's authorize page (snsapi_base, this app's agentid) with a fresh nonce as state."""
    rt = request.app[RUNTIME]
    w = rt.settings.wecom
    if not w.corp_id:
        return error_page(request, 400, "未配置企业微信（[wecom] corp_id），无法使用企业微信登录。")
    nonce = new_nonce()
    to = safe_next(request.query.get("next"))
    query = urlencode({
        "appid": w.corp_id, "redirect_uri": f"{rt.settings.server.public_url}/auth/wecom/callback",
        "response_type": "code", "scope": "snsapi_base", "agentid": w.agent_id, "state": nonce,
    })  # fmt: skip
    location = f"{rt.settings.links.oauth_authorize_url}?{query}#wechat_redirect"
    response = web.Response(status=302, headers={"Location": location, **NO_STORE})
    packed = f"{nonce}.{base64.urlsafe_b64encode(to.encode()).decode()}"
    response.set_cookie(OAUTH_COOKIE, packed, max_age=OAUTH_COOKIE_S, **_cookie_flags(request))  # type: ignore[arg-type]
    return response


@routes.get("/auth/wecom/callback")
async def handle_oauth_callback(request: web.Request) -> web.Response:
    """WeCom's redirect back with a single-use code: a member → session cookie and 303 to where they
    were going. Wrong or missing state 403; declined (no code) back to the login page; a customer's
    or an expired code 403."""
    rt = request.app[RUNTIME]
    nonce, _, packed_next = request.cookies.get(OAUTH_COOKIE, "").partition(".")
    if not nonce or not hmac.compare_digest(nonce.encode(), request.query.get("state", "").encode()):
        return error_page(request, 403, "登录请求无效或已过期，请重新打开页面。")
    try:
        to = safe_next(base64.urlsafe_b64decode(packed_next.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        to = safe_next(None)
    code = request.query.get("code", "")
    if not code:
        return await _login_page(request, error="已取消企业微信登录。")
    from bot.wecom.client import WeComError

    try:
        who = await rt.wecom.get("/cgi-bin/auth/getuserinfo", {"code": code})
    except WeComError as exc:
        log.warning("page OAuth failed: %s", exc)
        return error_page(request, 403, "企业微信登录失败（授权码无效或已过期），请重新打开页面。")
    userid = who.get("userid") or who.get("UserId")
    if not userid:
        return error_page(request, 403, "仅企业成员可以登录。")
    async with rt.sessions() as session, session.begin():
        rep = await ensure_rep(session, str(userid), source="wecom")
        await session.flush()  # a member seen for the first time gets the column defaults (active)
        active = rep.active
    if not active:
        return error_page(request, 403, "该账号已停用。")
    response = _start_session(request, "wecom", str(userid), to)
    response.del_cookie(OAUTH_COOKIE, path="/")
    return response


@routes.post("/logout")
async def handle_logout(request: web.Request) -> web.Response:
    """End the session (CSRF-checked) and go to the login page."""
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    if not csrf_ok(request, viewer, (await _form(request)).get("csrf", "")):
        return error_page(request, 403, "页面已过期，请刷新后重试。", viewer=viewer)
    response = web.Response(status=303, headers={"Location": "/login", **NO_STORE})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
