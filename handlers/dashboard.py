"""The dashboard for managers and marketing ops (reps see the same pages for their own contacts).

Every page takes `?from=&to=` (local days, inclusive) and exports any of its tables with
`?format=csv&table=<key>`. Bad input → 400 page saying what is wrong; a contact outside the
viewer's scope → 403 page; an unknown contact → 404 page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot.app import RUNTIME
from bot.auth import Viewer
from bot.contact_list import PAGE_SIZE, ContactFilter, channel_options, contact_table
from bot.errors import InvalidInput
from bot.leaderboards import (
    content_leaderboard,
    rep_leaderboard,
    sop_compliance,
    team_reps,
)
from bot.ledger import reason_label
from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS
from bot.models import ContentItem, Rep, Task
from bot.reports import (
    DateRange,
    channel_funnel,
    content_funnel,
    parse_range,
    stage_funnel,
)
from bot.sidebar import EVENT_LABELS
from bot.tables import Column, Table
from bot.tasks import TASK_KIND_LABELS
from handlers.contacts_api import contact_view, find_contact
from handlers.pagekit import (
    csv_links,
    csv_response,
    error_page,
    page_viewer,
    render,
    wants_csv,
    zone,
)

routes = web.RouteTableDef()
TASK_STATUS = {"open": "待办", "done": "已完成", "dismissed": "不相关"}


def _range(request: web.Request, *, optional: bool = False) -> DateRange | None:
    rt = request.app[RUNTIME]
    raw_from, raw_to = request.query.get("from"), request.query.get("to")
    if optional and not (raw_from or raw_to):
        return None
    tz = zone(request)
    return parse_range(raw_from, raw_to, today=rt.clock.now().astimezone(tz).date(), tz=tz, default_days=rt.settings.pages.default_days)


async def _report_page(request: web.Request, nav: str, title: str, build: Any) -> web.Response:
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    try:
        rng = _range(request)
    except InvalidInput as exc:
        return error_page(request, 400, f"{exc.field}：{exc.message}", viewer=viewer)
    assert rng is not None
    rt = request.app[RUNTIME]

    async def count() -> list[Table]:
        async with rt.read_sessions() as session:
            return await build(session, rng, viewer)

    scope = None if viewer.team is None else tuple(sorted(viewer.team))
    report = await rt.reports.get((nav, scope, rng.start, rng.end), rt.clock.now(), count)
    if wants_csv(request):
        return csv_response(request, report.tables, nav)
    return render(request, "dash_report.html", viewer=viewer, nav=nav, title=title, rng=rng, tables=report.tables,
                  csv=csv_links(request, report.tables), counted_at=report.at, cache_s=rt.reports.ttl_s,
                  refreshing=report.refreshing)  # fmt: skip


@routes.get("/dashboard")
async def handle_overview(request: web.Request) -> web.Response:
    """The funnel: by stage (with conversion rates), by channel and by content item."""

    async def build(session: Any, rng: DateRange, viewer: Viewer) -> list[Table]:
        return [await stage_funnel(session, rng, viewer.scope), await channel_funnel(session, rng, viewer.scope),
                await content_funnel(session, rng, viewer.scope)]  # fmt: skip

    return await _report_page(request, "overview", "漏斗", build)


@routes.get("/dashboard/content")
async def handle_content(request: web.Request) -> web.Response:
    """The content leaderboard: shares, opens, read-through, CTA, downloads, stage advances."""

    async def build(session: Any, rng: DateRange, viewer: Viewer) -> list[Table]:
        return [await content_leaderboard(session, rng, viewer.scope)]

    return await _report_page(request, "content", "内容排行", build)


@routes.get("/dashboard/reps")
async def handle_reps(request: web.Request) -> web.Response:
    """The rep leaderboard (tasks on time, follow-up speed) and SOP compliance per rep."""
    now = request.app[RUNTIME].clock.now()

    async def build(session: Any, rng: DateRange, viewer: Viewer) -> list[Table]:
        return [await rep_leaderboard(session, rng, viewer.scope, now=now), await sop_compliance(session, rng, viewer.scope, now=now)]

    return await _report_page(request, "reps", "团队", build)


def _page_number(request: web.Request) -> int:
    raw = request.query.get("page", "1")
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise InvalidInput("page", f"页码应为正整数（收到 {raw[:20]!r}）")
    return int(raw)


@routes.get("/dashboard/contacts")
async def handle_contacts(request: web.Request) -> web.Response:
    """Contacts in the viewer's scope, filtered by stage, temperature, owner, channel, keyword and
    (when given) the range they were created in; 50 a page, CSV of all matching."""
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    try:
        flt = ContactFilter.parse(request.query, viewer.scope)
        rng = _range(request, optional=True)
        page = _page_number(request)
    except InvalidInput as exc:
        return error_page(request, 400, f"{exc.field}：{exc.message}", viewer=viewer)
    except PermissionError:
        return error_page(request, 403, "只能查看自己或团队成员的客户。", viewer=viewer)
    async with request.app[RUNTIME].read_sessions() as session:
        table, total = await contact_table(session, flt, viewer.scope, rng, page=page, page_size=None if wants_csv(request) else PAGE_SIZE)
        owners = await team_reps(session, viewer.scope)
        channels = await channel_options(session)
    if wants_csv(request):
        return csv_response(request, [table], "contacts")
    pages = max(1, -(-total // PAGE_SIZE))
    return render(request, "dash_contacts.html", viewer=viewer, nav="contacts", title="客户", table=table, total=total,
                  page=page, pages=pages, query=dict(request.query), csv=csv_links(request, [table]), rng=rng,
                  stages=STAGE_LABELS, temperatures=TEMPERATURE_LABELS, owners=owners, channels=channels)  # fmt: skip


def _at(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


# Plumbing, not behavior: browser strings, page-view keys, ids the other columns name already (the
# rep column; the channel's name stands for its WeCom `state`; the kf account).
_HIDDEN_PROPS = frozenset({"ua", "user_agent", "pageview", "rep", "state", "open_kfid", "to_visitor"})
_GATE_FIELDS = {"name": "姓名", "company": "公司", "title": "职务", "email": "邮箱", "phone": "手机"}
_PROP_TEXT: dict[str, Any] = {
    "depth": lambda v: f"读到 {v}%",
    "seconds": lambda v: f"停留 {v} 秒",
    "cta": lambda v: {"demo": "预约演示", "contact": "联系销售"}.get(str(v), f"按钮 {v}"),
    "by": lambda v: {"rep": "销售删除", "customer": "客户删除"}.get(str(v), f"by={v}"),
    "channel": lambda v: f"渠道 {v}",
    "amount": lambda v: f"金额 ¥{v:,.0f}" if isinstance(v, (int, float)) else f"金额 {v}",
    "file": lambda v: f"文件 {v}",
    "half": lambda v: "免验证添加" if v else "",
    "to_contact": lambda v: f"读者已识别为客户 #{v}" if v else "转给了新读者",
    "category": lambda v: f"菜单选择 {str(v).partition(':')[2] or v}",
    "unavailable": lambda v: f"所选内容不可用（{v}）",
    "results": lambda v: f"搜索结果 {v} 条",
    "handover": lambda v: "转人工（待分配）" if v == "pool" else f"转人工 → {v}",
    # open: only what is out of the ordinary (a gated item, a link to an older version)
    "gated": lambda v: "需留资" if v else "",
    "unlocked": lambda v: "",
    "outdated": lambda v: "旧版本链接" if v else "",
}


def _labelled(label: str) -> Any:
    return lambda v: f"{label} {v}" if v else ""


_PROP_TEXT |= {key: _labelled(label) for key, label in _GATE_FIELDS.items()}  # a gate form's fields
STAGE_MOVERS = {"rule:score": "评分规则", "rule:payment": "付款", "rule:dormancy": "沉睡规则",
                "rule:dormant_wakeup": "沉睡唤醒", "rule:rescore": "重新评分"}  # fmt: skip


def _props_text(props: dict[str, Any]) -> str:
    """An event's properties as a manager reads them: known ones in words (读到 75%, 停留 95 秒, 预约演示),
    the rest as key=value, plumbing left out."""
    parts = [_PROP_TEXT[k](v) if k in _PROP_TEXT else f"{k}={v}" for k, v in sorted(props.items()) if k not in _HIDDEN_PROPS]
    if props.get("gated"):  # a gated open says whether this browser had unlocked the item
        parts.append("已解锁" if props.get("unlocked") else "未解锁")
    return "，".join(p for p in parts if p)[:200]


async def _contact_tables(session: Any, contact_id: int, view: dict[str, Any]) -> list[Table]:
    score = Table("score", "分数明细", [Column("at", "时间", "dt"), Column("reason", "原因"), Column("rule", "规则"),
                  Column("model", "模型"), Column("points", "分数", "num"), Column("event_id", "事件", "int")],
                  [{**e, "at": _at(e["at"]), "reason": reason_label(e["reason"] or "")} for e in reversed(view["score_breakdown"])],
                  note=f"合计 {view['score']:g} 分（各条之和）")  # fmt: skip
    stages = Table("stages", "阶段历史", [Column("at", "时间", "dt"), Column("from", "从"), Column("to", "到"),
                   Column("by", "操作者"), Column("reason", "原因")],
                   [{**s, "at": _at(s["at"]), "by": STAGE_MOVERS.get(s["by"], s["by"]), "from": STAGE_LABELS.get(s["from"], s["from"]), "to": STAGE_LABELS.get(s["to"], s["to"])}
                    for s in reversed(view["stage_history"])])  # fmt: skip
    timeline = Table("timeline", "行为时间线", [Column("at", "时间", "dt"), Column("type_label", "行为"), Column("type", "type"),
                     Column("item_title", "内容"), Column("details", "详情"), Column("rep", "成员")],
                     [{**e, "at": _at(e["at"]), "type_label": EVENT_LABELS.get(e["type"], e["type"]), "details": _props_text(e["props"])}
                      for e in view["timeline"]])  # fmt: skip
    rows = await session.execute(
        select(Task.kind, Task.title, Task.status, Task.due_at, Task.completed_at, Rep.name, ContentItem.title)
        .outerjoin(Rep, Rep.userid == Task.owner_userid)
        .outerjoin(ContentItem, ContentItem.id == Task.item_id)
        .where(Task.contact_id == contact_id)
        .order_by(Task.due_at.desc())
        .limit(100)
    )
    tasks = Table("tasks", "任务", [Column("due_at", "到期", "dt"), Column("kind", "类型"), Column("title", "任务"),
                  Column("status", "状态"), Column("completed_at", "完成时间", "dt"), Column("owner", "负责人"), Column("item", "建议内容")],
                  [{"kind": TASK_KIND_LABELS.get(k, k), "title": t, "status": TASK_STATUS.get(s, s), "due_at": d, "completed_at": c, "owner": o, "item": i}
                   for k, t, s, d, c, o, i in rows])  # fmt: skip
    return [timeline, score, stages, tasks]


@routes.get("/dashboard/contacts/{key}")
async def handle_contact(request: web.Request) -> web.Response:
    """One contact: profile, score with its breakdown (sums to the score), stage history, timeline,
    tasks. `key` is the external_userid or `id:<n>`. 404 page unknown, 403 page outside the scope."""
    viewer = await page_viewer(request)
    if isinstance(viewer, web.Response):
        return viewer
    key = request.match_info["key"]
    async with request.app[RUNTIME].read_sessions() as session:
        contact = await find_contact(session, key)
        if contact is None:
            return error_page(request, 404, f"没有这个客户：{key}", viewer=viewer)
        if not viewer.sees_owner(contact.owner_userid):
            return error_page(request, 403, "这位客户不属于您或您的团队。", viewer=viewer)
        view = await contact_view(session, contact, timeline_limit=200)
        owner = await session.get(Rep, contact.owner_userid) if contact.owner_userid else None
        tables = await _contact_tables(session, contact.id, view)
    if wants_csv(request):
        return csv_response(request, tables, f"contact-{contact.id}")
    return render(request, "dash_contact.html", viewer=viewer, nav="contacts", title=view["name"] or key, c=view,
                  owner_name=owner.name if owner else None, tables=tables, csv=csv_links(request, tables),
                  stage_label=STAGE_LABELS.get(view["stage"], view["stage"]),
                  temperature_label=TEMPERATURE_LABELS.get(view["temperature"], view["temperature"]))  # fmt: skip
