"""Texts of the customer's side (welcome messages, customer-service menus) and the rep notices it causes.

Chinese by default; `[kf] lang = "en"` switches the built-in customer texts to English. Config texts
(`[kf] greeting`, `menu_head`, `menu_tail`, a channel's welcome text) win over these when set.
"""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, dict[str, str]] = {
    "welcome": {
        "zh": "您好，我是{rep}，很高兴认识您！给您准备了一份资料，欢迎查阅：",
        "en": "Hello, I'm {rep}. Nice to meet you! Here is something we prepared for you:",
    },
    "greeting": {"zh": "您好，欢迎咨询！", "en": "Hello and welcome!"},
    "menu_head": {"zh": "请选择您感兴趣的资料类型：", "en": "Which kind of material are you interested in?"},
    "menu_tail": {
        "zh": "回复「资料」可随时返回目录，回复「人工」联系专属顾问。",
        "en": "Reply 资料 for this menu at any time, or 人工 to talk to a person.",
    },
    "items_head": {"zh": "「{label}」共 {count} 份资料，点击即可查看：", "en": "{count} items in “{label}” — tap one to open it:"},
    "more": {"zh": "更多…", "en": "More…"},
    "more_categories": {"zh": "更多分类…", "en": "More categories…"},
    "results_head": {"zh": "为您找到以下与「{query}」相关的资料：", "en": "Here is what we found for “{query}”:"},
    "not_found_head": {
        "zh": "抱歉，没有找到与「{query}」相关的资料。您可以按分类查看：",
        "en": "Sorry, we found nothing for “{query}”. You can browse by category:",
    },
    "empty_library": {"zh": "资料库正在整理中，请稍后再来看看～", "en": "Our library is being prepared, please come back soon."},
    "unavailable": {"zh": "抱歉，该资料暂时无法查看。", "en": "Sorry, this item is not available."},
    "handover": {"zh": "正在为您转接人工顾问，请稍候～", "en": "Connecting you to a person, one moment please."},
    "notice_handover": {
        "zh": "客户「{name}」在微信客服中请求人工服务，已转接给你，请尽快回复。",
        "en": "Customer {name} asked for a person in WeChat Customer Service; the chat was passed to you.",
    },
    "notice_deleted_by_customer": {
        "zh": "客户「{name}」已将{who}从微信联系人中删除。",
        "en": "Customer {name} removed {who} from their WeChat contacts.",
    },
    "notice_deleted_by_rep": {"zh": "{who}已删除客户「{name}」。", "en": "{who} deleted customer {name}."},
    "you": {"zh": "你", "en": "you"},
    "notice_taken_over": {
        "zh": "你已接替{former}跟进客户「{name}」：{stage}，{score:g} 分{tasks}。",
        "en": "You now follow up customer {name}, taken over from {former}: {stage}, {score:g} points{tasks}.",
    },
    "taken_over_tasks": {"zh": "，{n} 项待办已转给你", "en": "; {n} open tasks moved to you"},
    "nobody": {"zh": "（无负责人）", "en": "(no owner)"},
}
LABELS: dict[str, dict[str, str]] = {
    "kind": {
        "whitepaper": "白皮书", "case_study": "客户案例", "solution": "解决方案", "product_manual": "产品手册",
        "pitch_deck": "公司介绍", "faq": "常见问题", "report": "行业报告", "webinar": "直播回放", "blog": "精选文章",
    },
    "industry": {
        "manufacturing": "制造业", "automotive": "汽车", "electronics": "电子", "chemicals": "化工",
        "food": "食品", "logistics": "物流", "energy": "能源",
    },
    "stage": {"awareness": "行业洞察", "consideration": "方案评估", "decision": "选型决策", "retention": "客户成功"},
}  # fmt: skip


def text(key: str, lang: str = "zh", **values: Any) -> str:
    catalog = TEXTS[key]
    return catalog.get(lang, catalog["zh"]).format(**values)


def label(dimension: str, value: str) -> str:
    """A category's display name (Chinese labels; unknown values show as they are)."""
    return LABELS.get(dimension, {}).get(value, value)


def clip(value: str, max_bytes: int) -> str:
    """`value` cut to at most `max_bytes` of UTF-8 on a character boundary, with "…" when cut."""
    raw = value.encode()
    if len(raw) <= max_bytes:
        return value
    cut = raw[: max(0, max_bytes - len("…".encode()))].decode("utf-8", "ignore")
    return cut + "…"
