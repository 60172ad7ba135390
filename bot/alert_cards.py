"""What a follow-up alert looks like in WeCom: a `template_card` of type button_interaction.

Who, what they did (items, read depth, time on page), the score and why it moved (ledger reasons),
the stage, and a suggested next item (content.recommend_next: the next journey stage for the
contact's industry and persona, never one already sent). Buttons: 已跟进 / 1小时后 / 明天 / 不相关.
WeCom truncates long fields silently, so every field is cut to WeCom's recommended length here.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS, shown_score
from bot.models import Alert, Contact, ContentItem, Share, Task
from content.recommend import recommend_next

if TYPE_CHECKING:
    from bot.runtime import Runtime

CARD_PREFIX = "alert-"
HEADLINE_ORDER = ("demo_request", "cta", "form_submit", "download", "forward", "read", "open", "webinar_attended", "dwell",
                  "menu_click", "message")
_TITLE = re.compile(r"《[^》]*》")
TITLED = frozenset({"read", "open", "download", "forward", "dwell"})
BUTTON_KEYS = ("done", "snooze_1h", "snooze_tomorrow", "dismiss")
TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "source": "Beacon 跟进提醒", "source_urgent": "Beacon 紧急跟进", "source_reminder": "Beacon 稍后提醒",
        "score": "评分", "stage": "阶段", "why": "原因", "next": "建议", "task": "任务",
        "points": "{score:g} 分", "send": "发送《{title}》", "quote_title": "下一步",
        "quote": "回复「分享 {slug} 给 {name}」获取专属链接", "none": "—",
        "done": "已跟进", "snooze_1h": "1小时后提醒", "snooze_tomorrow": "明天提醒", "dismiss": "不相关",
        "done_ok": "已跟进 ✓", "snooze_1h_ok": "1小时后提醒 ✓", "snooze_tomorrow_ok": "明天9点提醒 ✓",
        "dismiss_ok": "已标记不相关", "closed": "任务已关闭",
        "open": "打开", "read": "读到 {depth}%", "dwell": "停留 {time}", "download": "下载附件", "form_submit": "提交表单",
        "forward": "转发给新访客", "cta_demo": "点击「预约演示」", "cta_contact": "点击「联系销售」", "cta": "点击按钮",
        "demo_request": "预约演示", "webinar_attended": "参加直播", "menu_click": "在客服菜单中选择", "message": "发来消息",
        "minutes": "{n} 分钟", "seconds": "{n} 秒", "sep": "、", "join": "；", "did": "{name}：{what}",
        "active": "最近活跃 {time}", "task_follow": "跟进 {name}：{what}", "task_urgent": "尽快联系 {name}：{what}",
    },
    "en": {
        "source": "Beacon follow-up", "source_urgent": "Beacon: act now", "source_reminder": "Beacon reminder",
        "score": "Score", "stage": "Stage", "why": "Why", "next": "Next", "task": "Task",
        "points": "{score:g} pts", "send": "Send \"{title}\"", "quote_title": "Next step",
        "quote": "Reply \"share {slug} to {name}\" for a tracked link", "none": "-",
        "done": "Done", "snooze_1h": "In 1 hour", "snooze_tomorrow": "Tomorrow", "dismiss": "Not relevant",
        "done_ok": "Done ✓", "snooze_1h_ok": "Reminding in 1 h ✓", "snooze_tomorrow_ok": "Tomorrow 09:00 ✓",
        "dismiss_ok": "Marked not relevant", "closed": "Task closed",
        "open": "opened", "read": "read {depth}%", "dwell": "{time} on page", "download": "downloaded", "form_submit": "filled the form",
        "forward": "forwarded it", "cta_demo": "clicked \"book a demo\"", "cta_contact": "clicked \"contact sales\"", "cta": "clicked",
        "demo_request": "booked a demo", "webinar_attended": "attended a webinar", "menu_click": "picked a menu item",
        "message": "sent a message", "minutes": "{n} min", "seconds": "{n} s", "sep": ", ", "join": "; ", "did": "{name}: {what}",
        "active": "last active {time}", "task_follow": "Follow up {name}: {what}", "task_urgent": "Call {name} now: {what}",
    },
}  # fmt: skip


def say(lang: str, key: str, **values: Any) -> str:
    return TEXT.get(lang, TEXT["zh"])[key].format(**values)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_card_task_id(alert_id: int) -> str:
    # task_id must be unique per app for ever; the random part survives a database reset.
    return f"{CARD_PREFIX}{alert_id}-{secrets.token_hex(4)}"


def contact_name(contact: Contact) -> str:
    return contact.name or contact.external_userid or f"#{contact.id}"


def _duration(seconds: int, lang: str) -> str:
    return say(lang, "minutes", n=round(seconds / 60)) if seconds >= 90 else say(lang, "seconds", n=seconds)


def activity_summary(activities: list[dict[str, Any]], lang: str) -> list[str]:
    """Per item, in the order first touched: "《白皮书》打开、读到 100%、停留 3 分钟"."""
    groups: dict[Any, dict[str, Any]] = {}
    for a in activities:
        g = groups.setdefault(a.get("item"), {"title": a.get("title"), "acts": [], "depth": 0, "seconds": 0})
        kind = a["type"]
        if kind == "read":
            g["depth"] = max(g["depth"], int(a.get("depth") or 0))
        elif kind == "dwell":
            g["seconds"] += int(a.get("seconds") or 0)
        elif kind == "cta":
            kind = {"demo": "cta_demo", "contact": "cta_contact"}.get(str(a.get("cta")), "cta")
        if kind not in ("read", "dwell") and kind not in g["acts"] and kind in TEXT["zh"]:
            g["acts"].append(kind)
    lines = []
    for g in groups.values():
        parts = [say(lang, k) for k in g["acts"]]
        if g["depth"]:
            parts.insert(1 if "open" in g["acts"] else 0, say(lang, "read", depth=g["depth"]))
        if g["seconds"]:
            parts.append(say(lang, "dwell", time=_duration(g["seconds"], lang)))
        what = say(lang, "sep").join(parts)
        if not g["title"]:
            lines.append(what)
        else:
            lines.append(f"《{g['title']}》{what}" if lang == "zh" else f"\"{g['title']}\": {what}")
    return lines


def headline(alert: Alert, activities: list[dict[str, Any]], lang: str) -> str:
    """The single most telling thing the contact did: "点击「预约演示」", "读到 100%《白皮书》"."""
    for kind in HEADLINE_ORDER:
        hit = next((a for a in reversed(activities) if a["type"] == kind), None)
        if hit is None:
            continue
        if kind == "read":
            depth = max(int(a.get("depth") or 0) for a in activities if a["type"] == "read" and a.get("item") == hit.get("item"))
            what = say(lang, "read", depth=depth)
        elif kind == "cta":
            what = say(lang, {"demo": "cta_demo", "contact": "cta_contact"}.get(str(hit.get("cta")), "cta"))
        elif kind == "dwell":
            seconds = sum(int(a.get("seconds") or 0) for a in activities if a["type"] == "dwell")
            what = say(lang, "dwell", time=_duration(seconds, lang))
        else:
            what = say(lang, kind)
        if hit.get("title") and kind in TITLED:
            what += f"《{hit['title']}》" if lang == "zh" else f" \"{hit['title']}\""
        return what
    return alert.detail.get("text") or say(lang, "none")


async def suggestion(session: AsyncSession, rt: "Runtime", contact: Contact, activities: list[dict[str, Any]]) -> ContentItem | None:
    """The next item to send: one step along the journey from what the contact read last, not yet sent."""
    sent = set((await session.scalars(select(Share.item_id).where(Share.contact_id == contact.id))).all())
    sent |= {a["item"] for a in activities if a.get("item")}
    last_stage = None
    for a in reversed(activities):
        if a.get("item"):
            _, last_stage, _, _ = await rt.services["scoring"].facts.get(session, a["item"])
            break
    picks = await recommend_next(
        session, contact_profile={"persona": contact.persona, "industry": contact.industry, "last_read_stage": last_stage},
        already_sent=sent, limit=1,
    )
    return picks[0] if picks else None


def _stage_text(alert: Alert, contact: Contact, lang: str) -> str:
    def label(stage: str) -> str:
        return STAGE_LABELS.get(stage, stage) if lang == "zh" else stage

    changes = alert.detail.get("stages") or []
    if changes and changes[0]["from"] != contact.stage:
        return f"{label(changes[0]['from'])} → {label(contact.stage)}"
    return label(contact.stage)


async def render_card(session: AsyncSession, rt: "Runtime", alert: Alert, contact: Contact, task: Task | None) -> dict[str, Any]:
    """The template_card for this alert as it stands now (sent first, then used for updates)."""
    lang = rt.settings.alerts.language
    detail = alert.detail or {}
    activities: list[dict[str, Any]] = detail.get("activities") or []
    name = contact_name(contact)
    who = " · ".join(p for p in (contact.company, contact.title) if p)
    last_at = max((a["at"] for a in activities), default=None)
    when = dt.datetime.fromisoformat(last_at).astimezone(ZoneInfo(rt.settings.scheduler.timezone)).strftime("%H:%M") if last_at else ""
    notes = "".join(n for n in [detail.get("text"), *(detail.get("notes") or [])] if n)  # each ends in 。
    sub = notes + say(lang, "join").join(activity_summary(activities, lang))
    temperature = TEMPERATURE_LABELS.get(contact.temperature, contact.temperature) if lang == "zh" else contact.temperature
    score = say(lang, "points", score=shown_score(contact.score))
    if alert.score_delta:
        score += f"（{alert.score_delta:+g}）" if lang == "zh" else f" ({alert.score_delta:+g})"
    reasons = sorted(detail.get("reasons") or [], key=lambda r: -r["points"])
    rows = [
        {"keyname": say(lang, "score"), "value": cut(f"{score} · {temperature}", 30)},
        {"keyname": say(lang, "stage"), "value": cut(_stage_text(alert, contact, lang), 30)},
    ]
    if reasons:
        # The item is already in the subtitle; without its title a reason fits WeCom's short field.
        why = say(lang, "join").join(_TITLE.sub("", r["reason"]) for r in reasons[:3])
        rows.append({"keyname": say(lang, "why"), "value": cut(why, 30)})
    pick = await suggestion(session, rt, contact, activities)
    if pick is not None:
        rows.append({"keyname": say(lang, "next"), "value": cut(say(lang, "send", title=pick.title), 30)})
    if task is not None:
        rows.append({"keyname": say(lang, "task"), "value": cut(f"#{task.id} {task.title}", 30),
                     "type": 1, "url": f"{rt.settings.server.public_url}/tasks/{task.id}"})  # opens the task page
    source = "source_urgent" if alert.urgent else ("source_reminder" if alert.kind == "reminder" else "source")
    card: dict[str, Any] = {
        "card_type": "button_interaction",
        "source": {"desc": say(lang, source), "desc_color": 2 if alert.urgent else 0},
        "main_title": {
            "title": cut(say(lang, "did", name=name, what=headline(alert, activities, lang)), 26),
            "desc": cut(" · ".join(p for p in (who, say(lang, "active", time=when) if when else "") if p), 30),
        },
        "sub_title_text": cut(sub, 112),
        "horizontal_content_list": rows,
        "task_id": alert.card_task_id,
        "button_list": [
            {"text": say(lang, "done"), "style": 1, "key": "done"},
            {"text": say(lang, "snooze_1h"), "style": 2, "key": "snooze_1h"},
            {"text": say(lang, "snooze_tomorrow"), "style": 2, "key": "snooze_tomorrow"},
            {"text": say(lang, "dismiss"), "style": 3, "key": "dismiss"},
        ],
    }
    if pick is not None:
        quote = cut(say(lang, "quote", slug=pick.slug, name=name), 60)
        card["quote_area"] = {"type": 0, "title": say(lang, "quote_title"), "quote_text": quote}
    return card
