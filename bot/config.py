"""Settings: parsed once from TOML (+ `BEACON_<SECTION>_<KEY>` env overrides) into frozen models.

Where the file comes from: `--config PATH`, else `$BEACON_CONFIG`, else `./config.toml` if present,
else built-in defaults. Unknown keys and wrong types are errors (`ConfigError`, exit 2 at the CLI),
never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.scoring.rules import ScoringSettings

ENV_PREFIX = "BEACON_"


class ConfigError(Exception):
    """A configuration problem; the message names the key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: str = "http://127.0.0.1:8080"
    admin_token: str = ""
    secret_key: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    stop_grace_s: Annotated[float, Field(ge=0, le=300)] = 5.0

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class DatabaseSettings(_Section):
    """The store. The pool keys size each process's connection pool (PostgreSQL, or a SQLite file, where
    writers still take turns): each process keeps up to `pool_size` connections open, opens up to
    `max_overflow` more under load, and a unit of work waits at most `pool_timeout` seconds for a free connection before failing."""

    url: str = "sqlite+aiosqlite:///beacon.db"
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 5
    max_overflow: Annotated[int, Field(ge=0, le=1000)] = 10
    pool_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    busy_timeout_ms: Annotated[int, Field(ge=0, le=600_000)] = 10_000
    # SQLite: how often a serving process checkpoints the WAL in the background (bot/db.py
    # WalCheckpointer); 0 leaves it to SQLite, inside whichever writer's COMMIT crosses 1,000 pages.
    checkpoint_interval_s: Annotated[float, Field(ge=0, le=3600)] = 0.25
    # Log each statement that took longer (a warning on beacon.db.slow, its SQL without the values); 0 = off.
    slow_statement_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 1000
    # PostgreSQL: a process that stores work for a worker running in another process wakes it with
    # NOTIFY (bot/notify.py); off, that worker finds it at its next poll.
    notify: bool = True

    @field_validator("url")
    @classmethod
    def _driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must be sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return value


class WeComSettings(_Section):
    corp_id: str = ""
    agent_id: int = 0
    secret: str = ""
    token: str = ""
    encoding_aes_key: str = ""
    api_base: str = "https://qyapi.weixin.qq.com"
    kf_open_kfid: str = ""
    replay_window_s: Annotated[int, Field(ge=0)] = 600
    timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_key(cls, value: str) -> str:
        if value == "":
            return value
        if len(value) != 43:
            raise ValueError(f"must be 43 characters (got {len(value)})")
        try:
            if len(base64.b64decode(value + "=", validate=True)) != 32:
                raise ValueError("must decode to 32 bytes")
        except binascii.Error as exc:
            raise ValueError("must be base64 (A-Z, a-z, 0-9, +, /)") from exc
        return value

    @field_validator("api_base")
    @classmethod
    def _base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def configured(self) -> bool:
        return bool(self.corp_id and self.token and self.encoding_aes_key)


class SchedulerSettings(_Section):
    timezone: str = "Asia/Shanghai"
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class InboxSettings(_Section):
    workers: Annotated[int, Field(ge=0, le=32)] = 1
    max_attempts: Annotated[int, Field(ge=1)] = 5
    retry_base_s: Annotated[float, Field(gt=0)] = 2.0
    retry_max_s: Annotated[float, Field(gt=0)] = 600.0
    lease_s: Annotated[float, Field(gt=0)] = 60.0
    outbox_lease_s: Annotated[float, Field(gt=0)] = 60.0
    poll_s: Annotated[float, Field(gt=0)] = 1.0
    keep_days: Annotated[int, Field(ge=1)] = 14
    # Sent outbox rows: what still reads them looks back 48 hours at most (bot/outbox.py purge_finished).
    outbox_keep_days: Annotated[int, Field(ge=3)] = 30


class TrackerSettings(_Section):
    # false: this process never runs the tracker (never takes its lease); it stores events for the
    # process that does, and wakes it ([database] notify). For processes that should only answer.
    enabled: bool = True
    # How often an idle tracker looks for unprocessed events. Events stored by this process wake it at
    # once, and on PostgreSQL those stored by other processes too ([database] notify).
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 1.0


class SecuritySettings(_Section):
    public_per_ip_per_minute: Annotated[int, Field(ge=0)] = 600
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]


class LinkSettings(_Section):
    reload_window_s: Annotated[int, Field(ge=0)] = 1800
    beacons_per_minute: Annotated[int, Field(ge=1)] = 60
    cookie_days: Annotated[int, Field(ge=1)] = 365
    share_cache_s: Annotated[float, Field(ge=0)] = 60.0
    oauth: bool = False
    oauth_authorize_url: str = "https://open.weixin.qq.com/connect/oauth2/authorize"


class KfSettings(_Section):
    """WeChat Customer Service (微信客服) menus; empty texts mean the built-in text for `lang`."""

    lang: Literal["zh", "en"] = "zh"
    keywords: list[str] = ["资料", "白皮书", "案例", "方案", "报告", "目录", "菜单"]
    handover_words: list[str] = ["人工", "转人工", "人工客服"]
    menu_by: list[Literal["kind", "industry", "stage"]] = ["kind"]
    greeting: str = ""
    menu_head: str = ""
    menu_tail: str = ""
    page_size: Annotated[int, Field(ge=1, le=1000)] = 1000


class LifecycleSettings(_Section):
    dormant_after_days: Annotated[int, Field(ge=1)] = 548
    mirror_tags: bool = True
    tag_group: Annotated[str, Field(min_length=1, max_length=30)] = "Beacon线索"
    webhook_urls: list[str] = []
    webhook_secret: str = ""

    @field_validator("webhook_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} must start with http:// or https://")
        return value


_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _clock_time(value: str) -> str:
    if value and not _HHMM.match(value):
        raise ValueError(f"must be HH:MM (24 h) or empty, got {value!r}")
    return value


class AlertSettings(_Section):
    """Follow-up alerts to reps (bot/alerts.py): throttling, quiet hours, daily cap, SLA escalation."""

    delay_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    merge_window_s: Annotated[float, Field(ge=0, le=86400)] = 1800.0
    daily_cap: Annotated[int, Field(ge=0)] = 20
    quiet_start: str = "21:00"
    quiet_end: str = "08:00"
    per_minute_limit: Annotated[int, Field(ge=1, le=20)] = 10
    sla_hours: Annotated[float, Field(gt=0)] = 4.0
    language: Literal["zh", "en"] = "zh"

    @field_validator("quiet_start", "quiet_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        return _clock_time(value)


MENU_KEYS = ("tasks", "hot", "find", "help")  # click EventKeys handled in handlers/commands.py


def _menu_key(value: str) -> str:
    if value not in MENU_KEYS:
        raise ValueError(f"must be one of {', '.join(MENU_KEYS)} (got {value!r})")
    return value


class MenuItem(_Section):
    name: Annotated[str, Field(min_length=1, max_length=16)]
    key: str

    @field_validator("key")
    @classmethod
    def _known(cls, value: str) -> str:
        return _menu_key(value)


class MenuButton(_Section):
    name: Annotated[str, Field(min_length=1, max_length=16)]
    key: str = ""
    sub_buttons: Annotated[list[MenuItem], Field(max_length=5)] = []

    @model_validator(mode="after")
    def _key_or_subs(self) -> "MenuButton":
        if bool(self.key) == bool(self.sub_buttons):
            raise ValueError(f"menu button {self.name!r} needs either a key or sub_buttons")
        if self.key:
            _menu_key(self.key)
        return self


class MenuSettings(_Section):
    """The self-built app's custom menu (`python -m bot menu sync`); keys are click EventKeys."""

    buttons: Annotated[list[MenuButton], Field(min_length=1, max_length=3)] = [
        MenuButton(name="我的任务", key="tasks"),
        MenuButton(name="热线索", key="hot"),
        MenuButton(name="更多", sub_buttons=[MenuItem(name="找资料", key="find"), MenuItem(name="帮助", key="help")]),
    ]


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TeamMember(_Section):
    userid: str
    name: str = ""
    role: Literal["rep", "manager", "admin"] = "rep"
    manager: str = ""
    region: str = ""
    quiet_start: str | None = None  # this rep's quiet hours; None = [alerts] quiet_start/quiet_end
    quiet_end: str | None = None

    @field_validator("quiet_start", "quiet_end")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        return value if value is None else _clock_time(value)

    @model_validator(mode="after")
    def _both_or_neither(self) -> "TeamMember":
        if (self.quiet_start is None) != (self.quiet_end is None):
            raise ValueError(f"member {self.userid!r}: set both quiet_start and quiet_end, or neither")
        return self


class TeamSettings(_Section):
    members: list[TeamMember] = []

    @model_validator(mode="after")
    def _unique(self) -> "TeamSettings":
        seen: set[str] = set()
        for member in self.members:
            if member.userid in seen:
                raise ValueError(f"duplicate userid {member.userid!r}")
            seen.add(member.userid)
        return self


def _hhmm(value: str) -> str:
    """A local wall-clock time "HH:MM" (00:00-23:59)."""
    hours, _, minutes = value.partition(":")
    if not (len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"must be a time HH:MM (got {value!r})")
    return value


class SopSettings(_Section):
    """SOP playbooks: where they come from and the business calendar their steps keep to."""

    folder: str = ""
    workdays: Annotated[list[Annotated[int, Field(ge=1, le=7)]], Field(min_length=1)] = [1, 2, 3, 4, 5]
    holidays: list[str] = []
    extra_workdays: list[str] = []
    day_start: str = "09:00"
    day_end: str = "20:00"
    quiet_check_at: str = "07:00"
    stage_lookback_hours: Annotated[int, Field(ge=1)] = 24
    batch: Annotated[int, Field(ge=1)] = 500

    @field_validator("day_start", "day_end", "quiet_check_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return _hhmm(value)

    @field_validator("holidays", "extra_workdays")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        import datetime as _dt

        for day in value:
            try:
                _dt.date.fromisoformat(day)
            except ValueError:
                raise ValueError(f"{day!r} is not a date YYYY-MM-DD") from None
        return value

    @model_validator(mode="after")
    def _day(self) -> "SopSettings":
        if self.day_start >= self.day_end:
            raise ValueError("day_start must be before day_end")
        return self


class DigestSettings(_Section):
    """The reps' morning to-do list and the managers' daily digest."""

    reps_at: str = "08:30"
    managers_at: str = "09:00"
    max_tasks: Annotated[int, Field(ge=1, le=50)] = 10
    top_items: Annotated[int, Field(ge=1, le=10)] = 3
    chart: bool = True
    workdays_only: bool = False

    @field_validator("reps_at", "managers_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return _hhmm(value)


class PagesSettings(_Section):
    """Web pages for members: the chat-toolbar sidebar, the dashboard and the admin pages."""

    simulator_mode: bool = False
    jssdk_url: str = "https://res.wx.qq.com/open/js/jweixin-1.2.0.js"
    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0
    default_days: Annotated[int, Field(ge=1, le=731)] = 30
    # Dashboard reports are counted once per this many seconds per page, scope and date range (bot/report_cache.py); 0 = every request.
    report_cache_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # Past report_cache_s, for this many seconds more, a report is shown as counted and counted again in the
    # background (the page says so); older ones are counted while the request waits. 0 = always wait.
    report_stale_s: Annotated[float, Field(ge=0, le=86400)] = 3600.0
    upload_max_bytes: Annotated[int, Field(ge=1024)] = 25 * 1024 * 1024
    login_attempts_per_minute: Annotated[int, Field(ge=1)] = 10

    @field_validator("jssdk_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must start with https:// (its origin is added to the sidebar's CSP)")
        return value


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    wecom: WeComSettings = WeComSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    inbox: InboxSettings = InboxSettings()
    tracker: TrackerSettings = TrackerSettings()
    links: LinkSettings = LinkSettings()
    security: SecuritySettings = SecuritySettings()
    kf: KfSettings = KfSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    logging: LoggingSettings = LoggingSettings()
    alerts: AlertSettings = AlertSettings()
    menu: MenuSettings = MenuSettings()
    team: TeamSettings = TeamSettings()
    scoring: ScoringSettings = ScoringSettings()
    sop: SopSettings = SopSettings()
    digest: DigestSettings = DigestSettings()
    pages: PagesSettings = PagesSettings()

    def replace(self, **sections: Mapping[str, Any]) -> "Settings":
        """A copy with some keys changed, validated like a file (`replace(wecom={"token": "x"})`)."""
        data = self.model_dump()
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return _validate(data)


def _scalar_sections() -> dict[str, type[_Section]]:
    return {
        name: field.annotation
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
    }


def _env_value(raw: str, annotation: Any) -> Any:
    if annotation is str:
        return raw
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        return raw  # leave it to validation to name the key
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _base_type(annotation: Any) -> Any:
    """Strip Annotated[...]; Literal[...] of strings counts as str."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return str
    return annotation


def _overlay_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    known: set[str] = {"BEACON_CONFIG"}
    for section, model in _scalar_sections().items():
        for key, field in model.model_fields.items():
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            base = _base_type(field.annotation)
            if base not in (str, int, float, bool):
                continue  # tables and lists are file-only
            known.add(name)
            if name in environ:
                data.setdefault(section, {})[key] = _env_value(environ[name], base)
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (environment)")


def _validate(data: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "config"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(f"{where}: {message}") from None


def config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """Which file to read, by the documented precedence; None means built-in defaults."""
    if cli_path:
        return Path(cli_path)
    if environ.get("BEACON_CONFIG"):
        return Path(environ["BEACON_CONFIG"])
    default = Path("config.toml")
    return default if default.exists() else None


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay the environment, validate. Raises ConfigError naming the offending key."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    _overlay_env(data, environ)
    return _validate(data)
