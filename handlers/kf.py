"""WeChat Customer Service (微信客服) callbacks: `kf_msg_or_event` pulls and answers new messages."""

from __future__ import annotations

import logging

from bot.context import Context
from bot.kf import sync_account
from bot.router import Router
from bot.wecom.inbound import Inbound

log = logging.getLogger("beacon.kf")
router = Router("kf")


@router.event("kf_msg_or_event")
async def on_kf_msg_or_event(msg: Inbound, ctx: Context) -> None:
    """New kf messages or events for account `OpenKfId`: pages through `kf/sync_msg` (with the
    callback's Token) from the stored cursor and answers each customer message once — category and
    item menus (`msgmenu`), tracked `link` messages for picked items, search results, hand-over to a
    human (`kf/service_state/trans` + an app text to the owning rep) — and the enter_session menu
    (`kf/send_msg_on_event`). Each page commits on its own, with its cursor, on this unit of work's
    session (an exception to "the worker commits": a failure rolls back only the unfinished page)."""
    open_kfid = msg.get("OpenKfId")
    if not open_kfid:
        log.warning("kf_msg_or_event without OpenKfId; ignored")
        return
    handled = await sync_account(ctx, open_kfid, msg.get("Token") or None)
    log.info("kf %s: %d message(s) processed", open_kfid, handled)
