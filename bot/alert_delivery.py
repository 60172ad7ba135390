"""Getting alert cards to a rep without ever tripping WeCom's silent drop.

WeCom accepts every app message and silently drops those beyond 30 per member per minute, so Beacon
throttles itself: at most `[alerts].per_minute_limit` (≤ 20) cards per rep in any 60 seconds, counted
from the alerts table (so every process and the tracker see the same count). On top of that:
- loud alerts (urgent, MQL hand-off, dormant wake-up, a snooze running out) skip the delay and the
  daily cap; only urgent ones also skip quiet hours;
- the others wait for quiet hours to end, and beyond `daily_cap` cards a day are suppressed: their
  task waits in the to-do list instead.
A card's outbox row written in the current transaction is rewritten in place when more activity
arrives before commit; once sent, the card is updated once with `update_template_card` (WeCom's
response_code is single-use).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import func, inspect as sa_inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.alert_cards import contact_name, cut, headline, new_card_task_id, render_card, say
from bot.models import Alert, Contact, OutboxItem, Rep, Task
from bot.outbox import enqueue
from bot.tasks import FOLLOW_UP_KINDS

if TYPE_CHECKING:
    from bot.runtime import Runtime

SEND = "/cgi-bin/message/send"
UPDATE = "/cgi-bin/message/update_template_card"
LOUD_KINDS = frozenset({"mql", "dormant_wakeup", "reminder"})
MINUTE = dt.timedelta(seconds=60)
_UNSENT = "beacon.alert_cards"  # session.info: alert id → its outbox row written in this transaction


def is_loud(alert: Alert) -> bool:
    """Loud alerts are told at once and never folded silently into a card the rep has already seen."""
    return bool(alert.urgent) or alert.kind in LOUD_KINDS


def card_key(alert: Alert) -> str:
    return f"alert-card:{alert.id}"


async def unsent_card(session: AsyncSession, alert: Alert) -> OutboxItem | None:
    """The alert's card if it was queued in this very transaction (so it can still be rewritten).
    A savepoint rolled back since (another hook failed on a later event) may have taken the row with it
    (then there is none) or expired it (then it is loaded again, never lazily)."""
    unsent = session.info.get(_UNSENT, {})
    item = unsent.get(alert.id)
    if item is None:
        return None
    state = sa_inspect(item)
    if not (state.pending or state.persistent) or state.session_id != session.sync_session.hash_key:
        unsent.pop(alert.id, None)
        return None
    if state.expired_attributes:
        await session.refresh(item)
    return item


def quiet_until(now: dt.datetime, start: str, end: str, tz: str) -> dt.datetime | None:
    """The end of the quiet period `now` falls in (local HH:MM bounds, may wrap midnight), else None."""
    if not start or not end or start == end:
        return None
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    s, e = dt.time.fromisoformat(start), dt.time.fromisoformat(end)
    t = local.time()
    inside = s <= t < e if s < e else (t >= s or t < e)
    if not inside:
        return None
    day = local.date() if t < e else local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, e, tzinfo=zone).astimezone(dt.timezone.utc)


def quiet_hours_of(rep: Rep, runtime: "Runtime") -> tuple[str, str]:
    cfg = runtime.settings.alerts
    if rep.quiet_start is not None and rep.quiet_end is not None:
        return rep.quiet_start, rep.quiet_end
    return cfg.quiet_start, cfg.quiet_end


async def minute_budget(session: AsyncSession, rep: str, now: dt.datetime, limit: int) -> tuple[int, dt.datetime]:
    """Cards this rep may still get in the current minute, and when the next slot frees up."""
    recent = list((await session.scalars(
        select(Alert.sent_at).where(Alert.rep_userid == rep, Alert.sent_at > now - MINUTE).order_by(Alert.sent_at)
    )).all())
    free_at = recent[len(recent) - limit] + MINUTE if len(recent) >= limit else now
    return limit - len(recent), free_at


async def capped_today(session: AsyncSession, rep: str, now: dt.datetime, tz: str) -> int:
    """Cards counted against the daily cap (not loud ones) sent to this rep since local midnight."""
    zone = ZoneInfo(tz)
    midnight = dt.datetime.combine(now.astimezone(zone).date(), dt.time(0), tzinfo=zone).astimezone(dt.timezone.utc)
    return int(await session.scalar(
        select(func.count()).select_from(Alert).where(
            Alert.rep_userid == rep, Alert.sent_at >= midnight, Alert.urgent.is_(False), Alert.kind.not_in(LOUD_KINDS)
        )
    ) or 0)


@dataclass(frozen=True)
class Decision:
    action: Literal["send", "wait", "suppress"]
    until: dt.datetime | None = None


async def decide(session: AsyncSession, rt: "Runtime", alert: Alert, rep: Rep, now: dt.datetime) -> Decision:
    """What to do with a due pending alert right now (the order of the checks is the policy)."""
    cfg = rt.settings.alerts
    tz = rt.settings.scheduler.timezone
    left, free_at = await minute_budget(session, rep.userid, now, cfg.per_minute_limit)
    if left <= 0:
        return Decision("wait", free_at)
    if not alert.urgent:
        quiet_end = quiet_until(now, *quiet_hours_of(rep, rt), tz)
        if quiet_end is not None:
            return Decision("wait", quiet_end)
    if not is_loud(alert) and cfg.daily_cap and await capped_today(session, rep.userid, now, tz) >= cfg.daily_cap:
        return Decision("suppress")
    return Decision("send")


async def ensure_task(session: AsyncSession, rt: "Runtime", alert: Alert, contact: Contact, now: dt.datetime) -> Task:
    """Every alert the rep is told about (or that is folded into the to-do list) has an open task:
    its own, else the contact's open follow-up task, else a new one."""
    task = await session.get(Task, alert.task_id) if alert.task_id else None
    if task is None or task.status != "open":
        task = await session.scalar(
            select(Task).where(Task.owner_userid == alert.rep_userid, Task.contact_id == contact.id, Task.status == "open",
                               Task.kind.in_(FOLLOW_UP_KINDS)).order_by(Task.priority, Task.id.desc()).limit(1)
        )
    if task is None:
        events = alert.detail.get("events") or []
        hours = rt.settings.alerts.sla_hours if alert.urgent else 24.0
        lang = rt.settings.alerts.language
        what = headline(alert, alert.detail.get("activities") or [], lang)
        title = say(lang, "task_urgent" if alert.urgent else "task_follow", name=contact_name(contact), what=what)
        task = Task(kind="hot_lead" if alert.urgent else "follow_up", title=cut(title, 255),
                    owner_userid=alert.rep_userid, contact_id=contact.id, priority=1 if alert.urgent else 2,
                    due_at=now + dt.timedelta(hours=hours), source_event_id=events[0] if events else None, created_at=now)
        session.add(task)
        await session.flush()
    elif alert.urgent and task.priority > 1:
        task.priority = 1
    alert.task_id = task.id
    return task


async def deliver(session: AsyncSession, rt: "Runtime", alert: Alert, contact: Contact, now: dt.datetime) -> None:
    """Queue the alert's card (sent after commit, once) and record it as sent."""
    task = await ensure_task(session, rt, alert, contact, now)
    alert.card_task_id = alert.card_task_id or new_card_task_id(alert.id)
    alert.status, alert.sent_at, alert.send_after = "sent", now, now
    card = await render_card(session, rt, alert, contact, task)
    item = enqueue(session, SEND, {"touser": alert.rep_userid, "msgtype": "template_card", "template_card": card},
                   key=card_key(alert), now=now)
    session.info.setdefault(_UNSENT, {})[alert.id] = item


async def suppress(session: AsyncSession, rt: "Runtime", alert: Alert, contact: Contact | None, now: dt.datetime, why: str) -> None:
    """Not sent: over the daily cap (its task waits in the to-do list), or nobody to tell any more."""
    if contact is not None and contact.erased_at is None:
        await ensure_task(session, rt, alert, contact, now)
    alert.status = "suppressed"
    alert.detail = {**alert.detail, "suppressed": why}


async def refresh(session: AsyncSession, rt: "Runtime", alert: Alert, contact: Contact, now: dt.datetime) -> None:
    """A sent alert learned more: rewrite the card if it has not left yet, else schedule one update."""
    item = await unsent_card(session, alert)
    if item is not None:
        task = await session.get(Task, alert.task_id) if alert.task_id else None
        card = await render_card(session, rt, alert, contact, task)
        item.payload = {**item.payload, "template_card": card}
    elif alert.sent_at is not None and alert.send_after <= alert.sent_at:
        # send_after past sent_at marks a pending card update; bursts after sending share one update.
        alert.send_after = now + dt.timedelta(seconds=rt.settings.alerts.delay_s)


async def send_update(session: AsyncSession, rt: "Runtime", alert: Alert, now: dt.datetime) -> bool | None:
    """Replace the sent card with its current state, using the send's response_code. True when queued,
    None when the card has not gone out yet (try later), False when it cannot be updated."""
    sent = await session.scalar(select(OutboxItem).where(OutboxItem.idempotency_key == card_key(alert)))
    if sent is None or sent.status in ("pending", "sending"):
        return None
    code = (sent.result or {}).get("response_code") if sent.status == "sent" else None
    alert.send_after = alert.sent_at or now
    contact = await session.get(Contact, alert.contact_id)
    if not code or contact is None or contact.erased_at is not None:
        return False
    task = await session.get(Task, alert.task_id) if alert.task_id else None
    card = await render_card(session, rt, alert, contact, task)
    enqueue(session, UPDATE, {"userids": [alert.rep_userid], "response_code": code, "template_card": card},
            key=f"alert-update:{alert.id}", now=now)
    alert.response_code = code
    alert.detail = {**alert.detail, "updates": int(alert.detail.get("updates", 0)) + 1}
    return True


def can_update(alert: Alert) -> bool:
    """A sent card can take one more update (the send's response_code is single-use)."""
    return alert.clicked_at is None and int(alert.detail.get("updates", 0)) == 0
