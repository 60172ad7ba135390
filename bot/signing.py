"""HMAC signatures for what pages hand to browsers: CSRF tokens, beacon keys, unlock cookies, child links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

log = logging.getLogger("beacon.signing")


class Signer:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            # Without a configured key, signed cookies and forms do not survive a restart and do not
            # work across processes; fine for a demo, wrong for production.
            log.warning("[server].secret_key is empty; using a random key for this process")
            secret_key = secrets.token_hex(32)
        self._key = hashlib.sha256(b"beacon-signing:" + secret_key.encode()).digest()

    def sign(self, *parts: str, length: int = 32) -> str:
        mac = hmac.new(self._key, "\x1f".join(parts).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:length]

    def verify(self, signature: str, *parts: str, length: int = 32) -> bool:
        return hmac.compare_digest(self.sign(*parts, length=length).encode(), (signature or "").encode())
