"""Beacon's own small async WeCom API client (aiohttp; wechatpy's client is blocking).

One shared access-token cache per client (one refresh at a time), refresh-and-retry once on an
invalid or expired token, exponential backoff with jitter on busy / rate-limit answers and on
transport failures. The secret and the access token never reach a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("beacon.wecom")

GETTOKEN_PATH = "/cgi-bin/gettoken"
TRANSPORT_ERRCODE = -2  # ours, not WeCom's: no answer (connection error, timeout, HTTP 5xx, not JSON)
BUSY_ERRCODES = frozenset({-1, 45009, 45033})  # system busy, frequency limit, concurrency limit
TOKEN_ERRCODES = frozenset({40001, 40014, 42001})  # invalid secret/token, invalid token, expired token
TOKEN_MARGIN_S = 300.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0


class WeComError(Exception):
    """WeCom answered a non-zero errcode (or, for WeComUnavailable, did not answer usefully)."""

    def __init__(self, errcode: int, errmsg: str, path: str) -> None:
        super().__init__(f"{path}: errcode {errcode} ({errmsg})")
        self.errcode = errcode
        self.errmsg = errmsg
        self.path = path


class WeComUnavailable(WeComError):
    """Transport failure, timeout or HTTP 5xx that outlasted the retries (errcode -2)."""

    def __init__(self, errmsg: str, path: str) -> None:
        super().__init__(TRANSPORT_ERRCODE, errmsg, path)


@dataclass(frozen=True)
class _Upload:
    field: str
    filename: str
    data: bytes
    content_type: str


_Body = dict[str, Any] | _Upload | None


class WeComClient:
    """Async client for `api_base` + WeCom's standard paths; see the module docstring for the policy."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        api_base: str,
        corp_id: str,
        secret: str,
        timeout: float = 10.0,
        max_retries: int = 3,
        on_call: Callable[[str, int], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._api_base = api_base.rstrip("/")
        self._corp_id = corp_id
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_retries = max_retries
        self._on_call = on_call
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None
        self._token_deadline = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"WeComClient(api_base={self._api_base!r}, corp_id={self._corp_id!r})"

    async def access_token(self, *, force_refresh: bool = False) -> str:
        """The cached access token, fetched (once, however many callers wait) when missing or near expiry."""
        seen = self._token
        token = None if force_refresh else self._fresh_token()
        if token is not None:
            return token
        async with self._lock:
            token = self._fresh_token()
            # Someone refreshed while we waited for the lock: use theirs, even when forcing.
            if token is not None and (not force_refresh or token != seen):
                return token
            return await self._fetch_token()

    async def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET `path` with the access token; the JSON answer on errcode 0, else WeComError."""
        return await self._authorized("GET", path, params, None)

    async def post(self, path: str, payload: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST `payload` as UTF-8 JSON to `path` with the access token; the JSON answer on errcode 0."""
        return await self._authorized("POST", path, params, payload)

    async def upload(
        self,
        path: str,
        *,
        filename: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        params: dict[str, Any] | None = None,
        field: str = "media",
    ) -> dict[str, Any]:
        """POST one file as multipart/form-data (e.g. `/cgi-bin/media/upload`, params {"type": "file"})."""
        return await self._authorized("POST", path, params, _Upload(field, filename, data, content_type))

    def _fresh_token(self) -> str | None:
        if self._token is not None and self._clock() < self._token_deadline:
            return self._token
        return None

    def _invalidate(self, token: str) -> None:
        # Only drop the token that failed: a concurrent caller may already have fetched a new one.
        if self._token == token:
            self._token = None

    async def _fetch_token(self) -> str:
        params = {"corpid": self._corp_id, "corpsecret": self._secret}
        data = await self._call("GET", GETTOKEN_PATH, params, None)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise WeComError(TRANSPORT_ERRCODE, "gettoken answered without access_token", GETTOKEN_PATH)
        expires_in = float(data.get("expires_in") or 7200)
        self._token = token
        self._token_deadline = self._clock() + expires_in - min(TOKEN_MARGIN_S, expires_in / 2)
        log.info("wecom access token refreshed (expires_in=%d)", expires_in)
        return token

    async def _authorized(self, method: str, path: str, params: dict[str, Any] | None, body: _Body) -> dict[str, Any]:
        refreshed = False
        while True:
            token = await self.access_token()
            try:
                return await self._call(method, path, {**(params or {}), "access_token": token}, body)
            except WeComError as exc:
                # WeCom may revoke tokens early: refresh once and retry; a second failure is real.
                if exc.errcode not in TOKEN_ERRCODES or refreshed:
                    raise
                refreshed = True
                log.warning("wecom %s errcode=%d: refreshing the access token and retrying once", path, exc.errcode)
                self._invalidate(token)

    async def _call(self, method: str, path: str, params: dict[str, Any], body: _Body) -> dict[str, Any]:
        """One API call with retries on busy answers and transport failures (1 + max_retries attempts)."""
        attempt = 0
        while True:
            try:
                data = await self._once(method, path, params, body)
            except WeComUnavailable as exc:
                failure: WeComError = exc
            else:
                errcode = _errcode(data)
                if errcode == 0:
                    return data
                failure = WeComError(errcode, str(data.get("errmsg", "")), path)
                log.warning("wecom %s errcode=%d", path, errcode)
                if errcode not in BUSY_ERRCODES:
                    raise failure
            if attempt >= self._max_retries:
                raise failure
            await self._sleep(self._backoff(attempt))
            attempt += 1

    async def _once(self, method: str, path: str, params: dict[str, Any], body: _Body) -> dict[str, Any]:
        try:
            async with self._http.request(
                method, self._api_base + path, params=params, timeout=self._timeout, **_body_kwargs(body)
            ) as resp:
                if resp.status >= 500:
                    raise self._unavailable(path, f"HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Only the class name: aiohttp's messages carry the URL, and the URL carries the token.
            raise self._unavailable(path, type(exc).__name__) from None
        if not isinstance(data, dict):
            raise self._unavailable(path, "answer is not a JSON object")
        self._report(path, _errcode(data))
        return data

    def _unavailable(self, path: str, reason: str) -> WeComUnavailable:
        self._report(path, TRANSPORT_ERRCODE)
        log.warning("wecom %s unavailable: %s", path, reason)
        return WeComUnavailable(reason, path)

    def _report(self, path: str, errcode: int) -> None:
        if self._on_call is not None:
            self._on_call(path, errcode)

    @staticmethod
    def _backoff(attempt: int) -> float:
        base = min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_CAP_S)
        # Jitter of at most +25 % keeps successive delays growing while spreading concurrent retries.
        return base * random.uniform(1.0, 1.25)


def _errcode(data: dict[str, Any]) -> int:
    try:
        return int(data.get("errcode") or 0)
    except (TypeError, ValueError):
        return TRANSPORT_ERRCODE


def _body_kwargs(body: _Body) -> dict[str, Any]:
    if body is None:
        return {}
    if isinstance(body, _Upload):
        form = aiohttp.FormData()
        form.add_field(body.field, body.data, filename=body.filename, content_type=body.content_type)
        return {"data": form}
    # WeCom rejects JSON unicode escapes such as \u4e2d (errcode 40033), so the JSON must carry raw UTF-8.
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return {"data": raw, "headers": {"Content-Type": "application/json; charset=utf-8"}}
