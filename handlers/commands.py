"""Rep chat commands in the self-built app. Every text gets an answer: a result or a hint."""

from __future__ import annotations

from bot.context import Context
from bot.i18n import lang_of, t
from bot.router import Command, Router, any_message
from bot.wecom.inbound import Inbound

router = Router("commands")


@router.message(Command("帮助", "help", "?", "？", "菜单", "menu"))
async def on_help(msg: Inbound, ctx: Context) -> None:
    """帮助 / help: what the bot can do."""
    ctx.send_text(msg.sender, t("help", lang_of(msg.text)))


@router.event("click", EventKey="help")
async def on_help_menu(msg: Inbound, ctx: Context) -> None:
    """The app menu's 帮助 button."""
    ctx.send_text(msg.sender, t("help"))


@router.message(any_message)
async def on_unknown(msg: Inbound, ctx: Context) -> None:
    """Anything else a member sends: a hint, never silence."""
    if msg.msg_type == "text":
        text = msg.text.strip()
        snippet = text if len(text) <= 20 else text[:20] + "…"
        ctx.send_text(msg.sender, t("unknown_command", lang_of(text), text=snippet))
    else:
        ctx.send_text(msg.sender, t("unsupported_message"))
