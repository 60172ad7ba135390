"""Rep chat commands in the self-built app. Every text gets an answer: a result or a hint."""

from __future__ import annotations

import re

from bot.context import Context
from bot.i18n import lang_of, t
from bot.models import Rep
from bot.rep_desk import Reply, contact_reply, hot_reply, search_reply, share_reply
from bot.rep_task_commands import done_reply, snooze_reply, tasks_reply
from bot.rep_texts import say
from bot.router import Command, Router, any_message
from bot.wecom.inbound import Inbound

router = Router("commands")

# The item is everything up to the last 给 / " to ", so titles may contain the word.
_SHARE_ZH = re.compile(r"^(?P<item>.+?)\s*给\s*(?P<contact>[^给]+)$")
_SHARE_EN = re.compile(r"^(?P<item>.+)\s+to\s+(?P<contact>.+)$", re.IGNORECASE)


def reply(ctx: Context, msg: Inbound, answer: Reply) -> None:
    """Send a command's answer to the member who asked."""
    # No WeCom duplicate check: a rep asking "任务" twice within 30 minutes must get the list twice.
    payload = {"touser": msg.sender, "msgtype": answer.msgtype, answer.msgtype: answer.body, "enable_duplicate_check": 0}
    ctx.send("/cgi-bin/message/send", payload)


async def team_member(ctx: Context, msg: Inbound, lang: str) -> Rep | None:
    """The sender as a rep; answers "not a team member" and returns None for anyone else."""
    rep = await ctx.session.get(Rep, msg.sender)
    if rep is None or not rep.active:
        reply(ctx, msg, Reply.text(say("not_member", lang)))
        return None
    return rep


@router.message(Command("帮助", "help", "?", "？", "菜单", "menu"))
async def on_help(msg: Inbound, ctx: Context) -> None:
    """帮助 / help: what the bot can do."""
    ctx.send_text(msg.sender, t("help", lang_of(msg.text)))


@router.event("click", EventKey="help")
async def on_help_menu(msg: Inbound, ctx: Context) -> None:
    """The app menu's 帮助 button."""
    ctx.send_text(msg.sender, t("help"))


@router.message(Command("找", "搜索", "find", "search"))
async def on_find(msg: Inbound, ctx: Context) -> None:
    """找 <关键词> / find <kw>: library search as a markdown list (internal items marked 内部, the others
    with their 分享 command); a usage hint for an empty keyword; "nothing found" when nothing matches."""
    reply(ctx, msg, await search_reply(ctx.session, ctx.data["args"], lang_of(msg.text)))


@router.event("click", EventKey="find")
async def on_find_menu(msg: Inbound, ctx: Context) -> None:
    """The app menu's 找资料 button: how to search."""
    reply(ctx, msg, Reply.text(say("find_usage")))


@router.message(Command("分享", "share"))
async def on_share(msg: Inbound, ctx: Context) -> None:
    """分享 <内容> 给 <客户> / share <item> to <contact>: creates the contact's tracked link (source "bot")
    and answers with a ready-to-forward `news` message. Internal items are refused; unknown or
    ambiguous items and contacts get a hint or the list of candidates."""
    lang = lang_of(msg.text)
    rep = await team_member(ctx, msg, lang)
    if rep is None:
        return
    match = _SHARE_ZH.match(ctx.data["args"]) or _SHARE_EN.match(ctx.data["args"])
    if match is None:
        reply(ctx, msg, Reply.text(say("share_usage", lang)))
        return
    item, contact = match.group("item").strip(), match.group("contact").strip()
    reply(ctx, msg, await share_reply(ctx.runtime, ctx.session, rep, item, contact, lang))


@router.message(Command("任务", "待办", "tasks", "task", "todo"))
async def on_tasks(msg: Inbound, ctx: Context) -> None:
    """任务 / tasks: the sender's open tasks with ids, urgent first."""
    lang = lang_of(msg.text)
    if (rep := await team_member(ctx, msg, lang)) is not None:
        reply(ctx, msg, await tasks_reply(ctx.runtime, ctx.session, rep, lang))


@router.event("click", EventKey="tasks")
async def on_tasks_menu(msg: Inbound, ctx: Context) -> None:
    """The app menu's 我的任务 button: the same list as 任务."""
    if (rep := await team_member(ctx, msg, "zh")) is not None:
        reply(ctx, msg, await tasks_reply(ctx.runtime, ctx.session, rep, "zh"))


@router.message(Command("完成", "done"))
async def on_done(msg: Inbound, ctx: Context) -> None:
    """完成 <编号> / done <id>: marks the sender's task done; someone else's task or an unknown id is refused."""
    lang = lang_of(msg.text)
    if (rep := await team_member(ctx, msg, lang)) is not None:
        reply(ctx, msg, await done_reply(ctx.runtime, ctx.session, rep, ctx.data["args"], lang))


@router.message(Command("推迟", "稍后", "snooze"))
async def on_snooze(msg: Inbound, ctx: Context) -> None:
    """推迟 <编号> <时长> / snooze <id> <duration>: reminds the owner later (1h, 30m, 2天, 明天/tomorrow)."""
    lang = lang_of(msg.text)
    if (rep := await team_member(ctx, msg, lang)) is not None:
        reply(ctx, msg, await snooze_reply(ctx.runtime, ctx.session, rep, ctx.data["args"], lang))


@router.message(Command("客户", "contact"))
async def on_contact(msg: Inbound, ctx: Context) -> None:
    """客户 <姓名|ID> / contact <name|id>: score, stage, temperature, why (top ledger reasons), the last
    five events with item titles, and the owner."""
    lang = lang_of(msg.text)
    if (rep := await team_member(ctx, msg, lang)) is not None:
        reply(ctx, msg, await contact_reply(ctx.runtime, ctx.session, rep, ctx.data["args"], lang))


@router.message(Command("热线索", "hot"))
async def on_hot(msg: Inbound, ctx: Context) -> None:
    """热线索 / hot: the sender's hot leads ranked by score."""
    lang = lang_of(msg.text)
    if (rep := await team_member(ctx, msg, lang)) is not None:
        reply(ctx, msg, await hot_reply(ctx.runtime, ctx.session, rep, lang))


@router.event("click", EventKey="hot")
async def on_hot_menu(msg: Inbound, ctx: Context) -> None:
    """The app menu's 热线索 button: the same list as 热线索."""
    if (rep := await team_member(ctx, msg, "zh")) is not None:
        reply(ctx, msg, await hot_reply(ctx.runtime, ctx.session, rep, "zh"))


@router.message(any_message)
async def on_unknown(msg: Inbound, ctx: Context) -> None:
    """Anything else a member sends: a hint, never silence."""
    if msg.msg_type == "text":
        text = msg.text.strip()
        snippet = text if len(text) <= 20 else text[:20] + "…"
        ctx.send_text(msg.sender, t("unknown_command", lang_of(text), text=snippet))
    else:
        ctx.send_text(msg.sender, t("unsupported_message"))
