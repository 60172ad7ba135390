"""Scheduled alert work, as plain `job(ctx)` functions (bot/scheduler.py runs them; tests call them
with the FrozenClock):

- `send_due_alerts` (every 30 s): reminders for snoozes that ran out, due card updates, then pending
  alerts whose `send_after` has passed — per rep, urgent first, then by how much the score moved, so
  that when the daily cap allows only some, the biggest movers are the ones sent.
- `escalate_overdue` (every 5 min): urgent follow-up tasks still open after `[alerts].sla_hours` go to
  the rep's manager in one app message per manager, once per task (`tasks.escalated_at`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.alert_cards import cut
from bot.alert_delivery import send_update, suppress
from bot.context import Context
from bot.models import Alert, Contact, Rep, Task
from bot.tasks import FOLLOW_UP_KINDS

log = logging.getLogger("beacon.alerts")

BATCH = 500
ESCALATION_LINES = 15  # with titles cut to 40 characters, one message stays under WeCom's 2048 bytes
TEXT = {
    "zh": {
        "remind": "⏰ 提醒：{title}（任务 #{id}）",
        "escalate_head": "以下高意向线索超过 {hours:g} 小时未跟进：",
        "escalate_line": "· {rep}：{title}（任务 #{id}，{since} 创建）",
        "escalate_more": "……另有 {n} 项",
    },
    "en": {
        "remind": "⏰ Reminder: {title} (task #{id})",
        "escalate_head": "These hot leads have waited more than {hours:g} h for a follow-up:",
        "escalate_line": "· {rep}: {title} (task #{id}, created {since})",
        "escalate_more": "…and {n} more",
    },
}


def _t(ctx: Context, key: str, **values: object) -> str:
    return TEXT[ctx.settings.alerts.language][key].format(**values)


async def send_due_alerts(ctx: Context) -> None:
    """Send what is due now; see the module docstring for the order."""
    now = ctx.clock.now()
    await remind_snoozed(ctx, now)
    await send_card_updates(ctx, now)
    due = (await ctx.session.scalars(
        select(Alert).where(Alert.status == "pending", Alert.send_after <= now).order_by(Alert.id).limit(BATCH)
        .with_for_update(skip_locked=True)  # the tracker is merging into these: leave them to the next pass
    )).all()
    by_rep: dict[str, list[Alert]] = defaultdict(list)
    for alert in due:
        by_rep[alert.rep_userid].append(alert)
    service = ctx.runtime.services["alerts"]
    for alerts in by_rep.values():
        alerts.sort(key=lambda a: (not a.urgent, -(a.score_delta or 0.0), a.id))
        for alert in alerts:
            contact = await ctx.session.get(Contact, alert.contact_id)
            if contact is None or contact.erased_at is not None:
                await suppress(ctx.session, ctx.runtime, alert, None, now, "contact erased")
            else:
                await service.settle(ctx.session, alert, contact, now)  # the same rules as in the tracker


async def send_card_updates(ctx: Context, now: dt.datetime) -> None:
    """Sent cards that learned more since: one update_template_card each, once the card is out."""
    stale = (await ctx.session.scalars(
        select(Alert).where(Alert.status == "sent", Alert.clicked_at.is_(None), Alert.send_after > Alert.sent_at,
                            Alert.send_after <= now).order_by(Alert.id).limit(BATCH)
    )).all()
    for alert in stale:
        if await send_update(ctx.session, ctx.runtime, alert, now) is False:
            log.info("alert %s: card cannot be updated (no response_code)", alert.id)


async def remind_snoozed(ctx: Context, now: dt.datetime) -> None:
    """Snoozes that ran out: a reminder card for the task (or a text when it has no contact)."""
    tasks = (await ctx.session.scalars(
        select(Task).where(Task.status == "open", Task.snoozed_until.is_not(None), Task.snoozed_until <= now)
        .order_by(Task.snoozed_until, Task.id).limit(BATCH)
    )).all()
    service = ctx.runtime.services["alerts"]
    for task in tasks:
        task.snoozed_until = None
        contact = await ctx.session.get(Contact, task.contact_id) if task.contact_id else None
        if contact is None or contact.erased_at is not None:
            text = _t(ctx, "remind", title=task.title, id=task.id)
            ctx.send_text(task.owner_userid, text, key=f"task-remind:{task.id}:{now.isoformat()}")
            continue
        alert = Alert(rep_userid=task.owner_userid, contact_id=contact.id, task_id=task.id, kind="reminder", urgent=False,
                      detail={"text": _t(ctx, "remind", title=task.title, id=task.id)}, first_event_at=now, send_after=now,
                      score_delta=0.0)
        ctx.session.add(alert)
        await ctx.session.flush()
        await service.on_alert(ctx.session, alert, contact)


async def escalate_overdue(ctx: Context) -> None:
    """Urgent follow-ups past the SLA: tell each rep's manager once, in one message per manager."""
    now = ctx.clock.now()
    hours = ctx.settings.alerts.sla_hours
    rows = (await ctx.session.execute(
        select(Task, Rep).join(Rep, Rep.userid == Task.owner_userid).where(
            Task.status == "open", Task.priority == 1, Task.kind.in_(FOLLOW_UP_KINDS), Task.escalated_at.is_(None),
            Task.created_at <= now - dt.timedelta(hours=hours),
        ).order_by(Task.created_at, Task.id).limit(BATCH)
    )).all()
    by_manager: dict[str, list[tuple[Task, Rep]]] = defaultdict(list)
    for task, rep in rows:
        task.escalated_at = now  # once, even without a manager to tell (logged below)
        if rep.manager_userid:
            by_manager[rep.manager_userid].append((task, rep))
        else:
            log.warning("task %s is past its SLA but rep %s has no manager", task.id, rep.userid)
    zone = ZoneInfo(ctx.settings.scheduler.timezone)
    for manager, items in by_manager.items():
        lines = [_t(ctx, "escalate_head", hours=hours)]
        for task, rep in items[:ESCALATION_LINES]:
            since = task.created_at.astimezone(zone).strftime("%m-%d %H:%M")
            lines.append(_t(ctx, "escalate_line", rep=rep.name or rep.userid, title=cut(task.title, 40), id=task.id, since=since))
        if len(items) > ESCALATION_LINES:
            lines.append(_t(ctx, "escalate_more", n=len(items) - ESCALATION_LINES))
        ctx.send_text(manager, "\n".join(lines), key=f"escalate:{manager}:{items[0][0].id}:{now.isoformat()}")

