"""Who is looking at a page: signed session cookies, roles and scopes, WeCom OAuth state.

- A session is a stateless cookie: base64url([kind, userid, issued_at]) + "." + HMAC. Kinds:
  `wecom` (a member, by OAuth), `sim` (a member picked on the login page, simulator mode only) and
  `admin` (the admin token). An admin session's HMAC also covers a fingerprint of the admin token,
  so changing the token logs every admin session out; changing `secret_key` logs everyone out.
- A member's role is read from `reps.role` on every request, never from the cookie, so a role
  change takes effect at once; an unknown or inactive member is logged out.
- Scope: a rep sees their own contacts, a manager theirs and their reports' (reps whose
  `manager_userid` is the manager), an admin everything.
- CSRF tokens are an HMAC of the session cookie: a form from one session is void in another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.models import Rep
from bot.reports import Scope

if TYPE_CHECKING:
    from bot.runtime import Runtime

SESSION_COOKIE = "bcn_session"
OAUTH_COOKIE = "bcn_oauth"
LOGIN_COOKIE = "bcn_login"
KINDS = ("wecom", "sim", "admin")
ROLE_LABELS = {"rep": "销售", "manager": "经理", "admin": "管理员"}
CLOCK_SKEW_S = 60


@dataclass(frozen=True)
class Viewer:
    """The logged-in person of one request."""

    kind: str
    userid: str | None  # None for the admin-token login
    name: str
    role: str
    team: frozenset[str] | None  # owners whose contacts are visible; None = all
    cookie: str

    @property
    def scope(self) -> Scope:
        return Scope(self.team)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_member(self) -> bool:
        return self.userid is not None

    def sees_owner(self, owner: str | None) -> bool:
        return self.team is None or (owner is not None and owner in self.team)

    @property
    def role_label(self) -> str:
        return ROLE_LABELS.get(self.role, self.role)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies and the CSRF tokens bound to them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def _admin_fingerprint(self) -> str:
        return hashlib.sha256(b"beacon-admin:" + self.rt.settings.server.admin_token.encode()).hexdigest()[:16]

    def _sign(self, payload: str, kind: str) -> str:
        bound = self._admin_fingerprint() if kind == "admin" else ""
        return self.rt.signer.sign("session", payload, bound, length=43)

    def issue(self, kind: str, userid: str | None) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown session kind {kind!r}")
        issued = int(self.rt.clock.now().timestamp())
        payload = _b64(json.dumps([kind, userid, issued]).encode())
        return f"{payload}.{self._sign(payload, kind)}"

    def read(self, value: str) -> tuple[str, str | None] | None:
        """(kind, userid) of a valid, unexpired cookie; None otherwise."""
        payload, _, sig = value.rpartition(".")
        if not payload or len(value) > 512:
            return None
        try:
            kind, userid, issued = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if kind not in KINDS or not isinstance(issued, int) or not (userid is None or isinstance(userid, str)):
            return None
        if not self.rt.signer.verify(sig, "session", payload, self._admin_fingerprint() if kind == "admin" else "", length=43):
            return None
        if kind == "admin" and not self.rt.settings.server.admin_token:
            return None
        if kind == "sim" and not self.rt.settings.pages.simulator_mode:
            return None
        now = self.rt.clock.now().timestamp()
        if not issued - CLOCK_SKEW_S <= now <= issued + self.rt.settings.pages.session_hours * 3600:
            return None
        return kind, userid

    def csrf(self, cookie: str) -> str:
        return self.rt.signer.sign("page-csrf", cookie)

    def check_csrf(self, cookie: str, token: str) -> bool:
        return bool(cookie) and self.rt.signer.verify(token, "page-csrf", cookie)

    def max_age(self) -> int:
        return int(self.rt.settings.pages.session_hours * 3600)


async def load_viewer(rt: Runtime, cookie: str) -> Viewer | None:
    """The viewer behind a session cookie, with role and team from the database; None = logged out."""
    if not cookie:
        return None
    found = Sessions(rt).read(cookie)
    if found is None:
        return None
    kind, userid = found
    if kind == "admin":
        return Viewer("admin", None, "令牌登录", "admin", None, cookie)
    if not userid:
        return None
    async with rt.read_sessions() as session:
        rep = await session.get(Rep, userid)
        if rep is None or not rep.active:
            return None
        team: frozenset[str] | None = None
        if rep.role != "admin":
            reports = set((await session.scalars(select(Rep.userid).where(Rep.manager_userid == userid))).all())
            team = frozenset({userid} | (reports if rep.role == "manager" else set()))
    return Viewer(kind, userid, rep.name or userid, rep.role, team, cookie)


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def safe_next(raw: str | None, default: str = "/dashboard") -> str:
    """A local path to go back to after login (never another site: no scheme, no `//`, no `\\`)."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw or any(ord(c) < 32 for c in raw):
        return default
    return raw[:1024]
