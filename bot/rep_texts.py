"""Texts of the rep's chat commands: Chinese by default, English when the rep wrote in English."""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, dict[str, str]] = {
    "not_member": {
        "zh": "你还不是 Beacon 团队成员，请联系管理员把你加入团队。",
        "en": "You are not on the Beacon team yet; ask an admin to add you.",
    },
    "find_usage": {"zh": "用法：找 <关键词>，例如「找 白皮书」。", "en": "Usage: find <keyword>, e.g. \"find whitepaper\"."},
    "find_none": {
        "zh": "没有找到与「{q}」相关的内容，换个关键词试试。",
        "en": "Nothing in the library matches \"{q}\". Try another keyword.",
    },
    "find_head": {"zh": "**「{q}」找到 {n} 条内容**", "en": "**{n} result(s) for \"{q}\"**"},
    "find_more": {"zh": "<font color=\"comment\">还有 {n} 条，换个更具体的关键词试试。</font>",
                  "en": "<font color=\"comment\">{n} more; try a more specific keyword.</font>"},
    "internal_mark": {"zh": " <font color=\"warning\">内部</font>", "en": " <font color=\"warning\">internal</font>"},
    "internal_hint": {"zh": "> 仅供内部参考，不能分享给客户", "en": "> For reps only; never shared with customers"},
    "share_hint": {"zh": "> 分享：分享 {slug} 给 <客户>", "en": "> Share: share {slug} to <contact>"},
    "share_usage": {
        "zh": "用法：分享 <内容> 给 <客户>，例如「分享 manufacturing-digital-whitepaper 给 张总」。",
        "en": "Usage: share <item> to <contact>, e.g. \"share manufacturing-digital-whitepaper to Zhang\".",
    },
    "item_none": {"zh": "没有找到内容「{q}」。发送「找 {q}」搜索内容库。", "en": "No item \"{q}\". Send \"find {q}\" to search."},
    "item_many": {"zh": "「{q}」对应多条内容，请用编号指定：", "en": "\"{q}\" matches several items; use the slug:"},
    "item_internal": {
        "zh": "《{title}》是内部资料，仅供销售参考，不能分享给客户。",
        "en": "\"{title}\" is internal material for reps only; it cannot be shared with customers.",
    },
    "item_retired": {"zh": "《{title}》已下架，不能再分享。", "en": "\"{title}\" has been retired and cannot be shared."},
    "contact_none": {
        "zh": "你的客户里没有找到「{q}」。可以用客户姓名或 ID（external_userid）。",
        "en": "None of your contacts matches \"{q}\". Use a name or the external_userid.",
    },
    "contact_many": {"zh": "「{q}」匹配到多位客户，请用 ID 指定：", "en": "\"{q}\" matches several contacts; use the ID:"},
    "contact_usage": {"zh": "用法：客户 <姓名或ID>，例如「客户 张总」。", "en": "Usage: contact <name|id>, e.g. \"contact Zhang\"."},
    "tasks_none": {"zh": "你目前没有待办任务。", "en": "You have no open tasks."},
    "tasks_head": {"zh": "你有 {n} 项待办：", "en": "You have {n} open task(s):"},
    "tasks_tail": {
        "zh": "回复「完成 编号」标记完成，「推迟 编号 1h」稍后提醒。",
        "en": "Reply \"done <id>\" when finished, \"snooze <id> 1h\" to be reminded later.",
    },
    "task_due": {"zh": "{when} 截止", "en": "due {when}"},
    "task_snoozed": {"zh": "已推迟至 {when}", "en": "snoozed until {when}"},
    "urgent_mark": {"zh": "【急】", "en": "[urgent] "},
    "done_usage": {"zh": "用法：完成 <任务编号>，例如「完成 12」。发送「任务」查看编号。",
                   "en": "Usage: done <task id>, e.g. \"done 12\". Send \"tasks\" to see the ids."},
    "snooze_usage": {
        "zh": "用法：推迟 <任务编号> <时长>，例如「推迟 12 1h」「推迟 12 30m」「推迟 12 明天」。",
        "en": "Usage: snooze <task id> <duration>, e.g. \"snooze 12 1h\", \"snooze 12 30m\", \"snooze 12 tomorrow\".",
    },
    "bad_duration": {
        "zh": "看不懂时长「{d}」。可以写 30m、1h、2天 或 明天（最多 30 天）。",
        "en": "I can't read the duration \"{d}\". Try 30m, 1h, 2d or tomorrow (at most 30 days).",
    },
    "task_unknown": {"zh": "没有编号为 {id} 的任务。发送「任务」查看你的待办。", "en": "There is no task {id}. Send \"tasks\" to see yours."},
    "task_not_yours": {"zh": "任务 #{id} 不是你的，只有负责人可以操作。", "en": "Task #{id} is not yours; only its owner can change it."},
    "task_closed": {"zh": "任务 #{id} 已关闭（{status}），不能再推迟。", "en": "Task #{id} is already {status}; it cannot be snoozed."},
    "done_ok": {"zh": "已完成 #{id}：{title} ✓", "en": "Done #{id}: {title} ✓"},
    "done_already": {"zh": "任务 #{id} 已经完成了。", "en": "Task #{id} was already done."},
    "snooze_ok": {"zh": "好的，任务 #{id} 将在 {when} 提醒你。", "en": "OK, I'll remind you of task #{id} at {when}."},
    "hot_none": {
        "zh": "暂时没有热线索。客户阅读、下载或预约演示时我会提醒你。",
        "en": "No hot leads right now. I'll tell you when a customer reads, downloads or books a demo.",
    },
    "hot_head": {"zh": "你的热线索（按评分）：", "en": "Your hot leads, by score:"},
    "hot_line": {"zh": "{n}. {name}{company} {score:g} 分 · {stage} · 最近互动 {when}",
                 "en": "{n}. {name}{company} {score:g} pts · {stage} · last active {when}"},
    "contact_head": {"zh": "{name}{company}", "en": "{name}{company}"},
    "contact_score": {"zh": "评分 {score:g} 分 · 阶段 {stage} · 温度 {temperature}",
                      "en": "Score {score:g} · stage {stage} · {temperature}"},
    "contact_owner": {"zh": "负责人：{owner}", "en": "Owner: {owner}"},
    "contact_why": {"zh": "为什么：", "en": "Why:"},
    "contact_recent": {"zh": "最近动态：", "en": "Recent activity:"},
    "contact_no_events": {"zh": "（暂无动态）", "en": "(no activity yet)"},
    "nobody": {"zh": "无", "en": "none"},
    "never": {"zh": "—", "en": "-"},
}

EVENT_LABELS = {
    "zh": {"open": "打开", "read": "阅读", "dwell": "浏览", "download": "下载", "cta": "点击", "form_submit": "提交表单",
           "forward": "转发", "menu_click": "客服菜单", "message": "发消息", "contact_added": "添加好友",
           "contact_deleted": "删除好友", "demo_request": "预约演示", "webinar_attended": "参加直播", "call": "通话",
           "payment": "付款", "unsubscribe": "退订"},
    "en": {},
}  # fmt: skip
KIND_LABELS = {
    "zh": {"whitepaper": "白皮书", "case_study": "案例", "solution": "解决方案", "product_manual": "产品手册",
           "pitch_deck": "演示文稿", "faq": "常见问题", "talk_track": "话术", "competitor_brief": "竞品分析",
           "report": "报告", "webinar": "直播", "blog": "文章"},
    "en": {},
}  # fmt: skip


def say(key: str, lang: str = "zh", **values: Any) -> str:
    catalog = TEXTS[key]
    return catalog.get(lang, catalog["zh"]).format(**values)


def label(table: dict[str, dict[str, str]], value: str, lang: str) -> str:
    """A Chinese label when there is one; English (and unknown values) show the value itself."""
    return table.get(lang, {}).get(value, value.replace("_", " "))
