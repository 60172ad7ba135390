"""Admin pages (role admin): the content library (browse, upload, retire, restore), channels with
their QR codes, the loaded scoring rules, the SOP playbooks and mass sends (群发: preview, send, the
sends so far). Every table exports as CSV."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from sqlalchemy import func, select

from bot.app import RUNTIME
from bot.auth import Viewer
from bot.channels import list_channels
from bot.context import Context
from bot.errors import InvalidInput, NotShareable
from bot.library_upload import UploadError, human_size, import_folder, unpack
from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS
from bot.mass_send import EVERYONE, SEGMENT_KEYS, SKIP_REASONS, check_text, parse_segment
from bot.mass_send import plan as mass_plan
from bot.mass_send import render as render_mass
from bot.mass_send import reports as mass_reports
from bot.mass_send import send as mass_send
from bot.models import Channel, ContentItem, ContentVersion, Enrollment, MassSend, Playbook, Rep
from bot.scoring.rules import ScoringModel
from bot.tables import Column, Table
from content.importer import ImportReport
from handlers.pagekit import (
    csrf_ok,
    csv_links,
    csv_response,
    error_page,
    page_viewer,
    render,
    wants_csv,
)
from handlers.sidebar import ALL_KIND_LABELS, JOURNEY_LABELS

routes = web.RouteTableDef()
FIELD_LIMIT = 4096
FILTER_KEYS = ("item_kind", "item_stage", "item_tag", "props", "min_depth", "min_seconds")


async def _content_table(session: Any) -> Table:
    rows = await session.execute(
        select(ContentItem, ContentVersion.version, ContentVersion.attachment_name)
        .outerjoin(ContentVersion, ContentVersion.id == ContentItem.current_version_id)
        .order_by(ContentItem.retired_at.is_not(None), ContentItem.slug)
    )
    out = [
        {"slug": i.slug, "title": i.title, "kind": ALL_KIND_LABELS.get(i.kind, i.kind), "stage": JOURNEY_LABELS.get(i.stage, i.stage),
         "version": version, "internal": i.internal, "gated": i.gated, "attachment": attachment, "retired": i.retired_at is not None,
         "updated_at": i.updated_at}
        for i, version, attachment in rows
    ]  # fmt: skip
    columns = [Column("slug", "slug"), Column("title", "标题"), Column("kind", "类型"), Column("stage", "旅程阶段"),
               Column("version", "版本", "int"), Column("internal", "内部", "bool"), Column("gated", "需留资", "bool"),
               Column("attachment", "附件"), Column("retired", "已下架", "bool"), Column("updated_at", "更新时间", "dt")]  # fmt: skip
    return Table("content", "内容库", columns, out)


async def _content_page(request: web.Request, viewer: Viewer, *, status: int = 200, **notice: Any) -> web.Response:
    async with request.app[RUNTIME].read_sessions() as session:
        table = await _content_table(session)
    if wants_csv(request):
        return csv_response(request, [table], "library")
    max_size = human_size(request.app[RUNTIME].settings.pages.upload_max_bytes)
    return render(request, "dash_admin_content.html", viewer=viewer, nav="admin", sub="content", title="内容库", table=table,
                  csv=csv_links(request, [table]), status=status, max_size=max_size, **notice)  # fmt: skip


@routes.get("/admin/content")
async def handle_content(request: web.Request) -> web.Response:
    """The library: every item with its current version, retired ones last; upload form."""
    viewer = await page_viewer(request, admin=True)
    if isinstance(viewer, web.Response):
        return viewer
    return await _content_page(request, viewer)


class _TooLarge(Exception):
    pass


async def _read_multipart(request: web.Request, limit: int) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Form fields and files, streamed with a total size limit (aiohttp's body limit is for small forms)."""
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    total = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        data = bytearray()
        cap = limit if part.filename else FIELD_LIMIT
        while chunk := await part.read_chunk(64 * 1024):
            total += len(chunk)
            data.extend(chunk)
            if total > limit or len(data) > cap:
                raise _TooLarge()
        if part.filename:
            if data:
                files.append((part.filename, bytes(data)))
        elif part.name:
            fields[part.name] = data.decode("utf-8", "replace")
    return fields, files


@routes.post("/admin/content/upload")
async def handle_upload(request: web.Request) -> web.Response:
    """A zip of a library folder, or .md files with their attachments: checked by the library
    scanner, then imported (new items, new versions, metadata updates; nothing else retired).
    200 with the import summary; 400 with every file's problems (nothing imported); 413 too big."""
    viewer = await page_viewer(request, admin=True)
    if isinstance(viewer, web.Response):
        return viewer
    rt = request.app[RUNTIME]
    limit = rt.settings.pages.upload_max_bytes
    if not request.content_type.startswith("multipart/"):
        return await _content_page(request, viewer, status=400, upload_error="请用表单上传文件（multipart/form-data）。")
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        return await _content_page(request, viewer, status=413, upload_error=f"上传内容超过 {human_size(limit)}。")
    try:
        fields, files = await _read_multipart(request, limit)
    except _TooLarge:
        return await _content_page(request, viewer, status=413, upload_error=f"上传内容超过 {human_size(limit)}。")
    if not csrf_ok(request, viewer, fields.get("csrf", "")):
        return error_page(request, 403, "页面已过期，请刷新后重新上传。", viewer=viewer)
    if not files:
        return await _content_page(request, viewer, status=400, upload_error="请选择要上传的文件。")
    with tempfile.TemporaryDirectory(prefix="beacon-upload-") as tmp:
        folder = Path(tmp)
        try:
            unpack(files, folder, max_bytes=limit)
            async with rt.sessions() as session, session.begin():
                result = await import_folder(session, folder, now=rt.clock.now())
        except UploadError as exc:
            return await _content_page(request, viewer, status=400, upload_error=str(exc))
    if not isinstance(result, ImportReport):
        problems = [f"{e.path.name}：{e.field}：{e.why}" for e in result]
        return await _content_page(request, viewer, status=400, upload_error="文件有误，未导入任何内容：", problems=problems)
    rt.links.forget()
    return await _content_page(request, viewer, imported=result)


async def _set_retired(request: web.Request, retire: bool) -> web.Response:
    viewer = await page_viewer(request, admin=True)
    if isinstance(viewer, web.Response):
        return viewer
    rt = request.app[RUNTIME]
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not csrf_ok(request, viewer, form.get("csrf", "")):
        return error_page(request, 403, "页面已过期，请刷新后重试。", viewer=viewer)
    slug = request.match_info["slug"]
    now = rt.clock.now()
    async with rt.sessions() as session, session.begin():
        item = await session.scalar(select(ContentItem).where(ContentItem.slug == slug))
        if item is None:
            return error_page(request, 404, f"没有这个内容：{slug}", viewer=viewer)
        item.retired_at = now if retire else None
        item.updated_at = now
    rt.links.forget()  # links of a retired item must stop working in this process now, not after the cache TTL
    return web.Response(status=303, headers={"Location": "/admin/content"})


@routes.post("/admin/content/{slug}/retire")
async def handle_retire(request: web.Request) -> web.Response:
    """Retire an item (its links answer 410, it leaves search and recommendations); 303 back."""
    return await _set_retired(request, True)


@routes.post("/admin/content/{slug}/restore")
async def handle_restore(request: web.Request) -> web.Response:
    """Undo a retirement; 303 back."""
    return await _set_retired(request, False)


def _simple_page(request: web.Request, viewer: Viewer, sub: str, title: str, tables: list[Table]) -> web.Response:
    if wants_csv(request):
        return csv_response(request, tables, sub)
    return render(request, "dash_admin.html", viewer=viewer, nav="admin", sub=sub, title=title, tables=tables,
                  csv=csv_links(request, tables))  # fmt: skip


@routes.get("/admin/channels")
async def handle_channels(request: web.Request) -> web.Response:
    """Channels (QR codes) as stored in the `channels` table, with contacts, adds and opens."""
    if isinstance(viewer := await page_viewer(request, admin=True), web.Response):
        return viewer
    async with request.app[RUNTIME].read_sessions() as session:
        views = await list_channels(session)
    rows = [{**v.as_json(), "reps": "、".join(v.reps), "created_at": v.created_at} for v in views]
    columns = [Column("name", "渠道"), Column("kind", "类型"), Column("state", "state"), Column("qr_code", "二维码", "image"),
               Column("reps", "接待成员"), Column("welcome", "欢迎资料"), Column("contacts", "客户", "int"),
               Column("adds", "添加", "int"), Column("opens", "链接打开", "int"), Column("created_at", "创建时间", "dt")]  # fmt: skip
    return _simple_page(request, viewer, "channels", "渠道", [Table("channels", "渠道与二维码", columns, rows)])


def _value(value: Any) -> str:
    if value is None or value == () or value == {}:
        return ""
    if isinstance(value, tuple):
        return "、".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _model_tables(model: ScoringModel, default: bool) -> list[Table]:
    keys = ("regions", "nurturing_at", "mql_at", "sql_at", "warm_at", "hot_at", "decay_after_days", "decay_half_life_days",
            "daily_cap", "timezone")  # fmt: skip
    settings = Table(f"{model.name}-settings", f"模型 {model.name}" + ("（默认）" if default else ""),
                     [Column("key", "设置"), Column("value", "值")],
                     [{"key": k, "value": _value(getattr(model, k))} for k in keys])  # fmt: skip
    profile = Table(f"{model.name}-profile", "资料规则", [Column("name", "规则"), Column("field", "字段"), Column("op", "条件"),
                    Column("value", "值"), Column("points", "分数", "num"), Column("label", "说明")],
                    [{"name": r.name, "field": r.field, "op": r.op, "value": _value(r.value), "points": r.points, "label": r.describe()}
                     for r in model.profile])  # fmt: skip
    behavior = Table(f"{model.name}-behavior", "行为规则", [Column("name", "规则"), Column("event", "事件"), Column("points", "分数", "num"),
                     Column("filters", "条件"), Column("caps", "上限"), Column("label", "说明")],
                     [{"name": r.name, "event": r.event, "points": r.points, "label": r.label,
                       "filters": "；".join(f"{k}={_value(getattr(r, k))}" for k in FILTER_KEYS if getattr(r, k)),
                       "caps": "；".join(f"{k}={getattr(r, k)}" for k in ("cap_per_item_per_day", "max_times") if getattr(r, k))}
                      for r in model.behavior])  # fmt: skip
    return [settings, profile, behavior]


@routes.get("/admin/scoring")
async def handle_scoring(request: web.Request) -> web.Response:
    """The scoring models and rules this process loaded from `[scoring]` (read-only)."""
    if isinstance(viewer := await page_viewer(request, admin=True), web.Response):
        return viewer
    scoring = request.app[RUNTIME].settings.scoring
    tables = [t for m in scoring.models for t in _model_tables(m, m.name == scoring.default_model)]
    return _simple_page(request, viewer, "scoring", "评分规则", tables)


@routes.get("/admin/playbooks")
async def handle_playbooks(request: web.Request) -> web.Response:
    """SOP playbook versions in `sop_playbooks`, with their enrollments by status."""
    if isinstance(viewer := await page_viewer(request, admin=True), web.Response):
        return viewer
    async with request.app[RUNTIME].read_sessions() as session:
        books = (await session.execute(select(Playbook).order_by(Playbook.key, Playbook.version.desc()))).scalars().all()
        counts: dict[int, dict[str, int]] = {}
        for playbook_id, status, n in await session.execute(
            select(Enrollment.playbook_id, Enrollment.status, func.count()).group_by(Enrollment.playbook_id, Enrollment.status)
        ):
            counts.setdefault(playbook_id, {})[status] = n
    rows = []
    for book in books:
        spec = book.definition or {}
        trigger: dict[str, Any] = spec["trigger"] if isinstance(spec.get("trigger"), dict) else {}
        steps: list[Any] = spec["steps"] if isinstance(spec.get("steps"), list) else []
        c = counts.get(book.id, {})
        rows.append({"key": book.key, "name": spec.get("name", ""), "version": book.version, "active": book.active,
                     "trigger": "；".join(f"{k}={v}" for k, v in trigger.items()), "steps": len(steps),
                     "enrolled_active": c.get("active", 0), "enrolled_done": c.get("done", 0), "enrolled_stopped": c.get("stopped", 0),
                     "created_at": book.created_at})  # fmt: skip
    columns = [Column("key", "key"), Column("name", "名称"), Column("version", "版本", "int"), Column("active", "启用", "bool"),
               Column("trigger", "触发条件"), Column("steps", "步骤数", "int"), Column("enrolled_active", "进行中", "int"),
               Column("enrolled_done", "已完成", "int"), Column("enrolled_stopped", "已停止", "int"),
               Column("created_at", "创建时间", "dt")]  # fmt: skip
    note = "" if rows else "还没有导入 SOP 剧本（[sop] folder 或 `python -m bot sop import DIR`）。"
    return _simple_page(request, viewer, "playbooks", "SOP 剧本", [Table("playbooks", "SOP 剧本", columns, rows, note=note)])


# --- mass sends (群发) -----------------------------------------------------------------------------

MASS_FIELDS = ("content", "stage", "temperature", "owner", "channel", "q", "text")


async def _mass_page(request: web.Request, viewer: Viewer, *, status: int = 200, form: dict[str, str] | None = None,
                     errors: dict[str, str] | None = None, preview: dict[str, Any] | None = None) -> web.Response:
    """The send form (its choices from the library, the team and the channels) and the sends so far."""
    async with request.app[RUNTIME].read_sessions() as session:
        items = (await session.execute(
            select(ContentItem.slug, ContentItem.title)
            .where(ContentItem.internal.is_(False), ContentItem.retired_at.is_(None)).order_by(ContentItem.title)
        )).all()  # fmt: skip
        owners = (await session.execute(select(Rep.userid, Rep.name).where(Rep.active.is_(True)).order_by(Rep.userid))).all()
        channels = [name for (name,) in await session.execute(select(Channel.name).order_by(Channel.name))]
        recent = list((await session.scalars(select(MassSend.id).order_by(MassSend.id.desc()).limit(50))).all())
        reports = await mass_reports(session, recent)
    names = {u: n or u for u, n in owners}
    rows = [{"id": r["id"], "title": r["title"], "segment": _segment_text(r["segment"], names), "created_by": r["created_by"],
             "created_at": dt.datetime.fromisoformat(r["created_at"]), "recipients": r["recipients"], "opened": r["opened"],
             "skipped": "、".join(f"{SKIP_REASONS.get(k, k)} {n}" for k, n in sorted(r["skipped"].items()))}
            for r in reports]  # fmt: skip
    columns = [Column("id", "编号", "int"), Column("title", "内容"), Column("segment", "分组"), Column("created_by", "发起人"),
               Column("created_at", "时间", "dt"), Column("recipients", "收件人", "int"), Column("opened", "已打开", "int"),
               Column("skipped", "未发送")]  # fmt: skip
    table = Table("mass-sends", "群发记录", columns, rows)
    if wants_csv(request):
        return csv_response(request, [table], "mass-sends")
    return render(request, "dash_admin_mass.html", viewer=viewer, nav="admin", sub="mass", title="群发", status=status,
                  table=table, csv=csv_links(request, [table]), items=items, owners=owners, channels=channels,
                  stages=STAGE_LABELS, temperatures=TEMPERATURE_LABELS, form=form or {}, errors=errors or {},
                  preview=preview, sent=request.query.get("sent", ""))  # fmt: skip


def _segment_text(segment: dict[str, Any], names: dict[str, str]) -> str:
    labels = {"stage": lambda v: STAGE_LABELS.get(v, v), "temperature": lambda v: TEMPERATURE_LABELS.get(v, v),
              "owner": lambda v: names.get(v, v), "channel": lambda v: "（无渠道）" if v == "none" else v}
    headings = {"stage": "阶段", "temperature": "温度", "owner": "负责人", "channel": "渠道", "q": "关键词"}
    return "，".join(f"{headings.get(k, k)} {labels.get(k, str)(v)}" for k, v in segment.items() if v) or "全部客户"


@routes.get("/admin/mass-sends")
async def handle_mass_sends(request: web.Request) -> web.Response:
    """The mass-send form and the sends so far (with how many recipients opened)."""
    if isinstance(viewer := await page_viewer(request, admin=True), web.Response):
        return viewer
    return await _mass_page(request, viewer)


@routes.post("/admin/mass-sends")
async def handle_mass_send_form(request: web.Request) -> web.Response:
    """`action=preview`: who would get it, who is skipped and why, and the message (nothing recorded);
    `action=send`: send it, then 303 back with `?sent=<id>`. A bad field gets its message beside it
    (400), the form kept as typed."""
    if isinstance(viewer := await page_viewer(request, admin=True), web.Response):
        return viewer
    rt = request.app[RUNTIME]
    posted = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not csrf_ok(request, viewer, posted.get("csrf", "")):
        return error_page(request, 403, "页面已过期，请刷新后重试。", viewer=viewer)
    form = {k: posted.get(k, "")[:FIELD_LIMIT] for k in MASS_FIELDS}
    segment = {k: form[k].strip() for k in SEGMENT_KEYS if form[k].strip()}
    async with rt.sessions() as session, session.begin():
        item = await session.scalar(select(ContentItem).where(ContentItem.slug == form["content"]))
        if item is None:
            return await _mass_page(request, viewer, status=400, form=form, errors={"content": "请选择要群发的内容。"})
        try:
            template = check_text(form["text"])
            prepared = await mass_plan(session, item, await parse_segment(session, segment), EVERYONE, now=rt.clock.now(),
                                       timezone=rt.settings.scheduler.timezone)  # fmt: skip
        except InvalidInput as exc:
            return await _mass_page(request, viewer, status=400, form=form, errors={exc.field.removeprefix("segment."): exc.message})
        except NotShareable:
            return await _mass_page(request, viewer, status=400, form=form, errors={"content": "该内容不可发给客户（内部资料或已下架）。"})
        skipped = [(SKIP_REASONS[k], n) for k, n in sorted(prepared.skipped.items())]
        if not prepared.recipients:
            return await _mass_page(request, viewer, status=400, form=form, errors={"segment": "分组中没有可以接收群发的客户。"},
                                    preview={"recipients": 0, "by_rep": {}, "skipped": skipped, "message": ""})  # fmt: skip
        if posted.get("action") != "send":
            first = prepared.recipients[0]
            names = {u: n or u for u, n in (await session.execute(select(Rep.userid, Rep.name))).all()}
            preview = {"recipients": len(prepared.recipients), "skipped": skipped,
                       "by_rep": {names.get(u, u): n for u, n in prepared.by_rep().items()},
                       "message": render_mass(template, first, item, f"{rt.settings.server.public_url}/l/…", names.get(first.owner, first.owner))}  # fmt: skip
            await session.rollback()
            return await _mass_page(request, viewer, form=form, preview=preview)
        mass = await mass_send(Context(rt, session, origin="page:mass-send"), prepared, template, segment=segment,
                               created_by=viewer.name or viewer.userid or "admin")  # fmt: skip
        mass_id = mass.id
    rt.outbox.wake()
    return web.Response(status=303, headers={"Location": f"/admin/mass-sends?sent={mass_id}"})
