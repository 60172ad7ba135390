"""WeCom callbacks in: signature, freshness, decryption and parsing into a typed `Inbound` record.

wechatpy does the AES work; we check the signature ourselves (constant time, wechatpy uses `!=`) and
map every failure to one of two exceptions the HTTP edge turns into 403 or 400 (WECOM.md: wechatpy
lets binascii/struct/expat errors escape raw).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import time
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from wechatpy.work.exceptions import InvalidCorpIdException
from wechatpy.work.crypto import PrpCrypto


class CallbackForbidden(Exception):
    """Signature, receive id or timestamp wrong: answer 403."""


class CallbackMalformed(Exception):
    """Body or parameters cannot be read: answer 400."""


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


_DTD = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def _reject_dtd(text: str) -> None:
    # WeCom never sends a DTD; refusing one rules out entity-expansion and external-entity tricks.
    if _DTD.search(text):
        raise CallbackMalformed("DTD not allowed")


class CallbackCrypto:
    """One corp's callback secrets: verify, decrypt and (for the simulator and replies) encrypt."""

    def __init__(self, token: str, encoding_aes_key: str, corp_id: str, *, replay_window_s: int = 600) -> None:
        self.token = token
        self.corp_id = corp_id
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.replay_window_s = replay_window_s

    def _check(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str, now: float | None) -> None:
        if not (msg_signature and timestamp and nonce):
            raise CallbackMalformed("msg_signature, timestamp and nonce are required")
        expected = signature(self.token, timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), msg_signature.encode()):
            raise CallbackForbidden("bad signature")
        if self.replay_window_s:
            try:
                sent = int(timestamp)
            except ValueError:
                raise CallbackMalformed("timestamp is not an integer") from None
            now = time.time() if now is None else now
            if abs(now - sent) > self.replay_window_s:
                raise CallbackForbidden("timestamp outside the replay window")

    def _decrypt(self, encrypt: str) -> str:
        try:
            plain = PrpCrypto(self.key).decrypt(encrypt, self.corp_id)
            return plain.decode("utf-8") if isinstance(plain, bytes) else plain
        except InvalidCorpIdException:
            raise CallbackForbidden("message is for another corp") from None
        except (binascii.Error, ValueError, struct.error, UnicodeDecodeError, IndexError, TypeError) as exc:
            raise CallbackMalformed(f"cannot decrypt ({type(exc).__name__})") from None

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str, *, now: float | None = None) -> str:
        """WeCom's URL verification (GET): the decrypted echostr to answer with."""
        # aiohttp decodes a raw '+' in the query to a space; base64 never contains spaces.
        echostr = echostr.replace(" ", "+")
        if not echostr:
            raise CallbackMalformed("echostr is required")
        self._check(msg_signature, timestamp, nonce, echostr, now)
        return self._decrypt(echostr)

    def decrypt_body(self, body: bytes, msg_signature: str, timestamp: str, nonce: str, *, now: float | None = None) -> str:
        """The plaintext XML of a POSTed callback."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise CallbackMalformed("body is not UTF-8") from None
        _reject_dtd(text)
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            raise CallbackMalformed("body is not XML") from None
        encrypt = (root.findtext("Encrypt") or "").strip()
        if not encrypt:
            raise CallbackMalformed("no Encrypt element")
        self._check(msg_signature, timestamp, nonce, encrypt, now)
        return self._decrypt(encrypt)

    def encrypt(self, plaintext: str, *, timestamp: str | None = None, nonce: str | None = None) -> dict[str, str]:
        """Encrypt and sign like WeCom does: {encrypt, msg_signature, timestamp, nonce}."""
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or secrets.token_hex(5)
        encrypt = PrpCrypto(self.key).encrypt(plaintext, self.corp_id)
        encrypt = encrypt.decode() if isinstance(encrypt, bytes) else encrypt
        return {
            "encrypt": encrypt,
            "msg_signature": signature(self.token, timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        }


def normalize_text(text: str) -> str:
    """Full-width to half-width (NFKC), collapse spaces, strip: '  找　白皮书 ' -> '找 白皮书'."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text or "")).strip()


_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Inbound:
    """A parsed callback. `fields` holds every top-level element as text (WeCom's names)."""

    msg_type: str  # text | image | event | ... ; "unknown" when absent
    event: str  # lower-case Event, "" for messages
    fields: dict[str, Any] = field(default_factory=dict)
    plaintext: str = ""

    def get(self, name: str, default: str = "") -> str:
        value = self.fields.get(name)
        return default if value is None else str(value)

    @property
    def kind(self) -> str:
        """A short routing label: `text`, `event:click`, `event:change_external_contact/add_external_contact`."""
        if self.msg_type != "event":
            return self.msg_type
        change = self.get("ChangeType")
        return f"event:{self.event}/{change}" if change else f"event:{self.event}"

    @property
    def sender(self) -> str:
        return self.get("FromUserName")

    @property
    def text(self) -> str:
        return self.get("Content")

    @cached_property
    def command_text(self) -> tuple[str, str]:
        """`text` as commands read it (`normalize_text`), and that lower-cased: worked out once, where
        every command route of the dispatcher used to normalize it again."""
        text = normalize_text(self.text)
        return text, text.lower()

    @property
    def is_unknown(self) -> bool:
        return self.msg_type == "unknown"

    @property
    def source(self) -> str:
        return "kf" if self.event == "kf_msg_or_event" else "app"

    @property
    def dedupe_key(self) -> str:
        """Redeliveries of one callback share this key (WECOM.md: MsgId, else the event's identity)."""
        msg_id = self.get("MsgId")
        if msg_id:
            return f"msg:{msg_id}"
        # Contact events all come from "sys", so FromUserName+CreateTime is not unique; the whole
        # plaintext is the event's identity (redeliveries carry the same plaintext).
        return "evt:" + hashlib.sha256(self.plaintext.encode()).hexdigest()[:48]


def parse_inbound(plaintext: str) -> Inbound:
    """Parse decrypted XML. Unknown or incomplete payloads become an Inbound with msg_type 'unknown'."""
    _reject_dtd(plaintext)
    try:
        root = ET.fromstring(plaintext)
    except Exception as exc:  # expat's ParseError; anything unreadable is malformed
        raise CallbackMalformed(f"plaintext is not XML ({type(exc).__name__})") from None
    fields = element_value(root) if root.tag == "xml" else None
    if not isinstance(fields, dict):
        raise CallbackMalformed("plaintext has no <xml> root")
    msg_type = str(fields.get("MsgType") or "unknown").lower()
    event = str(fields.get("Event") or "").lower() if msg_type == "event" else ""
    return Inbound(msg_type=msg_type, event=event, fields=fields, plaintext=plaintext)


def element_value(element: ET.Element) -> dict[str, Any] | str | None:
    """An element as xmltodict's defaults give it (the shape handlers read `Inbound.fields` in): a leaf
    is its stripped text (None when empty); otherwise a dict of `@attribute`s, children by tag (a
    repeated tag becomes a list, in document order) and `#text` for non-blank text among them.
    ElementTree parses a callback in about a third of xmltodict's time (its SAX handler is Python),
    and the edge parses every callback before it answers. Namespaces are not mapped back to their
    prefixes; WeCom's XML has none."""
    text = element.text or ""
    value: dict[str, Any] = {f"@{name}": attr for name, attr in element.attrib.items()} if element.attrib else {}
    has_children = False
    for child in element:
        has_children = True
        if child.tail:
            text += child.tail
        if len(child) or child.attrib:
            item = element_value(child)
        else:  # a leaf: nearly every element of a callback
            item = child.text.strip() or None if child.text else None
        tag = child.tag
        if tag not in value:
            value[tag] = item
        elif isinstance(value[tag], list):
            value[tag].append(item)
        else:
            value[tag] = [value[tag], item]
    text = text.strip()
    if not has_children and not element.attrib:
        return text or None
    if text:
        value["#text"] = text
    return value
