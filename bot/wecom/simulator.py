r"""A faithful in-memory WeCom: the state behind the simulator ("WeCom at the network boundary").

`SimState` holds what WeCom would know (tokens, contacts, tags, kf logs, codes, what was sent) and the
fault-injection switches. The HTTP API lives in `bot.wecom.sim_api` (`create_simulator_app`), the
callback side in `bot.wecom.sim_driver` (`CallbackDriver`); both are re-exported here.

Error codes are WeCom's where we could confirm them: 40001 bad secret, 40014 unknown access token,
41001 missing access token (WeCom's real code for that case, not 40014), 42001 expired token, 40033
JSON unicode escapes in the body, 41051 welcome code already used, 95001 kf message quota, 95007 invalid kf
msg token, 95018 kf session state does not allow sending. Not confirmed, chosen and kept stable here:
41052 for an expired or unknown welcome code, 95004 for an unknown open_kfid, 40035 (WeCom's generic
"invalid parameter") for other bad arguments.
"""

from __future__ import annotations

import random
import string
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.wecom.sim_api import create_simulator_app
    from bot.wecom.sim_driver import CallbackDriver

__all__ = ["ApiError", "CallbackDriver", "Received", "SimState", "create_simulator_app"]

TOKEN_TTL_S = 7200
KF_TOKEN_TTL_S = 600
WELCOME_CODE_TTL_S = 20
RESPONSE_CODE_TTL_S = 72 * 3600
OAUTH_CODE_TTL_S = 300
KF_WINDOW_S = 48 * 3600
KF_WINDOW_MESSAGES = 5
KF_RETENTION_S = 3 * 24 * 3600

MISSING_TOKEN = 41001
INVALID_TOKEN = 40014
EXPIRED_TOKEN = 42001
BAD_SECRET = 40001
INVALID_PARAM = 40035
WELCOME_CODE_USED = 41051
WELCOME_CODE_EXPIRED = 41052  # not confirmed against WeCom (see the module docstring)
KF_QUOTA = 95001
KF_BAD_TOKEN = 95007
KF_SESSION_STATE = 95018

ERRMSG = {
    -1: "system busy",
    BAD_SECRET: "invalid credential",
    40003: "invalid userid",
    40005: "invalid media type",
    40008: "invalid message type",
    40013: "invalid corpid",
    INVALID_TOKEN: "invalid access_token",
    40016: "invalid button size",
    40029: "invalid code",
    40033: "invalid charset. please check your request, if include \\uxxxx will create fail!",
    INVALID_PARAM: "invalid parameter",
    40056: "invalid agentid",
    40068: "invalid tagid",
    40071: "UserTag Name Already Exist",
    MISSING_TOKEN: "access_token missing",
    41033: "missing description",
    WELCOME_CODE_USED: "externaluser has started chatting",
    WELCOME_CODE_EXPIRED: "welcome code expired",
    EXPIRED_TOKEN: "access_token expired",
    44001: "empty media data",
    44004: "empty content",
    45002: "content size out of limit",
    45009: "api freq out of limit",
    45033: "api concurrent out of limit",
    91040: "invalid ticket type",
    95004: "invalid open_kfid",
    47001: "data format error",
    81013: "user & party & tag all invalid",
    84061: "not external contact",
    KF_QUOTA: "send msg count limit",
    KF_BAD_TOKEN: "invalid msg token",
    KF_SESSION_STATE: "send msg session status invalid",
}


def errmsg(errcode: int, detail: str = "") -> str:
    """WeCom-shaped errmsg: text, a hint, and the devtool link WeCom appends."""
    text = ERRMSG.get(errcode, "error")
    if detail:
        text = f"{text}: {detail}"
    return f"{text}, hint: [sim], more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"


class ApiError(Exception):
    """Raised by simulated endpoints; becomes {"errcode", "errmsg"} in the answer."""

    def __init__(self, errcode: int, detail: str = "") -> None:
        super().__init__(errcode, detail)
        self.errcode = errcode
        self.detail = detail


@dataclass
class Received:
    """One API request as the simulator saw it (`path` without the query, `path_qs` with it)."""

    path: str
    path_qs: str
    payload: dict[str, Any]
    at: float
    errcode: int | None = None


@dataclass
class AppMessage:
    msgid: str
    userid: str
    msgtype: str
    payload: dict[str, Any]
    at: float
    response_code: str | None = None


@dataclass
class TemplateCard:
    task_id: str
    card_type: str
    userids: list[str]
    card: dict[str, Any]
    at: float
    updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ResponseCode:
    code: str
    task_id: str
    userids: list[str]
    issued_at: float
    used: bool = False


@dataclass
class FollowUser:
    userid: str
    createtime: int
    state: str | None = None
    remark: str = ""
    description: str = ""
    add_way: int = 1
    tags: list[str] = field(default_factory=list)  # tag ids
    remark_corp_name: str = ""  # the company the rep noted for the customer
    remark_mobiles: list[str] = field(default_factory=list)  # the phone numbers the rep noted


@dataclass
class ExternalContact:
    external_userid: str
    name: str
    type: int = 1
    gender: int = 0
    unionid: str | None = None
    position: str | None = None
    corp_name: str | None = None
    follow_user: list[FollowUser] = field(default_factory=list)


@dataclass
class Tag:
    id: str
    name: str
    create_time: int
    order: int = 0


@dataclass
class TagGroup:
    group_id: str
    group_name: str
    create_time: int
    order: int = 0
    tags: list[Tag] = field(default_factory=list)


@dataclass
class ContactWay:
    config_id: str
    type: int
    scene: int
    state: str | None
    users: list[str]
    qr_code: str | None
    payload: dict[str, Any]


@dataclass
class WelcomeCode:
    code: str
    kind: str  # "contact" (send_welcome_msg) or "kf" (kf/send_msg_on_event)
    issued_at: float
    userid: str | None = None
    external_userid: str | None = None
    open_kfid: str | None = None
    used_by: dict[str, Any] | None = None  # the message sent with it


@dataclass
class KfSent:
    msgid: str
    open_kfid: str
    touser: str
    msgtype: str
    payload: dict[str, Any]
    at: float


@dataclass
class MediaUpload:
    media_id: str
    type: str
    filename: str
    content_type: str
    data: bytes
    at: float


@dataclass
class _Fault:
    value: float
    times: int


class SimState:
    """Everything the simulated WeCom knows; all times come from `clock` (seconds, like time.time)."""

    def __init__(
        self,
        corp_id: str,
        corp_secret: str,
        agent_id: int,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.corp_id = corp_id
        self.corp_secret = corp_secret
        self.agent_id = agent_id
        self.clock = clock
        self._rng = random.Random(seed)
        self._faults: dict[tuple[str, str], deque[_Fault]] = {}
        self.tokens: dict[str, float] = {}  # access_token -> expiry
        self.received: list[Received] = []
        self.members: dict[str, str] = {}  # userid -> name; empty = every userid is valid
        self.delivered: list[AppMessage] = []
        self.dropped: list[AppMessage] = []  # beyond 30/min or 1000/h per member: answered ok, never shown
        self.duplicates: list[AppMessage] = []  # suppressed by enable_duplicate_check
        self.duplicate_seen: dict[tuple[str, str], float] = {}  # (userid, content key) -> delivered at
        self.cards: dict[str, TemplateCard] = {}  # task_id -> card
        self.response_codes: dict[str, ResponseCode] = {}
        self.contacts: dict[str, ExternalContact] = {}
        self.tag_groups: dict[str, TagGroup] = {}
        self.contact_ways: dict[str, ContactWay] = {}
        self.welcome_codes: dict[str, WelcomeCode] = {}
        self.msg_templates: list[dict[str, Any]] = []
        self.kf_accounts: dict[str, str] = {}  # open_kfid -> name
        self.kf_log: dict[str, list[dict[str, Any]]] = {}  # open_kfid -> sync_msg items, oldest first
        self.kf_tokens: dict[str, float] = {}  # callback Token -> expiry
        self.kf_sent: list[KfSent] = []
        self.kf_service_state: dict[tuple[str, str], int] = {}  # (open_kfid, external_userid) -> state
        self.kf_sends_since_customer: dict[tuple[str, str], int] = {}  # the 5-per-customer-message quota
        self.kf_empty_pages = 0
        self.kf_customers: dict[str, dict[str, Any]] = {}  # external_userid -> kf/customer/batchget's item
        self.tickets: list[tuple[str, str, float]] = []  # (kind, ticket, issued_at)
        # externalcontact/batch/get_by_user listings by cursor id, the newest few (their pages follow them)
        self.relation_snapshots: dict[str, list[tuple[str, FollowUser]]] = {}
        self.oauth_codes: dict[str, tuple[dict[str, str], float]] = {}
        self.menus: dict[int, dict[str, Any]] = {}
        self.media: dict[str, MediaUpload] = {}

    # ---- identifiers -------------------------------------------------------------------------

    def new_id(self, prefix: str = "", length: int = 24) -> str:
        """A fresh opaque id (seeded, so runs with the same seed repeat)."""
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self._rng.choice(alphabet) for _ in range(length))

    # ---- fault injection ---------------------------------------------------------------------

    def fail_next(self, path: str, errcode: int, times: int = 1) -> None:
        """Answer `errcode` to the next `times` calls of `path` (before any other check)."""
        self._faults.setdefault((path, "errcode"), deque()).append(_Fault(errcode, times))

    def fail_http_next(self, path: str, status: int = 502, times: int = 1) -> None:
        """Answer HTTP `status` (no WeCom JSON) to the next `times` calls of `path`."""
        self._faults.setdefault((path, "http"), deque()).append(_Fault(status, times))

    def delay_next(self, path: str, seconds: float, times: int = 1) -> None:
        """Hold the next `times` answers of `path` for `seconds` (cut short when the app shuts down); the
        calls themselves take effect at once, as when WeCom is slow to answer."""
        self._faults.setdefault((path, "delay"), deque()).append(_Fault(seconds, times))

    def take_fault(self, path: str, kind: str) -> float | None:
        """Consume one pending fault of `kind` ("errcode", "http" or "delay") for `path`, if any."""
        queue = self._faults.get((path, kind))
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault.value

    def expire_all_tokens(self) -> None:
        """Every issued access token expires now: the next call with one answers 42001."""
        now = self.clock()
        self.tokens = {token: min(expiry, now - 1) for token, expiry in self.tokens.items()}

    def revoke_tokens(self) -> None:
        """Forget every issued access token: the next call with one answers 40014."""
        self.tokens.clear()

    def kf_empty_page_next(self, times: int = 1) -> None:
        """The next `times` kf/sync_msg calls answer an empty page with has_more=1 (a real WeCom quirk)."""
        self.kf_empty_pages += times

    # ---- access tokens -----------------------------------------------------------------------

    def issue_token(self) -> tuple[str, int]:
        """The current access token and its remaining lifetime; a new one if none is valid."""
        now = self.clock()
        for token, expiry in self.tokens.items():
            if expiry > now:
                # WeCom hands out the same token until it expires; expires_in is what is left of it.
                return token, int(expiry - now)
        token = self.new_id("simtok_", 64)
        self.tokens[token] = now + TOKEN_TTL_S
        return token, TOKEN_TTL_S

    def check_token(self, token: str) -> None:
        """Raise ApiError 41001 / 40014 / 42001 unless `token` is a live access token."""
        if not token:
            raise ApiError(MISSING_TOKEN)
        expiry = self.tokens.get(token)
        if expiry is None:
            raise ApiError(INVALID_TOKEN)
        if expiry <= self.clock():
            raise ApiError(EXPIRED_TOKEN)

    # ---- members and contacts ----------------------------------------------------------------

    def add_member(self, userid: str, name: str = "") -> None:
        """Register an internal member; once any exists, messages to unknown userids are invalid."""
        self.members[userid] = name or userid

    def is_member(self, userid: str) -> bool:
        return not self.members or userid in self.members

    def add_external_contact_profile(
        self,
        external_userid: str,
        name: str,
        *,
        type: int = 1,
        gender: int = 0,
        unionid: str | None = None,
        position: str | None = None,
        corp_name: str | None = None,
        follow_user: Iterable[str | FollowUser] = (),
    ) -> ExternalContact:
        """Create or replace a customer; `follow_user` lists the reps (userids) who have added them."""
        contact = ExternalContact(external_userid, name, type, gender, unionid, position, corp_name)
        for item in follow_user:
            contact.follow_user.append(item if isinstance(item, FollowUser) else FollowUser(item, int(self.clock())))
        self.contacts[external_userid] = contact
        return contact

    def keep_relation_snapshot(self, relations: list[tuple[str, FollowUser]]) -> str:
        """Keep a batch/get_by_user listing for the pages after its first; returns its cursor id."""
        key = f"{len(self.relation_snapshots) + 1:x}{self._rng.getrandbits(32):08x}"
        self.relation_snapshots[key] = relations
        while len(self.relation_snapshots) > 16:
            del self.relation_snapshots[next(iter(self.relation_snapshots))]
        return key

    def link_contact(
        self, userid: str, external_userid: str, *, state: str | None = None, add_way: int = 1
    ) -> FollowUser:
        """Record that rep `userid` and the customer are now connected (creates a stub customer if new)."""
        contact = self.contacts.get(external_userid) or self.add_external_contact_profile(
            external_userid, f"客户{external_userid[-4:]}"
        )
        existing = self.follow_of(userid, external_userid)
        if existing is not None:
            return existing
        follow = FollowUser(userid, int(self.clock()), state=state, add_way=add_way)
        contact.follow_user.append(follow)
        return follow

    def unlink_contact(self, userid: str, external_userid: str) -> None:
        """The rep deleted the customer: the relation disappears from externalcontact/get."""
        contact = self.contacts.get(external_userid)
        if contact is not None:
            contact.follow_user = [f for f in contact.follow_user if f.userid != userid]

    def follow_of(self, userid: str, external_userid: str) -> FollowUser | None:
        contact = self.contacts.get(external_userid)
        if contact is None:
            return None
        return next((f for f in contact.follow_user if f.userid == userid), None)

    def find_tag(self, tag_id: str) -> tuple[TagGroup, Tag] | None:
        for group in self.tag_groups.values():
            for tag in group.tags:
                if tag.id == tag_id:
                    return group, tag
        return None

    # ---- single-use codes --------------------------------------------------------------------

    def issue_welcome_code(
        self,
        kind: str = "contact",
        *,
        userid: str | None = None,
        external_userid: str | None = None,
        open_kfid: str | None = None,
    ) -> str:
        """A welcome code valid for 20 s, once (add_external_contact or kf enter_session)."""
        code = self.new_id("wc_", 32)
        self.welcome_codes[code] = WelcomeCode(code, kind, self.clock(), userid, external_userid, open_kfid)
        return code

    def use_welcome_code(self, code: str, kind: str, message: dict[str, Any]) -> WelcomeCode:
        """Consume a welcome code or raise ApiError (41051 used, 41052 expired or unknown)."""
        entry = self.welcome_codes.get(code)
        if entry is None or entry.kind != kind:
            raise ApiError(WELCOME_CODE_EXPIRED, "unknown welcome_code")
        if entry.used_by is not None:
            raise ApiError(WELCOME_CODE_USED)
        if self.clock() - entry.issued_at > WELCOME_CODE_TTL_S:
            raise ApiError(WELCOME_CODE_EXPIRED)
        entry.used_by = message
        return entry

    def issue_response_code(self, task_id: str, userids: list[str]) -> str:
        """A template-card response code (single use, 72 h), as message/send and card clicks return."""
        code = self.new_id("rc_", 40)
        self.response_codes[code] = ResponseCode(code, task_id, list(userids), self.clock())
        return code

    def issue_oauth_code(
        self, *, userid: str | None = None, external_userid: str | None = None, openid: str | None = None
    ) -> str:
        """An OAuth code for auth/getuserinfo: a member (userid) or a customer (external_userid/openid)."""
        if userid is not None:
            identity = {"userid": userid}
        else:
            identity = {"openid": openid or self.new_id("o", 27)}
            if external_userid is not None:
                identity["external_userid"] = external_userid
        code = self.new_id("oc_", 32)
        self.oauth_codes[code] = (identity, self.clock())
        return code

    # ---- WeChat Customer Service (kf) --------------------------------------------------------

    def add_kf_account(self, open_kfid: str, name: str = "") -> None:
        """Register a kf account (also done implicitly by add_kf_message)."""
        self.kf_accounts.setdefault(open_kfid, name or open_kfid)
        self.kf_log.setdefault(open_kfid, [])

    def add_kf_customer(self, external_userid: str, nickname: str, *, unionid: str | None = None, gender: int = 0) -> None:
        """A WeChat user who has talked to a kf account (kf/customer/batchget knows them)."""
        item: dict[str, Any] = {"external_userid": external_userid, "nickname": nickname, "avatar": "", "gender": gender}
        if unionid is not None:
            item["unionid"] = unionid
        self.kf_customers[external_userid] = item

    def issue_kf_token(self) -> str:
        """The Token a kf_msg_or_event callback carries (valid 10 min for sync_msg)."""
        token = self.new_id("ENC", 44)
        self.kf_tokens[token] = self.clock() + KF_TOKEN_TTL_S
        return token

    def add_kf_message(
        self,
        open_kfid: str,
        external_userid: str,
        *,
        msgtype: str = "text",
        content: str | None = None,
        menu_id: str | None = None,
        origin: int = 3,
        event: dict[str, Any] | None = None,
        servicer_userid: str | None = None,
    ) -> dict[str, Any]:
        """Append one item to the kf log as sync_msg will return it; customer text is origin 3."""
        self.add_kf_account(open_kfid)
        item: dict[str, Any] = {
            "msgid": self.new_id("from_msgid_", 19),
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "send_time": int(self.clock()),
            "origin": origin,
            "msgtype": msgtype,
        }
        if servicer_userid is not None:
            item["servicer_userid"] = servicer_userid
        if msgtype == "text":
            text: dict[str, Any] = {"content": content or ""}
            if menu_id is not None:
                text["menu_id"] = menu_id
            item["text"] = text
        elif msgtype == "event":
            item["event"] = dict(event or {})
            item.pop("external_userid")  # system events carry it inside "event"
        self.kf_log[open_kfid].append(item)
        if origin == 3:
            self.kf_sends_since_customer[(open_kfid, external_userid)] = 0
        return item

    def kf_last_customer_message_at(self, open_kfid: str, external_userid: str) -> float | None:
        for item in reversed(self.kf_log.get(open_kfid, [])):
            if item["origin"] == 3 and item.get("external_userid") == external_userid:
                return float(item["send_time"])
        return None

    # ---- inspection --------------------------------------------------------------------------

    def record(self, path: str, path_qs: str, payload: dict[str, Any]) -> Received:
        entry = Received(path, path_qs, payload, self.clock())
        self.received.append(entry)
        return entry

    def received_for(self, path: str) -> list[Received]:
        """Every request received for `path` (query-less), oldest first."""
        return [r for r in self.received if r.path == path]

    def messages_to(self, userid: str) -> list[AppMessage]:
        """App messages actually delivered to member `userid` (not dropped, not duplicates)."""
        return [m for m in self.delivered if m.userid == userid]

    def summary(self) -> dict[str, Any]:
        """Counts of what the simulator holds, for /sim/state and the demo."""
        calls: dict[str, int] = {}
        for entry in self.received:
            calls[entry.path] = calls.get(entry.path, 0) + 1
        return {
            "corp_id": self.corp_id,
            "agent_id": self.agent_id,
            "calls": calls,
            "delivered": len(self.delivered),
            "dropped": len(self.dropped),
            "duplicates": len(self.duplicates),
            "cards": len(self.cards),
            "contacts": len(self.contacts),
            "tag_groups": len(self.tag_groups),
            "contact_ways": len(self.contact_ways),
            "welcome_messages": sum(1 for c in self.welcome_codes.values() if c.used_by is not None),
            "msg_templates": len(self.msg_templates),
            "kf_messages": {kfid: len(items) for kfid, items in self.kf_log.items()},
            "kf_sent": len(self.kf_sent),
            "media": len(self.media),
        }


def __getattr__(name: str) -> Any:
    # Lazy re-exports: sim_api and sim_driver import this module, so eager imports would be circular.
    if name == "create_simulator_app":
        from bot.wecom.sim_api import create_simulator_app

        return create_simulator_app
    if name == "CallbackDriver":
        from bot.wecom.sim_driver import CallbackDriver

        return CallbackDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
