"""What every member page shares: the logged-in viewer, rendering, CSRF checks, CSV and error pages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from bot.app import RUNTIME
from bot.auth import SESSION_COOKIE, Sessions, Viewer, load_viewer
from bot.tables import Table, find_table
from handlers.link_oauth import in_wechat

NO_STORE = {"Cache-Control": "private, no-store"}


def zone(request: web.Request) -> ZoneInfo:
    return ZoneInfo(request.app[RUNTIME].settings.scheduler.timezone)


def login_redirect(request: web.Request) -> web.Response:
    """Not logged in: inside WeCom straight to OAuth, elsewhere to the login page; back here after."""
    rt = request.app[RUNTIME]
    target = "/auth/wecom/start" if in_wechat(request) and rt.settings.wecom.corp_id else "/login"
    return web.Response(status=302, headers={"Location": f"{target}?{urlencode({'next': request.path_qs})}", **NO_STORE})


async def viewer_for(request: web.Request) -> Viewer | None:
    return await load_viewer(request.app[RUNTIME], request.cookies.get(SESSION_COOKIE, ""))


async def page_viewer(request: web.Request, *, admin: bool = False, member: bool = False) -> Viewer | web.Response:
    """The viewer, or the response to send instead: a login redirect, or a 403 page when the
    viewer lacks the role (`admin`) or is not a WeCom member (`member`: the admin-token login is not)."""
    viewer = await viewer_for(request)
    if viewer is None:
        return login_redirect(request)
    if admin and not viewer.is_admin:
        return error_page(request, 403, "此页面仅限管理员。", viewer=viewer)
    if member and not viewer.is_member:
        return error_page(request, 403, "此页面需要以企业微信成员身份登录（管理员令牌登录不能代表成员发送内容）。", viewer=viewer)
    return viewer


def csrf_ok(request: web.Request, viewer: Viewer, token: str) -> bool:
    return Sessions(request.app[RUNTIME]).check_csrf(viewer.cookie, token)


def render(request: web.Request, name: str, *, viewer: Viewer | None, status: int = 200,
           headers: dict[str, str] | None = None, **values: Any) -> web.Response:  # fmt: skip
    """A member page from content/templates (autoescaped), never cached by browsers or proxies."""
    rt = request.app[RUNTIME]
    csrf = Sessions(rt).csrf(viewer.cookie) if viewer is not None else ""
    html = rt.pages.env.get_template(name).render(viewer=viewer, csrf=csrf, tz=zone(request), request_path=request.path, **values)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers={**NO_STORE, **(headers or {})})


TITLES = {400: "请求有误", 401: "需要登录", 403: "无权访问", 404: "未找到", 413: "文件太大", 429: "操作太频繁", 502: "企业微信暂时不可用"}


def error_page(request: web.Request, status: int, message: str, *, viewer: Viewer | None = None) -> web.Response:
    """A friendly error page that says what went wrong (400 bad input, 403, 404 …)."""
    return render(request, "dash_error.html", viewer=viewer, status=status, title=TITLES.get(status, "出错了"),
                  message=message, code=status)  # fmt: skip


def csv_links(request: web.Request, tables: Iterable[Table]) -> dict[str, str]:
    """Per table key, this page's address with format=csv&table=key (the filters kept)."""
    base = {k: v for k, v in request.query.items() if k not in ("format", "table", "page")}
    return {t.key: f"{request.path}?{urlencode({**base, 'format': 'csv', 'table': t.key})}" for t in tables}


def wants_csv(request: web.Request) -> bool:
    return request.query.get("format") == "csv"


def csv_response(request: web.Request, tables: Iterable[Table], name: str) -> web.Response:
    """The table named by `?table=` (the first one when absent) as a CSV download; 400 page for an unknown one."""
    tables = list(tables)
    table = find_table(tables, request.query.get("table"))
    if table is None:
        keys = ", ".join(t.key for t in tables)
        return error_page(request, 400, f"未知的表格 {request.query.get('table')!r}；可选：{keys}")
    filename = f"{name}-{table.key}.csv"
    return web.Response(body=table.csv_bytes(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"', **NO_STORE})  # fmt: skip
