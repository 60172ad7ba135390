"""Clicks on alert cards (`template_card_event` whose TaskId is an alert card's)."""

from __future__ import annotations

from bot.alert_cards import CARD_PREFIX
from bot.alert_clicks import on_card_click
from bot.context import Context
from bot.router import Event, FilterResult, Router
from bot.wecom.inbound import Inbound

router = Router("alert_cards")


def alert_card(msg: Inbound) -> FilterResult:
    """The card is one of ours (other features may send template cards of their own)."""
    return msg.get("TaskId").startswith(CARD_PREFIX)


@router.on(Event("template_card_event"), alert_card)
async def on_alert_card_click(msg: Inbound, ctx: Context) -> None:
    """已跟进 / 1小时后提醒 / 明天提醒 / 不相关 on an alert card: completes, snoozes or dismisses the
    alert's task, records the click on the alert, and answers with `update_template_card` so the
    button reads what happened (e.g. "已跟进 ✓"). Clicks on someone else's card change nothing."""
    await on_card_click(
        ctx, sender=msg.sender, card_task_id=msg.get("TaskId"), key=msg.get("EventKey"), response_code=msg.get("ResponseCode")
    )
