"""People-facing text: Chinese by default, English available. Code and logs stay English."""

from __future__ import annotations

import unicodedata
from typing import Any

MESSAGES: dict[str, dict[str, str]] = {
    "help": {
        "zh": (
            "我是 Beacon 销售助手，可以这样用：\n"
            "· 帮助 —— 查看本说明\n"
            "· 找 <关键词> —— 搜索内容库\n"
            "· 分享 <内容> 给 <客户> —— 生成专属追踪链接\n"
            "· 任务 —— 我的待办；完成 <编号>；推迟 <编号> <时长>\n"
            "· 客户 <姓名或ID> —— 客户评分、阶段与近期动态\n"
            "· 热线索 —— 我的高意向客户\n"
            "客户阅读、下载、预约演示时，我会第一时间提醒你跟进。"
        ),
        "en": (
            "I'm Beacon, your sales assistant. Try:\n"
            "· help — this message\n"
            "· find <keyword> — search the content library\n"
            "· share <item> to <contact> — a tracked link for that contact\n"
            "· tasks — my to-dos; done <id>; snooze <id> <duration>\n"
            "· contact <name|id> — score, stage and recent activity\n"
            "· hot — my hottest leads\n"
            "I'll tell you the moment a customer reads, downloads or books a demo."
        ),
    },
    "unknown_command": {
        "zh": "没听懂「{text}」。发送「帮助」查看我能做什么。",
        "en": "Sorry, I didn't understand \"{text}\". Send \"help\" to see what I can do.",
    },
    "unsupported_message": {
        "zh": "暂时只能处理文字消息。发送「帮助」查看我能做什么。",
        "en": "I can only read text messages for now. Send \"help\" to see what I can do.",
    },
}


def t(key: str, lang: str = "zh", **values: Any) -> str:
    catalog = MESSAGES[key]
    return catalog.get(lang, catalog["zh"]).format(**values)


def lang_of(text: str) -> str:
    """Answer in English when the rep wrote in plain ASCII (an English command), else Chinese."""
    stripped = unicodedata.normalize("NFKC", text or "").strip()
    return "en" if stripped and stripped.isascii() else "zh"
