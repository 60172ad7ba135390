"""The simulator's HTTP side: WeCom's API paths and JSON shapes over a `SimState`, plus `/sim/` controls.

Every answer carries errcode and errmsg, as WeCom's do. Requests are checked the way WeCom checks
them (access token, agentid, message size, JSON unicode escapes) and every request is logged in
`state.received` before anything else, so tests can assert on exactly what Beacon sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, hdrs, web

from bot.wecom.simulator import (
    INVALID_PARAM,
    KF_BAD_TOKEN,
    KF_QUOTA,
    KF_RETENTION_S,
    KF_SESSION_STATE,
    KF_WINDOW_MESSAGES,
    KF_WINDOW_S,
    OAUTH_CODE_TTL_S,
    RESPONSE_CODE_TTL_S,
    ApiError,
    AppMessage,
    ContactWay,
    KfSent,
    MediaUpload,
    SimState,
    Tag,
    TagGroup,
    TemplateCard,
    errmsg,
)

__all__ = ["STATE_KEY", "ApiCall", "create_simulator_app"]

STATE_KEY = web.AppKey("wecom_sim_state", SimState)
_CLOSING_KEY = web.AppKey("wecom_sim_closing", asyncio.Event)

GETTOKEN = "/cgi-bin/gettoken"
APP_MSGTYPES = {"text", "textcard", "markdown", "news", "mpnews", "image", "file", "template_card"}
CARD_TYPES = {"text_notice", "news_notice", "button_interaction", "vote_interaction", "multiple_interaction"}
INTERACTIVE_CARDS = {"button_interaction", "vote_interaction", "multiple_interaction"}
KF_MSGTYPES = {"text", "image", "voice", "video", "file", "link", "miniprogram", "msgmenu", "location"}
KF_UNKNOWN_ACCOUNT = 95004  # not confirmed against WeCom's error table
MEMBER_PER_MINUTE = 30
MEMBER_PER_HOUR = 1000
TICKETS_PER_HOUR = 100
# A JSON unicode escape (backslash, "u", four hex digits) preceded by an even number of backslashes (so not an escaped backslash + "u").
_UNICODE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u[0-9a-fA-F]{4}")
_KF_MSGID = re.compile(r"[0-9a-zA-Z_-]{1,32}")
_dumps = functools.partial(json.dumps, ensure_ascii=False)


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass
class ApiCall:
    """One parsed API request: query string, JSON body (POST) and multipart files."""

    query: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    error: int | None = None  # a body WeCom would refuse (47001 bad JSON, 40033 unicode escape)


Endpoint = Callable[[SimState, ApiCall], dict[str, Any]]


# ---- access, tickets, OAuth, menu, media ------------------------------------------------------


def gettoken(state: SimState, call: ApiCall) -> dict[str, Any]:
    if call.query.get("corpid") != state.corp_id:
        raise ApiError(40013)
    if call.query.get("corpsecret") != state.corp_secret:
        raise ApiError(40001)
    token, expires_in = state.issue_token()
    return {"access_token": token, "expires_in": expires_in}


def _ticket(state: SimState, kind: str) -> dict[str, Any]:
    now = state.clock()
    recent = [t for t in state.tickets if t[0] == kind and now - t[2] < 3600]
    if len(recent) >= TICKETS_PER_HOUR:
        raise ApiError(45009, "jsapi ticket quota (100/h); cache tickets")
    ticket = state.new_id("sim_ticket_", 40)
    state.tickets.append((kind, ticket, now))
    return {"ticket": ticket, "expires_in": 7200}


def ticket_get(state: SimState, call: ApiCall) -> dict[str, Any]:
    if call.query.get("type") != "agent_config":
        raise ApiError(91040, "type must be agent_config")
    return _ticket(state, "agent_config")


def get_jsapi_ticket(state: SimState, call: ApiCall) -> dict[str, Any]:
    return _ticket(state, "jsapi")


def getuserinfo(state: SimState, call: ApiCall) -> dict[str, Any]:
    entry = state.oauth_codes.pop(call.query.get("code", ""), None)
    if entry is None or state.clock() - entry[1] > OAUTH_CODE_TTL_S:
        raise ApiError(40029)
    return dict(entry[0])


def menu_create(state: SimState, call: ApiCall) -> dict[str, Any]:
    _check_agent(state, call.query.get("agentid"))
    buttons = call.payload.get("button")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        raise ApiError(40016)
    state.menus[state.agent_id] = call.payload
    return {}


def media_upload(state: SimState, call: ApiCall) -> dict[str, Any]:
    media_type = call.query.get("type", "")
    if media_type not in {"image", "voice", "video", "file"}:
        raise ApiError(40005)
    upload = call.files.get("media") or next(iter(call.files.values()), None)
    if upload is None or not upload.data:
        raise ApiError(44001)
    media_id = state.new_id("3", 63)
    now = state.clock()
    state.media[media_id] = MediaUpload(media_id, media_type, upload.filename, upload.content_type, upload.data, now)
    return {"type": media_type, "media_id": media_id, "created_at": str(int(now))}


# ---- app messages and template cards ----------------------------------------------------------


def _check_agent(state: SimState, agentid: Any) -> None:
    try:
        ok = int(agentid) == state.agent_id
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ApiError(40056)


def _check_app_message(msgtype: Any, body: Any) -> None:
    if msgtype not in APP_MSGTYPES:
        raise ApiError(40008)
    if not isinstance(body, dict):
        raise ApiError(INVALID_PARAM, f"missing {msgtype}")
    if msgtype in {"text", "markdown"}:
        content = body.get("content") or ""
        if not content:
            raise ApiError(44004)
        if len(content.encode()) > 2048:
            raise ApiError(45002)
    elif msgtype == "textcard" and not body.get("description"):
        raise ApiError(41033)
    elif msgtype == "template_card":
        if body.get("card_type") not in CARD_TYPES:
            raise ApiError(INVALID_PARAM, "card_type")
        if body["card_type"] in INTERACTIVE_CARDS and not body.get("task_id"):
            raise ApiError(INVALID_PARAM, "task_id is required for interactive cards")


def _recipients(state: SimState, touser: str) -> tuple[list[str], list[str]]:
    if touser == "@all":
        return list(state.members), []
    users = [u for u in touser.split("|") if u]
    return [u for u in users if state.is_member(u)], [u for u in users if not state.is_member(u)]


def _duplicate_key(payload: dict[str, Any]) -> str:
    skip = {"touser", "toparty", "totag", "enable_duplicate_check", "duplicate_check_interval"}
    return json.dumps({k: v for k, v in payload.items() if k not in skip}, sort_keys=True, ensure_ascii=False)


def _deliver(state: SimState, message: AppMessage, duplicate_interval: float | None) -> None:
    now = message.at
    key = (message.userid, _duplicate_key(message.payload))
    if duplicate_interval is not None:
        last = state.duplicate_seen.get(key)
        if last is not None and now - last < duplicate_interval:
            state.duplicates.append(message)
            return
    recent = [m.at for m in state.delivered if m.userid == message.userid and now - m.at < 3600]
    if sum(1 for at in recent if now - at < 60) >= MEMBER_PER_MINUTE or len(recent) >= MEMBER_PER_HOUR:
        # WeCom's real behaviour: the call succeeds and the member never sees the message.
        state.dropped.append(message)
        return
    state.delivered.append(message)
    state.duplicate_seen[key] = now


def message_send(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    _check_agent(state, payload.get("agentid"))
    msgtype = payload.get("msgtype")
    _check_app_message(msgtype, payload.get(str(msgtype)))
    valid, invalid = _recipients(state, str(payload.get("touser") or ""))
    if not valid:
        raise ApiError(81013)
    now = state.clock()
    msgid = state.new_id("sim_msgid_", 30)
    answer: dict[str, Any] = {"invaliduser": "|".join(invalid), "invalidparty": "", "invalidtag": "", "msgid": msgid}
    if msgtype == "template_card":
        card = payload["template_card"]
        task_id = str(card.get("task_id") or "")
        if card["card_type"] in INTERACTIVE_CARDS:
            answer["response_code"] = state.issue_response_code(task_id, valid)
        if task_id:
            state.cards.setdefault(task_id, TemplateCard(task_id, card["card_type"], valid, card, now))
    interval = None
    if payload.get("enable_duplicate_check") in (1, "1", True):
        interval = min(float(payload.get("duplicate_check_interval") or 1800), 4 * 3600)
    for userid in valid:
        message = AppMessage(msgid, userid, str(msgtype), payload, now, answer.get("response_code"))
        _deliver(state, message, interval)
    return answer


def update_template_card(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    _check_agent(state, payload.get("agentid"))
    code = state.response_codes.get(str(payload.get("response_code") or ""))
    if code is None or code.used or state.clock() - code.issued_at > RESPONSE_CODE_TTL_S:
        raise ApiError(INVALID_PARAM, "invalid response_code")
    if "button" not in payload and "template_card" not in payload:
        raise ApiError(INVALID_PARAM, "button or template_card is required")
    code.used = True
    card = state.cards.setdefault(code.task_id, TemplateCard(code.task_id, "", code.userids, {}, state.clock()))
    card.updates.append(
        {
            "at": state.clock(),
            "userids": payload.get("userids") or code.userids,
            "button": payload.get("button"),
            "template_card": payload.get("template_card"),
        }
    )
    return {"invaliduser": []}


# ---- customer contact -------------------------------------------------------------------------


def _contact_json(state: SimState, external_userid: str) -> dict[str, Any]:
    contact = state.contacts[external_userid]
    profile = {
        "external_userid": contact.external_userid,
        "name": contact.name,
        "type": contact.type,
        "gender": contact.gender,
        "avatar": "",
    }
    for key in ("unionid", "position", "corp_name"):
        if getattr(contact, key) is not None:
            profile[key] = getattr(contact, key)
    follow = []
    for f in contact.follow_user:
        tags = []
        for tag_id in f.tags:
            found = state.find_tag(tag_id)
            if found is not None:
                tags.append({"group_name": found[0].group_name, "tag_name": found[1].name, "tag_id": tag_id, "type": 1})
        item: dict[str, Any] = {
            "userid": f.userid,
            "remark": f.remark,
            "description": f.description,
            "createtime": f.createtime,
            "tags": tags,
            "add_way": f.add_way,
            "oper_userid": f.userid,
            "remark_corp_name": f.remark_corp_name,
            "remark_mobiles": list(f.remark_mobiles),
        }
        if f.state is not None:
            item["state"] = f.state
        follow.append(item)
    return {"external_contact": profile, "follow_user": follow, "next_cursor": ""}


def externalcontact_get(state: SimState, call: ApiCall) -> dict[str, Any]:
    external_userid = call.query.get("external_userid", "")
    if external_userid not in state.contacts:
        raise ApiError(84061)
    return _contact_json(state, external_userid)


def externalcontact_batch_get_by_user(state: SimState, call: ApiCall) -> dict[str, Any]:
    """Every relation of the listed members with their customers, a page at a time: each item the
    customer's profile and that member's follow_info."""
    userids = call.payload.get("userid_list")
    if not isinstance(userids, list) or not 1 <= len(userids) <= 100:
        raise ApiError(INVALID_PARAM, "userid_list must hold 1..100 userids")
    limit = call.payload.get("limit") or 50
    if not isinstance(limit, int) or limit < 1:
        raise ApiError(INVALID_PARAM, "limit")
    limit = min(limit, 100)  # WeCom takes the maximum for a larger limit
    cursor = str(call.payload.get("cursor") or "")
    if cursor:
        # The cursor names the listing its first page took (a snapshot, so paging through a large
        # corp is one pass over the customers, not one per page) and the offset into it.
        snapshot, _, offset = cursor.removeprefix("sim:").partition(":")
        relations = state.relation_snapshots.get(snapshot) if cursor.startswith("sim:") and offset.isdigit() else None
        if relations is None:
            raise ApiError(INVALID_PARAM, "cursor")
        start = int(offset)
    else:
        wanted = set(userids)
        relations = [(c.external_userid, f) for c in state.contacts.values() for f in c.follow_user if f.userid in wanted]
        snapshot = state.keep_relation_snapshot(relations)
        start = 0
    page = relations[start:start + limit]
    items = []
    for external_userid, f in page:
        whole = _contact_json(state, external_userid)
        follow = next(item for item in whole["follow_user"] if item["userid"] == f.userid)
        follow["tag_id"] = [tag["tag_id"] for tag in follow.pop("tags")]
        items.append({"external_contact": whole["external_contact"], "follow_info": follow})
    more = start + limit < len(relations)
    return {"external_contact_list": items, "next_cursor": f"sim:{snapshot}:{start + limit}" if more else ""}


def externalcontact_list(state: SimState, call: ApiCall) -> dict[str, Any]:
    userid = call.query.get("userid", "")
    ids = [c.external_userid for c in state.contacts.values() if any(f.userid == userid for f in c.follow_user)]
    if not ids:
        raise ApiError(84061)
    return {"external_userid": ids}


def send_welcome_msg(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    attachments = payload.get("attachments") or []
    content = (payload.get("text") or {}).get("content") or ""
    if not content and not attachments:
        raise ApiError(44004)
    if len(attachments) > 9 or len(content.encode()) > 4000:
        raise ApiError(INVALID_PARAM, "at most 9 attachments and 4000 bytes of text")
    state.use_welcome_code(str(payload.get("welcome_code") or ""), "contact", payload)
    return {}


def mark_tag(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    follow = state.follow_of(str(payload.get("userid")), str(payload.get("external_userid")))
    if follow is None:
        raise ApiError(84061)
    add, remove = list(payload.get("add_tag") or []), list(payload.get("remove_tag") or [])
    if not add and not remove:
        raise ApiError(INVALID_PARAM, "add_tag or remove_tag is required")
    if any(state.find_tag(tag_id) is None for tag_id in add + remove):
        raise ApiError(40068)
    follow.tags = [t for t in follow.tags if t not in remove] + [t for t in add if t not in follow.tags]
    return {}


def _group_json(group: TagGroup, tags: list[Tag]) -> dict[str, Any]:
    return {
        "group_id": group.group_id,
        "group_name": group.group_name,
        "create_time": group.create_time,
        "order": group.order,
        "deleted": False,
        "tag": [
            {"id": t.id, "name": t.name, "create_time": t.create_time, "order": t.order, "deleted": False} for t in tags
        ],
    }


def get_corp_tag_list(state: SimState, call: ApiCall) -> dict[str, Any]:
    tag_ids = set(call.payload.get("tag_id") or [])
    group_ids = set(call.payload.get("group_id") or [])
    groups = []
    for group in state.tag_groups.values():
        if group_ids and group.group_id not in group_ids:
            continue
        tags = [t for t in group.tags if not tag_ids or t.id in tag_ids]
        if tag_ids and not tags:
            continue
        groups.append(_group_json(group, tags))
    return {"tag_group": groups}


def _tag_group_for(state: SimState, payload: dict[str, Any]) -> TagGroup:
    if payload.get("group_id"):
        group = state.tag_groups.get(payload["group_id"])
        if group is None:
            raise ApiError(40068, "unknown group_id")
        return group
    name = str(payload.get("group_name") or "")
    if not name or len(name) > 30:
        raise ApiError(INVALID_PARAM, "group_name is required, at most 30 characters")
    for group in state.tag_groups.values():
        # WeCom adds to the existing group when group_name is already taken.
        if group.group_name == name:
            return group
    group = TagGroup(state.new_id("et", 30), name, int(state.clock()), int(payload.get("order") or 0))
    state.tag_groups[group.group_id] = group
    return group


def add_corp_tag(state: SimState, call: ApiCall) -> dict[str, Any]:
    wanted = call.payload.get("tag") or []
    names = [str(t.get("name") or "") for t in wanted]
    if not names or any(not n or len(n) > 30 for n in names):
        raise ApiError(INVALID_PARAM, "tag names are required, at most 30 characters")
    group = _tag_group_for(state, call.payload)
    if len(set(names)) != len(names) or {t.name for t in group.tags} & set(names):
        raise ApiError(40071)
    added = [
        Tag(state.new_id("et", 30), n, int(state.clock()), int(t.get("order") or 0))
        for n, t in zip(names, wanted, strict=True)
    ]
    group.tags.extend(added)
    return {"tag_group": _group_json(group, added)}


def add_contact_way(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    way_type, scene = payload.get("type"), payload.get("scene")
    users = list(payload.get("user") or [])
    cw_state = payload.get("state")
    if way_type not in (1, 2) or scene not in (1, 2):
        raise ApiError(INVALID_PARAM, "type and scene must be 1 or 2")
    if cw_state is not None and len(str(cw_state)) > 30:
        raise ApiError(INVALID_PARAM, "state is at most 30 characters")
    if (way_type == 1 and len(users) != 1) or (way_type == 2 and not users and not payload.get("party")):
        raise ApiError(INVALID_PARAM, "type 1 takes exactly one user; type 2 at least one user or party")
    config_id = state.new_id("", 32).lower()
    qr_code = f"https://wework.qpic.cn/wwpic/sim/{config_id}/0" if scene == 2 else None
    state.contact_ways[config_id] = ContactWay(config_id, way_type, scene, cw_state, users, qr_code, payload)
    return {"config_id": config_id, **({"qr_code": qr_code} if qr_code else {})}


def add_msg_template(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    targets = list(payload.get("external_userid") or [])
    fail_list = [t for t in targets if t not in state.contacts]
    msgid = state.new_id("msg", 24)
    state.msg_templates.append({"msgid": msgid, "at": state.clock(), **payload})
    return {"fail_list": fail_list, "msgid": msgid}


# ---- WeChat Customer Service (kf) -------------------------------------------------------------


def _encode_cursor(index: int) -> str:
    return f"4gw{index:08x}"


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    if not cursor.startswith("4gw"):
        raise ApiError(INVALID_PARAM, "invalid cursor")
    try:
        return int(cursor[3:], 16)
    except ValueError:
        raise ApiError(INVALID_PARAM, "invalid cursor") from None


def _known_kf(state: SimState, open_kfid: Any) -> str:
    if open_kfid not in state.kf_accounts:
        raise ApiError(KF_UNKNOWN_ACCOUNT)
    return str(open_kfid)


def kf_customer_batchget(state: SimState, call: ApiCall) -> dict[str, Any]:
    ids = call.payload.get("external_userid_list")
    if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
        raise ApiError(INVALID_PARAM, "external_userid_list must hold 1..100 ids")
    known = [dict(state.kf_customers[x]) for x in ids if x in state.kf_customers]
    return {"customer_list": known, "invalid_external_userid": [x for x in ids if x not in state.kf_customers]}


def kf_sync_msg(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    token = payload.get("token")
    # The Token is optional (WeCom then applies stricter limits), but when given it must be live.
    if token and state.kf_tokens.get(token, 0) <= state.clock():
        raise ApiError(KF_BAD_TOKEN)
    limit = payload.get("limit", 1000)
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ApiError(INVALID_PARAM, "limit must be 1..1000")
    open_kfid = _known_kf(state, payload.get("open_kfid"))
    cursor = str(payload.get("cursor") or "")
    start = _decode_cursor(cursor)
    if state.kf_empty_pages:
        state.kf_empty_pages -= 1
        return {"next_cursor": cursor or _encode_cursor(0), "has_more": 1, "msg_list": []}
    log = state.kf_log[open_kfid]
    page = log[start : start + limit]
    oldest = state.clock() - KF_RETENTION_S
    return {
        "next_cursor": _encode_cursor(start + len(page)),
        "has_more": int(start + len(page) < len(log)),
        "msg_list": [dict(item) for item in page if item["send_time"] >= oldest],
    }


def _kf_msgid(state: SimState, payload: dict[str, Any]) -> str:
    msgid = payload.get("msgid")
    if msgid is None:
        return state.new_id("", 32)
    if not isinstance(msgid, str) or not _KF_MSGID.fullmatch(msgid):
        raise ApiError(INVALID_PARAM, "msgid: at most 32 of [0-9a-zA-Z_-]")
    return msgid


def _check_kf_quota(state: SimState, open_kfid: str, touser: str) -> None:
    if state.kf_service_state.get((open_kfid, touser), 0) not in (0, 1):
        raise ApiError(KF_SESSION_STATE)
    last = state.kf_last_customer_message_at(open_kfid, touser)
    if last is None or state.clock() - last > KF_WINDOW_S:
        raise ApiError(KF_QUOTA, "no customer message within 48 h")
    if state.kf_sends_since_customer.get((open_kfid, touser), 0) >= KF_WINDOW_MESSAGES:
        raise ApiError(KF_QUOTA, "5 messages per customer message within 48 h")


def kf_send_msg(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    open_kfid = _known_kf(state, payload.get("open_kfid"))
    touser = str(payload.get("touser") or "")
    msgtype = payload.get("msgtype")
    if msgtype not in KF_MSGTYPES or not isinstance(payload.get(msgtype), dict):
        raise ApiError(40008)
    msgid = _kf_msgid(state, payload)
    if any(s.msgid == msgid and s.open_kfid == open_kfid for s in state.kf_sent):
        return {"msgid": msgid}  # same msgid again: WeCom does not send it twice
    _check_kf_quota(state, open_kfid, touser)
    state.kf_sent.append(KfSent(msgid, open_kfid, touser, msgtype, payload, state.clock()))
    key = (open_kfid, touser)
    state.kf_sends_since_customer[key] = state.kf_sends_since_customer.get(key, 0) + 1
    return {"msgid": msgid}


def kf_send_msg_on_event(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    msgtype = payload.get("msgtype")
    if msgtype not in {"text", "msgmenu"} or not isinstance(payload.get(msgtype), dict):
        raise ApiError(40008)
    msgid = _kf_msgid(state, payload)
    code = state.use_welcome_code(str(payload.get("code") or ""), "kf", payload)
    sent = KfSent(msgid, code.open_kfid or "", code.external_userid or "", msgtype, payload, state.clock())
    state.kf_sent.append(sent)
    return {"msgid": msgid}


def kf_service_state_trans(state: SimState, call: ApiCall) -> dict[str, Any]:
    payload = call.payload
    open_kfid = _known_kf(state, payload.get("open_kfid"))
    external_userid = str(payload.get("external_userid") or "")
    service_state = payload.get("service_state")
    if service_state not in (0, 1, 2, 3, 4) or (service_state == 3 and not payload.get("servicer_userid")):
        raise ApiError(INVALID_PARAM, "service_state 0..4; 3 needs servicer_userid")
    state.kf_service_state[(open_kfid, external_userid)] = service_state
    if service_state in (3, 4):
        code = state.issue_welcome_code("kf", external_userid=external_userid, open_kfid=open_kfid)
        return {"msg_code": code}
    return {}


def kf_service_state_get(state: SimState, call: ApiCall) -> dict[str, Any]:
    open_kfid = _known_kf(state, call.payload.get("open_kfid"))
    key = (open_kfid, str(call.payload.get("external_userid") or ""))
    return {"service_state": state.kf_service_state.get(key, 0), "servicer_userid": ""}


def kf_add_contact_way(state: SimState, call: ApiCall) -> dict[str, Any]:
    open_kfid = _known_kf(state, call.payload.get("open_kfid"))
    scene = str(call.payload.get("scene") or "")
    return {"url": f"https://work.weixin.qq.com/kfid/{open_kfid}" + (f"?enc_scene={scene}" if scene else "")}


ENDPOINTS: list[tuple[str, str, Endpoint]] = [
    ("GET", GETTOKEN, gettoken),
    ("GET", "/cgi-bin/ticket/get", ticket_get),
    ("GET", "/cgi-bin/get_jsapi_ticket", get_jsapi_ticket),
    ("GET", "/cgi-bin/auth/getuserinfo", getuserinfo),
    ("POST", "/cgi-bin/menu/create", menu_create),
    ("POST", "/cgi-bin/media/upload", media_upload),
    ("POST", "/cgi-bin/message/send", message_send),
    ("POST", "/cgi-bin/message/update_template_card", update_template_card),
    ("GET", "/cgi-bin/externalcontact/get", externalcontact_get),
    ("GET", "/cgi-bin/externalcontact/list", externalcontact_list),
    ("POST", "/cgi-bin/externalcontact/batch/get_by_user", externalcontact_batch_get_by_user),
    ("POST", "/cgi-bin/externalcontact/send_welcome_msg", send_welcome_msg),
    ("POST", "/cgi-bin/externalcontact/mark_tag", mark_tag),
    ("POST", "/cgi-bin/externalcontact/get_corp_tag_list", get_corp_tag_list),
    ("POST", "/cgi-bin/externalcontact/add_corp_tag", add_corp_tag),
    ("POST", "/cgi-bin/externalcontact/add_contact_way", add_contact_way),
    ("POST", "/cgi-bin/externalcontact/add_msg_template", add_msg_template),
    ("POST", "/cgi-bin/kf/sync_msg", kf_sync_msg),
    ("POST", "/cgi-bin/kf/customer/batchget", kf_customer_batchget),
    ("POST", "/cgi-bin/kf/send_msg", kf_send_msg),
    ("POST", "/cgi-bin/kf/send_msg_on_event", kf_send_msg_on_event),
    ("POST", "/cgi-bin/kf/service_state/trans", kf_service_state_trans),
    ("POST", "/cgi-bin/kf/service_state/get", kf_service_state_get),
    ("POST", "/cgi-bin/kf/add_contact_way", kf_add_contact_way),
]


# ---- HTTP plumbing ----------------------------------------------------------------------------


async def _read_call(request: web.Request) -> ApiCall:
    call = ApiCall(dict(request.query))
    if request.method != "POST":
        return call
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name:
                data = await part.read(decode=False)
                content_type = part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
                call.files[part.name] = UploadedFile(part.filename or "", content_type, bytes(data))
        return call
    try:
        raw = (await request.read()).decode("utf-8")
        payload = json.loads(raw) if raw.strip() else {}
    except ValueError:
        call.error = 47001
        return call
    if not isinstance(payload, dict):
        call.error = 47001
    elif _UNICODE_ESCAPE.search(raw):
        call.error = 40033
    else:
        call.payload = payload
    return call


def _logged_payload(request: web.Request, call: ApiCall) -> dict[str, Any]:
    if call.files:
        return {"files": [{"name": n, "filename": f.filename, "size": len(f.data)} for n, f in call.files.items()]}
    if request.method == "POST":
        return call.payload
    return {k: v for k, v in call.query.items() if k not in {"access_token", "corpsecret"}}


def _answer(state: SimState, path: str, call: ApiCall, endpoint: Endpoint) -> dict[str, Any]:
    injected = state.take_fault(path, "errcode")
    try:
        if injected is not None:
            raise ApiError(int(injected), "injected")
        if path != GETTOKEN:
            state.check_token(call.query.get("access_token", ""))
        if call.error is not None:
            raise ApiError(call.error)
        result = endpoint(state, call)
    except ApiError as exc:
        return {"errcode": exc.errcode, "errmsg": errmsg(exc.errcode, exc.detail)}
    return {"errcode": 0, "errmsg": "ok", **result}


async def _hold(app: web.Application, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app[_CLOSING_KEY].wait(), seconds)


def _api_handler(endpoint: Endpoint) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        call = await _read_call(request)
        entry = state.record(request.path, request.path_qs, _logged_payload(request, call))
        status = state.take_fault(request.path, "http")
        if status is not None:  # a gateway in front of WeCom failed: the call had no effect
            return web.Response(
                status=int(status), text="<html><body>bad gateway</body></html>", content_type="text/html"
            )
        answer = _answer(state, request.path, call, endpoint)
        entry.errcode = answer["errcode"]
        delay = state.take_fault(request.path, "delay")
        if delay is not None:
            # A slow answer, not a slow call: the call took effect (a message was delivered) and only the
            # answer is late, so a caller that times out and retries meets WeCom's own dedupe.
            await _hold(request.app, delay)
        return web.json_response(answer, dumps=_dumps)

    return handle


# ---- /sim/ control API ------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def sim_received(request: web.Request) -> web.Response:
    """GET /sim/received[?path=...]: the API requests received, oldest first."""
    state = request.app[STATE_KEY]
    path = request.query.get("path")
    entries = state.received_for(path) if path else state.received
    rows = [
        {"path": e.path, "path_qs": e.path_qs, "payload": e.payload, "at": e.at, "errcode": e.errcode} for e in entries
    ]
    return web.json_response({"received": rows}, dumps=_dumps)


async def sim_fail(request: web.Request) -> web.Response:
    """POST /sim/fail {path, errcode, times} (or {path, http_status, times}): inject failures."""
    body = await _json_body(request)
    state = request.app[STATE_KEY]
    try:
        path, times = str(body["path"]), int(body.get("times", 1))
        if "http_status" in body:
            state.fail_http_next(path, int(body["http_status"]), times)
        else:
            state.fail_next(path, int(body["errcode"]), times)
    except (KeyError, TypeError, ValueError):
        raise web.HTTPBadRequest(text="need path and errcode (or http_status); times optional") from None
    return web.json_response({"ok": True})


async def sim_delay(request: web.Request) -> web.Response:
    """POST /sim/delay {path, seconds, times}: the calls take effect, their answers are held (timeout tests)."""
    body = await _json_body(request)
    try:
        request.app[STATE_KEY].delay_next(str(body["path"]), float(body["seconds"]), int(body.get("times", 1)))
    except (KeyError, TypeError, ValueError):
        raise web.HTTPBadRequest(text="need path and seconds; times optional") from None
    return web.json_response({"ok": True})


async def sim_expire_tokens(request: web.Request) -> web.Response:
    """POST /sim/expire_tokens: every access token expires (next use answers 42001)."""
    request.app[STATE_KEY].expire_all_tokens()
    return web.json_response({"ok": True})


async def sim_revoke_tokens(request: web.Request) -> web.Response:
    """POST /sim/revoke_tokens: every access token is forgotten (next use answers 40014)."""
    request.app[STATE_KEY].revoke_tokens()
    return web.json_response({"ok": True})


async def sim_state(request: web.Request) -> web.Response:
    """GET /sim/state: counts of what the simulator holds."""
    return web.json_response(request.app[STATE_KEY].summary(), dumps=_dumps)


async def sim_messages(request: web.Request) -> web.Response:
    """GET /sim/messages[?touser=...]: app messages delivered (and how many were dropped)."""
    state = request.app[STATE_KEY]
    touser = request.query.get("touser")
    rows = [
        {"msgid": m.msgid, "touser": m.userid, "msgtype": m.msgtype, "payload": m.payload, "at": m.at}
        for m in state.delivered
        if touser is None or m.userid == touser
    ]
    dropped = sum(1 for m in state.dropped if touser is None or m.userid == touser)
    return web.json_response({"delivered": rows, "dropped": dropped}, dumps=_dumps)


async def sim_add_contact(request: web.Request) -> web.Response:
    """POST /sim/contacts {external_userid, name, follow_user: [userid, ...]}: add a customer."""
    body = await _json_body(request)
    try:
        contact = request.app[STATE_KEY].add_external_contact_profile(
            str(body["external_userid"]), str(body["name"]), follow_user=[str(u) for u in body.get("follow_user", [])]
        )
    except (KeyError, TypeError):
        raise web.HTTPBadRequest(text="need external_userid and name") from None
    return web.json_response({"external_userid": contact.external_userid})


async def sim_oauth_code(request: web.Request) -> web.Response:
    """POST /sim/oauth_code {userid} or {external_userid}: a code for auth/getuserinfo."""
    body = await _json_body(request)
    state = request.app[STATE_KEY]
    if "userid" in body:
        code = state.issue_oauth_code(userid=str(body["userid"]))
    else:
        code = state.issue_oauth_code(external_userid=body.get("external_userid"), openid=body.get("openid"))
    return web.json_response({"code": code})


async def _on_shutdown(app: web.Application) -> None:
    # Release answers held by delay_next so shutdown does not wait for them.
    app[_CLOSING_KEY].set()


def create_simulator_app(state: SimState) -> web.Application:
    """The simulated WeCom API (WeCom's paths and JSON) plus the `/sim/` control API, over `state`."""
    app = web.Application(client_max_size=25 * 1024 * 1024)  # WeCom accepts files up to 20 MB
    app[STATE_KEY] = state
    app[_CLOSING_KEY] = asyncio.Event()
    for method, path, endpoint in ENDPOINTS:
        app.router.add_route(method, path, _api_handler(endpoint))
    app.router.add_get("/sim/received", sim_received)
    app.router.add_post("/sim/fail", sim_fail)
    app.router.add_post("/sim/delay", sim_delay)
    app.router.add_post("/sim/expire_tokens", sim_expire_tokens)
    app.router.add_post("/sim/revoke_tokens", sim_revoke_tokens)
    app.router.add_get("/sim/state", sim_state)
    app.router.add_get("/sim/messages", sim_messages)
    app.router.add_post("/sim/contacts", sim_add_contact)
    app.router.add_post("/sim/oauth_code", sim_oauth_code)
    app.on_shutdown.append(_on_shutdown)
    return app
