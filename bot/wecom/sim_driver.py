"""Drive a bot's callback URL exactly as WeCom does: plaintext XML, AES encryption, signature, POST.

The encrypted envelope is WeCom's (`ToUserName`, `Encrypt`, `AgentID`), not the passive-reply shape
wechatpy's `encrypt_message` returns; we take only Encrypt and MsgSignature from the latter.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import aiohttp
import xmltodict
from wechatpy.work.crypto import PrpCrypto, WeChatCrypto
from yarl import URL

from bot.wecom.simulator import SimState

__all__ = ["CallbackDriver", "CallbackResult", "Raw", "build_xml", "sign"]


class CallbackResult(NamedTuple):
    """What the bot answered: HTTP status and body text."""

    status: int
    body: str


class Raw(str):
    """Pre-built XML to embed as is (nested elements such as SelectedItems)."""


@dataclass(frozen=True)
class _Delivery:
    method: str
    url: URL
    body: bytes | None


Field = tuple[str, str | int | Raw | None]


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """WeCom's msg_signature: sha1 over the sorted concatenation of the four values."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


def cdata(value: str) -> str:
    """A CDATA section; a literal "]]>" is split across two sections, as XML requires."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build_xml(fields: Iterable[Field]) -> str:
    """`<xml>` with one element per field: ints bare, strings in CDATA (as WeCom writes them), None skipped."""
    parts = []
    for name, value in fields:
        if value is None:
            continue
        inner = str(value) if isinstance(value, Raw | int) else cdata(value)
        parts.append(f"<{name}>{inner}</{name}>")
    return "<xml>" + "".join(parts) + "</xml>"


def selected_items_xml(items: Iterable[tuple[str, list[str]]]) -> Raw:
    """SelectedItems of a vote / multiple-choice card event: (question_key, [option_id, ...]) pairs."""
    parts = []
    for question, options in items:
        option_xml = "".join(f"<OptionId>{cdata(o)}</OptionId>" for o in options)
        parts.append(
            f"<SelectedItem><QuestionKey>{cdata(question)}</QuestionKey><OptionIds>{option_xml}</OptionIds></SelectedItem>"
        )
    return Raw("".join(parts))


class CallbackDriver:
    """Sends WeCom callbacks (app messages, events, contact changes, kf) to one callback URL."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        callback_url: str,
        *,
        token: str,
        encoding_aes_key: str,
        corp_id: str,
        agent_id: int,
        state: SimState | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._http = http
        self._url = URL(callback_url)
        self._token = token
        self._crypto = WeChatCrypto(token, encoding_aes_key, corp_id)
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.state = state
        # CreateTime and the signed timestamp; the bot checks freshness against them, so by default the
        # driver keeps to the simulated WeCom's clock.
        self.clock = clock or (state.clock if state is not None else time.time)
        self._msg_ids = itertools.count(7_000_000_000_000_000_000 + secrets.randbelow(10**15) * 1000)
        self._last: _Delivery | None = None
        self.last_plaintext: str | None = None
        self.last_welcome_code: str | None = None
        self.last_kf_token: str | None = None

    # ---- transport ---------------------------------------------------------------------------

    def envelope(self, xml_plaintext: str, *, timestamp: str, nonce: str) -> tuple[str, str]:
        """Encrypt `xml_plaintext`; returns (WeCom's encrypted XML envelope, msg_signature)."""
        reply = xmltodict.parse(self._crypto.encrypt_message(xml_plaintext, nonce, timestamp))["xml"]
        body = build_xml([("ToUserName", self.corp_id), ("Encrypt", reply["Encrypt"]), ("AgentID", str(self.agent_id))])
        return body, reply["MsgSignature"]

    async def post_raw(
        self, xml_plaintext: str, *, timestamp: str | None = None, tamper_signature: bool = False
    ) -> CallbackResult:
        """Encrypt, sign and POST any plaintext XML (also for hostile cases: stale timestamp, bad signature)."""
        timestamp = timestamp or str(int(self.clock()))
        nonce = _nonce()
        body, signature = self.envelope(xml_plaintext, timestamp=timestamp, nonce=nonce)
        if tamper_signature:
            signature = ("0" if signature[0] != "0" else "1") + signature[1:]
        url = self._url.update_query(msg_signature=signature, timestamp=timestamp, nonce=nonce)
        self.last_plaintext = xml_plaintext
        return await self._deliver(_Delivery("POST", url, body.encode()))

    async def verify_url(self, echostr_plain: str) -> CallbackResult:
        """WeCom's URL verification: GET with an encrypted, signed echostr; the bot must echo the plaintext."""
        timestamp, nonce = str(int(self.clock())), _nonce()
        echostr = PrpCrypto(self._crypto.key).encrypt(echostr_plain, self.corp_id).decode()
        signature = sign(self._token, timestamp, nonce, echostr)
        url = self._url.update_query(msg_signature=signature, timestamp=timestamp, nonce=nonce, echostr=echostr)
        return await self._deliver(_Delivery("GET", url, None))

    async def redeliver(self) -> CallbackResult:
        """Send the last callback again byte for byte (same signature, timestamp and nonce), as WeCom retries."""
        if self._last is None:
            raise RuntimeError("nothing delivered yet")
        return await self._deliver(self._last)

    async def _deliver(self, delivery: _Delivery) -> CallbackResult:
        self._last = delivery
        headers = {"Content-Type": "text/xml"} if delivery.body is not None else None
        async with self._http.request(delivery.method, delivery.url, data=delivery.body, headers=headers) as resp:
            return CallbackResult(resp.status, await resp.text())

    def _now(self) -> int:
        return int(self.clock())

    def _need_state(self) -> SimState:
        if self.state is None:
            raise RuntimeError("this callback needs the driver's SimState")
        return self.state

    # ---- self-built app messages and events --------------------------------------------------

    async def send_text(self, from_user: str, content: str, msg_id: int | None = None) -> CallbackResult:
        """A member's text message to the app (each with a unique MsgId unless one is given)."""
        return await self.post_raw(
            build_xml(
                [
                    ("ToUserName", self.corp_id),
                    ("FromUserName", from_user),
                    ("CreateTime", self._now()),
                    ("MsgType", "text"),
                    ("Content", content),
                    ("MsgId", msg_id if msg_id is not None else next(self._msg_ids)),
                    ("AgentID", self.agent_id),
                ]
            )
        )

    async def send_event(self, from_user: str, event: str, fields: Iterable[Field] = ()) -> CallbackResult:
        """Any app event (`click`, `view`, `enter_agent`, ...) with extra fields after Event."""
        base: list[Field] = [
            ("ToUserName", self.corp_id),
            ("FromUserName", from_user),
            ("CreateTime", self._now()),
            ("MsgType", "event"),
            ("Event", event),
        ]
        return await self.post_raw(build_xml([*base, *fields, ("AgentID", self.agent_id)]))

    async def click_menu(self, from_user: str, key: str) -> CallbackResult:
        """A member clicked a `click` menu item with this key."""
        return await self.send_event(from_user, "click", [("EventKey", key)])

    async def card_click(
        self,
        from_user: str,
        task_id: str,
        event_key: str,
        response_code: str | None = None,
        card_type: str = "button_interaction",
        selected_items: Iterable[tuple[str, list[str]]] | None = None,
    ) -> CallbackResult:
        """A template_card_event; the ResponseCode is issued in SimState (usable for update_template_card)."""
        if response_code is None:
            response_code = (
                self.state.issue_response_code(task_id, [from_user]) if self.state else secrets.token_urlsafe(30)
            )
        fields: list[Field] = [
            ("EventKey", event_key),
            ("TaskId", task_id),
            ("CardType", card_type),
            ("ResponseCode", response_code),
        ]
        if selected_items is not None:
            fields.append(("SelectedItems", selected_items_xml(selected_items)))
        return await self.send_event(from_user, "template_card_event", fields)

    # ---- customer contact --------------------------------------------------------------------

    async def _contact_change(self, change_type: str, fields: Iterable[Field]) -> CallbackResult:
        base: list[Field] = [
            ("ToUserName", self.corp_id),
            ("FromUserName", "sys"),
            ("CreateTime", self._now()),
            ("MsgType", "event"),
            ("Event", "change_external_contact"),
            ("ChangeType", change_type),
        ]
        return await self.post_raw(build_xml([*base, *fields]))

    async def add_external_contact(
        self,
        user_id: str,
        external_userid: str,
        state: str | None = None,
        with_welcome_code: bool = True,
        half: bool = False,
    ) -> CallbackResult:
        """A customer added rep `user_id` (`state` = the contact way's state); links them in SimState."""
        code = None
        if self.state is not None:
            self.state.link_contact(user_id, external_userid, state=state)
            if with_welcome_code:
                code = self.state.issue_welcome_code("contact", userid=user_id, external_userid=external_userid)
        elif with_welcome_code:
            code = secrets.token_urlsafe(32)
        self.last_welcome_code = code
        change = "add_half_external_contact" if half else "add_external_contact"
        fields: list[Field] = [("UserID", user_id), ("ExternalUserID", external_userid), ("State", state)]
        return await self._contact_change(change, [*fields, ("WelcomeCode", code)])

    async def edit_external_contact(self, user_id: str, external_userid: str) -> CallbackResult:
        """The rep edited the customer's remark, tags or description in the client."""
        return await self._contact_change(
            "edit_external_contact", [("UserID", user_id), ("ExternalUserID", external_userid)]
        )

    async def del_external_contact(
        self, user_id: str, external_userid: str, source: str | None = None
    ) -> CallbackResult:
        """The rep deleted the customer (`source` DELETE_BY_TRANSFER on a transfer); unlinks in SimState."""
        if self.state is not None:
            self.state.unlink_contact(user_id, external_userid)
        fields: list[Field] = [("UserID", user_id), ("ExternalUserID", external_userid), ("Source", source)]
        return await self._contact_change("del_external_contact", fields)

    async def del_follow_user(self, user_id: str, external_userid: str) -> CallbackResult:
        """The customer deleted the rep (the rep still sees the customer, so SimState keeps the link)."""
        return await self._contact_change("del_follow_user", [("UserID", user_id), ("ExternalUserID", external_userid)])

    # ---- WeChat Customer Service (kf) --------------------------------------------------------

    async def kf_event(self, open_kfid: str) -> CallbackResult:
        """A kf_msg_or_event callback with a fresh Token (the bot must call sync_msg to see anything)."""
        token = self.state.issue_kf_token() if self.state else secrets.token_urlsafe(33)
        self.last_kf_token = token
        return await self.post_raw(
            build_xml(
                [
                    ("ToUserName", self.corp_id),
                    ("CreateTime", self._now()),
                    ("MsgType", "event"),
                    ("Event", "kf_msg_or_event"),
                    ("Token", token),
                    ("OpenKfId", open_kfid),
                ]
            )
        )

    async def kf_customer_text(
        self, open_kfid: str, external_userid: str, content: str, menu_id: str | None = None
    ) -> CallbackResult:
        """A customer's text (or msgmenu pick, with `menu_id`) lands in the kf log, then the callback fires."""
        self._need_state().add_kf_message(open_kfid, external_userid, content=content, menu_id=menu_id)
        return await self.kf_event(open_kfid)

    async def kf_enter_session(
        self, open_kfid: str, external_userid: str, scene_param: str | None = None, scene: str = "0"
    ) -> CallbackResult:
        """The customer opened the kf chat: an enter_session system event (origin 4) with a welcome_code."""
        state = self._need_state()
        code = state.issue_welcome_code("kf", external_userid=external_userid, open_kfid=open_kfid)
        self.last_welcome_code = code
        event = {
            "event_type": "enter_session",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "scene": scene,
            "welcome_code": code,
        }
        if scene_param is not None:
            event["scene_param"] = scene_param
        state.add_kf_message(open_kfid, external_userid, msgtype="event", origin=4, event=event)
        return await self.kf_event(open_kfid)


def _nonce() -> str:
    return str(secrets.randbelow(10**10))
