"""A rep's click on an alert card (`template_card_event`): update the task, the alert and the card.

EventKey is the button (done / snooze_1h / snooze_tomorrow / dismiss), TaskId the card's task_id,
ResponseCode the single-use code for `update_template_card`, whose button text then says what
happened (已跟进 ✓ …). Only the rep the card was sent to can act on it.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from bot.alert_cards import BUTTON_KEYS, say
from bot.alert_delivery import UPDATE
from bot.context import Context
from bot.models import Alert, Task
from bot.tasks import TaskClosed, complete, dismiss, snooze, tomorrow_morning

log = logging.getLogger("beacon.alerts")

OUTCOMES = {"done": "done", "snooze_1h": "snoozed", "snooze_tomorrow": "snoozed", "dismiss": "dismissed"}


async def on_card_click(ctx: Context, *, sender: str, card_task_id: str, key: str, response_code: str) -> bool:
    """Apply the click; False (and nothing sent) for unknown cards, buttons or someone else's card."""
    alert = await ctx.session.scalar(select(Alert).where(Alert.card_task_id == card_task_id))
    if alert is None or key not in BUTTON_KEYS:
        log.info("card click on unknown card %s or button %s", card_task_id, key)
        return False
    if alert.rep_userid != sender:
        log.warning("member %s clicked %s's alert card %s", sender, alert.rep_userid, card_task_id)
        return False
    now = ctx.clock.now()
    task = await ctx.session.get(Task, alert.task_id) if alert.task_id else None
    label = _apply(ctx, task, key, now)
    alert.clicked_at = alert.clicked_at or now
    alert.outcome = OUTCOMES[key] if label.endswith("_ok") else alert.outcome
    alert.response_code = response_code
    if response_code:
        lang = ctx.settings.alerts.language
        ctx.send(UPDATE, {"userids": [sender], "response_code": response_code, "button": {"replace_name": say(lang, label)}})
    return True


def _apply(ctx: Context, task: Task | None, key: str, now: dt.datetime) -> str:
    """Change the task; returns the text key for the card's button (`closed` if nothing could be done)."""
    if task is None:
        return "closed"
    try:
        if key == "done":
            complete(task, now)
        elif key == "dismiss":
            dismiss(task, now)
        else:
            until = now + dt.timedelta(hours=1) if key == "snooze_1h" else tomorrow_morning(now, ctx.settings.scheduler.timezone)
            snooze(task, until, now)
    except TaskClosed:
        return "closed"
    return f"{key}_ok"
