"""Server-rendered pages: one autoescaping Jinja2 environment, Chinese by default, English available."""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web
from cachetools import LRUCache
from jinja2 import Environment, PackageLoader, select_autoescape

PAGE_TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "not_found_title": "链接不存在",
        "not_found_body": "这个链接无效或已失效。请向发送给您的顾问索取最新链接。",
        "gone_title": "资料已下架",
        "gone_body": "这份资料已下架。请联系您的顾问获取最新版本。",
        "error_title": "出错了",
        "error_body": "页面暂时无法显示，请稍后再试。",
        "updated_notice": "此资料已更新，您看到的是最新版本。",
        "download": "下载附件",
        "cta_demo": "预约演示",
        "cta_contact": "联系销售",
        "cta_thanks": "已收到，顾问会尽快与您联系。",
        "gate_intro": "填写以下信息即可查看完整内容",
        "gate_submit": "查看完整内容",
        "name": "姓名",
        "company": "公司",
        "title": "职务",
        "phone": "手机号",
        "optional": "选填",
        "err_required": "请填写{field}",
        "err_phone": "请输入11位中国大陆手机号，例如 13812345678",
        "err_too_long": "{field}不能超过{n}个字",
        "err_csrf": "页面已过期，请刷新后重新提交。",
        "powered": "由 Beacon 提供",
    },
    "en": {
        "not_found_title": "Link not found",
        "not_found_body": "This link is invalid or has expired. Please ask your contact for a new one.",
        "gone_title": "No longer available",
        "gone_body": "This material has been withdrawn. Please ask your contact for the latest version.",
        "error_title": "Something went wrong",
        "error_body": "This page cannot be shown right now. Please try again later.",
        "updated_notice": "This material has been updated; you are seeing the latest version.",
        "download": "Download attachment",
        "cta_demo": "Book a demo",
        "cta_contact": "Contact sales",
        "cta_thanks": "Thank you, we will be in touch shortly.",
        "gate_intro": "Leave your details to read the full material",
        "gate_submit": "Read the full material",
        "name": "Name",
        "company": "Company",
        "title": "Job title",
        "phone": "Mobile",
        "optional": "optional",
        "err_required": "Please enter your {field}",
        "err_phone": "Please enter an 11-digit mainland China mobile number, e.g. 13812345678",
        "err_too_long": "{field} must be at most {n} characters",
        "err_csrf": "This page has expired; please reload it and submit again.",
        "powered": "Powered by Beacon",
    },
}


def page_lang(request: web.Request) -> str:
    """`?lang=en` or an English-first Accept-Language picks English; Chinese otherwise."""
    if request.query.get("lang") in PAGE_TEXT:
        return request.query["lang"]
    accept = request.headers.get("Accept-Language", "").lower()
    return "en" if accept.startswith("en") else "zh"


_SLOT_VALUE = re.compile(r"^[A-Za-z0-9_-]*$")


class Pages:
    """Templates are package files: read once (no modification checks per render)."""

    def __init__(self, slotted_size: int = 1024) -> None:
        self.env = Environment(
            loader=PackageLoader("content", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            enable_async=False,
            auto_reload=False,
        )
        self._slotted: LRUCache[tuple[Any, ...], list[Any]] = LRUCache(slotted_size)
        self._mark = f"\x1a{secrets.token_hex(8)}\x1a"  # cannot occur in a template or escaped text

    def render(self, name: str, lang: str = "zh", **values: Any) -> str:
        return self.env.get_template(name).render(t=PAGE_TEXT.get(lang, PAGE_TEXT["zh"]), lang=lang, **values)

    def response(self, name: str, lang: str = "zh", *, status: int = 200, **values: Any) -> web.Response:
        return web.Response(text=self.render(name, lang, **values), status=status, content_type="text/html", charset="utf-8")

    def slotted_response(self, name: str, lang: str, slots: dict[str, str], **values: Any) -> web.Response:
        """`response(name, lang, **values, **slots)` for a page rendered once per distinct `values` (which
        must be hashable) and reused with each request's `slots` filled in: the landing page, whose only
        per-request parts are its token, signed keys and page-view id. A slot value must be URL-safe
        base64 ([A-Za-z0-9_-]), the same text in every HTML context; anything else renders in full."""
        if not all(_SLOT_VALUE.match(value) for value in slots.values()):
            return self.response(name, lang, **values, **slots)
        # `values` come in the caller's keyword order, the same at one call site: no sorting needed.
        key = (name, lang, tuple(slots), tuple(values.items()))
        parts = self._slotted.get(key)
        if parts is None:
            marked = self.render(name, lang, **values, **{slot: f"{self._mark}{slot}{self._mark}" for slot in slots})
            # text, slot name, text, slot name … text; the texts kept encoded (a page is ~10 kB of UTF-8)
            pieces = marked.split(self._mark)
            parts = self._slotted[key] = [p if i % 2 else p.encode() for i, p in enumerate(pieces)]
        filled = parts.copy()
        for i in range(1, len(filled), 2):
            filled[i] = slots[filled[i]].encode()
        return web.Response(body=b"".join(filled), content_type="text/html", charset="utf-8")

    def error(self, status: int, lang: str = "zh") -> web.Response:
        key = {404: "not_found", 410: "gone"}.get(status, "error")
        return self.response("error.html", lang, status=status, key=key)


def _without_title(md: str) -> str:
    """The page shows the item's title as its heading; a body opening with its own `# title` would repeat it."""
    stripped = md.lstrip()
    if stripped.startswith("# "):
        return stripped.split("\n", 1)[1] if "\n" in stripped else ""
    return md


class RenderedVersions:
    """Rendered Markdown per content version (versions never change, so the cache never goes stale)."""

    def __init__(self, sessions: Any, size: int = 512) -> None:
        self.sessions = sessions
        self._html: LRUCache[int, tuple[str, str | None]] = LRUCache(size)

    async def get(self, version_id: int) -> tuple[str, str | None]:
        """(body HTML, attachment file name or None)."""
        hit = self._html.get(version_id)
        if hit is not None:
            return hit
        from sqlalchemy import select

        from bot.models import ContentVersion
        from content.render import render_markdown

        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ContentVersion.body_md, ContentVersion.attachment_name).where(ContentVersion.id == version_id)
                )
            ).first()
        value = ("", None) if row is None else (render_markdown(_without_title(row[0])), row[1])
        self._html[version_id] = value
        return value

    async def attachment(self, version_id: int) -> tuple[str, bytes] | None:
        from sqlalchemy import select

        from bot.models import ContentVersion

        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(ContentVersion.attachment_name, ContentVersion.attachment_data).where(ContentVersion.id == version_id)
                )
            ).first()
        if row is None or row[0] is None or row[1] is None:
            return None
        return row[0], row[1]
