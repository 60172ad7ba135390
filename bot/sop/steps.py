"""Carrying out one playbook step: a task for the owner with the suggested item and a ready message.

The ready message carries a tracked link made for this contact (source "sop"), so what the rep
forwards is attributed. Optional automatic sends, both through the outbox with a stable key:
- `send = "app"`: an app message to the owner with the ready text (the safe automatic path);
- `send = "customer"`: `externalcontact/add_msg_template` with the owner as sender. WeCom does not
  deliver it by itself: the rep confirms it in the client (群发助手), so a person still decides.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select

from bot.context import Context
from bot.customer_text import clip
from bot.errors import NotShareable
from bot.models import Contact, ContentItem, Enrollment, Rep, Task
from bot.shares import create_share
from bot.sop.definition import PlaybookDef, Step

log = logging.getLogger("beacon.sop")

MESSAGE_BYTES = 2048
DEFAULT_MESSAGE = "{name}您好，给您分享一份《{title}》，{summary}欢迎查阅：{link}"
DEFAULT_MESSAGE_NO_ITEM = "{name}您好，最近有什么可以帮到您的吗？"
SEND_MSG_TEMPLATE = "/cgi-bin/externalcontact/add_msg_template"


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def render_message(step: Step, values: dict[str, str]) -> str:
    template = step.message or (DEFAULT_MESSAGE if values.get("title") else DEFAULT_MESSAGE_NO_ITEM)
    return template.format_map(_Blank(values)).strip()


def contact_label(contact: Contact) -> str:
    name = contact.name or contact.external_userid or f"#{contact.id}"
    return f"{name}（{contact.company}）" if contact.company else name


async def run_step(ctx: Context, enrollment: Enrollment, definition: PlaybookDef, contact: Contact, index: int,
                   due_at: dt.datetime) -> Task:
    """Create the step's task (and its sends) in the caller's unit of work."""
    session, now = ctx.session, ctx.clock.now()
    step = definition.steps[index]
    owner = contact.owner_userid or enrollment.owner_userid or ""
    rep = await session.get(Rep, owner)
    item = await session.scalar(select(ContentItem).where(ContentItem.slug == step.item)) if step.item else None
    if step.item and item is None:
        log.warning("playbook %s step %d: item %r is not in the library", definition.key, index + 1, step.item)
    link = ""
    if item is not None and not item.internal:
        try:
            share = await create_share(session, item, rep_userid=owner, contact_id=contact.id, source="sop")
            link = f"{ctx.settings.server.public_url}/l/{share.token}"
        except NotShareable as exc:
            log.warning("playbook %s step %d: %s", definition.key, index + 1, exc)
    values = {
        "name": contact.name or "", "company": contact.company or "", "rep": (rep.name if rep else "") or owner,
        "title": item.title if item else "", "summary": as_sentence(item.summary) if item else "", "link": link,
    }  # fmt: skip
    message = render_message(step, values)
    position = f"第{index + 1}/{len(definition.steps)}步"
    task = Task(
        kind="sop", title=clip(f"{definition.name}·{position}：{step.title}（{contact_label(contact)}）", 255),
        body=message, owner_userid=owner, contact_id=contact.id, item_id=item.id if item else None,
        priority=step.priority, due_at=due_at, enrollment_id=enrollment.id, created_at=now,
    )  # fmt: skip
    session.add(task)
    await session.flush()
    key = f"sop:{enrollment.id}:{index}"
    if step.send == "customer" and contact.external_userid:
        ctx.send(SEND_MSG_TEMPLATE, _customer_payload(owner, contact.external_userid, message), key=key)
        task.body = f"{message}\n\n（已提交企业微信群发，请在客户端「群发助手」中确认发送）"
    elif step.send in ("app", "customer"):
        text = app_text(ctx, definition, position, step, contact, item, message, task)
        ctx.send("/cgi-bin/message/send", {"touser": owner, "msgtype": "text", "text": {"content": text}}, key=key)
    return task


def app_text(ctx: Context, definition: PlaybookDef, position: str, step: Step, contact: Contact,
             item: ContentItem | None, message: str, task: Task) -> str:
    lines = [f"【SOP·{definition.name}】{position}：{step.title}", f"客户：{contact_label(contact)}"]
    if item is not None:
        lines.append(f"建议内容：《{item.title}》")
    lines += ["可直接转发：", message, f"任务：{ctx.settings.server.public_url}/tasks/{task.id}"]
    return clip("\n".join(lines), MESSAGE_BYTES)


def _customer_payload(owner: str, external_userid: str, message: str) -> dict[str, Any]:
    return {"chat_type": "single", "external_userid": [external_userid], "sender": owner,
            "text": {"content": clip(message, MESSAGE_BYTES)}}


def as_sentence(summary: str) -> str:
    """The summary ending in a full stop (or its own ! ?), to run on into a message; "" when empty."""
    summary = (summary or "").strip()
    if not summary:
        return ""
    return summary if summary.endswith(("。", "！", "？", ".", "!", "?")) else summary + "。"
