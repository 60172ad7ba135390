"""Scoring settings (`[scoring]`): models of profile and behavior rules, thresholds, caps and decay.

Validated like every other section: frozen, unknown keys rejected, strict types, errors naming the
key (`scoring.models.0.behavior.2.event: unknown event type 'opne'; known: open, read, ...`).
Matching lives here too, as pure methods on the rules, so a rule reads in one place.

Several models sit side by side; a contact's region picks one (`ScoringSettings.model_for`), any
region no model lists falls back to `default_model`. Leaving `profile` or `behavior` out of a model
gives it the built-in rules below; `profile = []` gives it none.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from bot.event_types import EVENT_TYPES, check_event_type

if TYPE_CHECKING:
    from bot.scoring.engine import ScoredEvent

MAX_PROFILE_RULES = 32  # the engine keeps "which profile rules hold" as a 32-bit mask
MAX_MODELS = 255  # ScoreBook stores the model index in one byte
DECAY_RULE = "decay"  # the rule name on decay ledger entries; reserved


class _Strict(BaseModel):
    # Same policy as bot.config._Section, restated here so bot.config can import us without a cycle.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _as_tuple(value: Any) -> Any:
    # TOML gives lists; a single name may be written as a plain string.
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _two_decimals(value: float) -> float:
    if value == 0:
        raise ValueError("must not be 0")
    if abs(value * 100 - round(value * 100)) > 1e-6:
        raise ValueError("at most 2 decimals")
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Points = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_two_decimals)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return bool(value)
    return True


def _norm(value: Any) -> Any:
    """Compare text case- and space-insensitively, numbers by value, booleans only with booleans."""
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# Words for the reasons reps read on the contact page (Chinese, like everything reps see).
_VERBS = {
    "open": "打开",
    "read": "阅读",
    "dwell": "浏览",
    "download": "下载",
    "cta": "点击",
    "form_submit": "提交表单",
    "forward": "转发",
    "menu_click": "点击菜单",
    "message": "发来消息",
    "contact_added": "添加为企业微信好友",
    "contact_deleted": "删除企业微信好友",
    "demo_request": "预约演示",
    "webinar_attended": "参加直播活动",
    "call": "通话",
    "payment": "付款",
    "unsubscribe": "退订",
}
_CTAS = {"demo": "预约演示", "contact": "联系销售"}
_FIELDS = {
    "phone": "电话",
    "email": "邮箱",
    "title": "职位",
    "company": "公司",
    "company_size": "公司规模",
    "industry": "行业",
    "region": "地区",
    "persona": "角色",
    "name": "姓名",
}


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


ProfileOp = Literal["present", "absent", "equals", "in", "matches", "not_matches"]


class ProfileRule(_Strict):
    """A condition on one profile field; holds → `points` (negative points penalise)."""

    name: Name
    field: Annotated[str, Field(min_length=1)]
    op: ProfileOp = "present"
    value: Annotated[
        str | float | bool | tuple[str | float, ...] | None,
        BeforeValidator(_list_as_tuple),
        Field(validate_default=True),
    ] = None
    points: Points
    label: str = ""

    @field_validator("value")
    @classmethod
    def _value_fits_op(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op in ("present", "absent"):
            if value is not None:
                raise ValueError(f"not used with op {op!r}")
        elif op == "in":
            if not isinstance(value, tuple) or not value:
                raise ValueError("op 'in' needs a non-empty list")
        elif op == "equals":
            if value is None or isinstance(value, tuple):
                raise ValueError("op 'equals' needs one value")
        elif op in ("matches", "not_matches"):
            if not isinstance(value, str):
                raise ValueError(f"op {op!r} needs a regular expression string")
            try:
                _regex(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression ({exc})") from None
        return value

    def holds(self, profile: Mapping[str, Any]) -> bool:
        """Whether this rule applies to the profile (regex and text comparisons ignore case)."""
        actual = profile.get(self.field)
        if self.op == "absent":
            return not _present(actual)
        if not _present(actual):
            return False
        if self.op == "present":
            return True
        if self.op == "equals":
            return _norm(actual) == _norm(self.value)
        if self.op == "in":
            wanted = {_norm(v) for v in self.value}  # type: ignore[union-attr]
            if isinstance(actual, (list, tuple, set, frozenset)):
                return any(_norm(v) in wanted for v in actual)
            return _norm(actual) in wanted
        found = _regex(str(self.value)).search(str(actual)) is not None
        return found if self.op == "matches" else not found

    def describe(self) -> str:
        """What holding this rule means, for reps: the label, else one made from field and op."""
        if self.label:
            return self.label
        name = _FIELDS.get(self.field, self.field)
        if self.op == "present":
            return f"{name}已填写"
        if self.op == "absent":
            return f"{name}未填写"
        if self.op == "in":
            return f"{name}属于{'/'.join(_text(v) for v in self.value)}"  # type: ignore[union-attr]
        if self.op == "equals":
            return f"{name}为{_text(self.value)}"
        return f"{name}{'不' if self.op == 'not_matches' else ''}符合规则「{self.name}」"


PropValue = str | float | bool


class BehaviorRule(_Strict):
    """Points for events of one type, narrowed by item and properties; every matching rule applies.

    `min_depth` (read events, `props.depth`) and `min_seconds` (dwell events, `props.seconds`): 0 = any.
    Caps (0 = none) are for positive rules only: `cap_per_item_per_day` times per item per local day
    (events without an item count as one item), `max_times` times per contact ever.
    """

    name: Name
    event: str
    points: Points
    item_kind: Names = ()
    item_stage: Names = ()
    item_tag: Names = ()
    props: dict[str, PropValue] = {}
    min_depth: Annotated[float, Field(ge=0, le=100)] = 0
    min_seconds: NonNegative = 0
    cap_per_item_per_day: Count = 0
    max_times: Count = 0
    label: str = ""

    @field_validator("event")
    @classmethod
    def _known_event(cls, value: str) -> str:
        return check_event_type(value)

    @field_validator("min_depth")
    @classmethod
    def _depth_on_reads(cls, value: float, info: ValidationInfo) -> float:
        if value and info.data.get("event") not in (None, "read"):
            raise ValueError("applies to read events only")
        return value

    @field_validator("min_seconds")
    @classmethod
    def _seconds_on_dwell(cls, value: float, info: ValidationInfo) -> float:
        if value and info.data.get("event") not in (None, "dwell"):
            raise ValueError("applies to dwell events only")
        return value

    @field_validator("cap_per_item_per_day", "max_times")
    @classmethod
    def _caps_on_positive(cls, value: int, info: ValidationInfo) -> int:
        points = info.data.get("points")
        if value and points is not None and points < 0:
            raise ValueError("negative rules are never capped; remove the cap")
        return value

    def matches(self, event: ScoredEvent) -> bool:
        """Whether this rule applies to the event (type, item kind/stage/tags, props, depth, seconds)."""
        if event.type != self.event:
            return False
        if self.item_kind and event.item_kind not in self.item_kind:
            return False
        if self.item_stage and event.item_stage not in self.item_stage:
            return False
        if self.item_tag and not any(tag in self.item_tag for tag in event.item_tags):
            return False
        for key, wanted in self.props.items():
            if key not in event.props or _norm(event.props[key]) != _norm(wanted):
                return False
        if self.min_depth:
            depth = _number(event.props.get("depth"))
            if depth is None or depth < self.min_depth:
                return False
        if self.min_seconds:
            seconds = _number(event.props.get("seconds"))
            if seconds is None or seconds < self.min_seconds:
                return False
        return True

    def describe(self, event: ScoredEvent) -> str:
        """What the contact did, for reps: 阅读《标题》至75%, 点击「预约演示」, or the rule's label."""
        text = self.label or _VERBS[event.type]
        if event.item_title:
            text += f"《{event.item_title}》"
        if event.type == "read" and "depth" in event.props:
            text += f"至{_text(event.props['depth'])}%"
        elif event.type == "dwell" and "seconds" in event.props:
            text += f"{_text(event.props['seconds'])}秒"
        elif event.type == "cta" and not self.label and "cta" in event.props:
            text += f"「{_CTAS.get(str(event.props['cta']), _text(event.props['cta']))}」"
        return text


def _p(name: str, field: str, op: ProfileOp, points: float, label: str, value: Any = None) -> ProfileRule:
    return ProfileRule(name=name, field=field, op=op, value=value, points=points, label=label)


def _b(name: str, event: str, points: float, **more: Any) -> BehaviorRule:
    return BehaviorRule(name=name, event=event, points=points, **more)


DEFAULT_PROFILE_RULES: tuple[ProfileRule, ...] = (
    _p("has_phone", "phone", "present", 10, "电话已填写"),
    _p("invalid_phone", "phone", "not_matches", -10, "电话号码无效", r"^\+?[0-9][0-9 -]{5,18}[0-9]$"),
    _p("has_email", "email", "present", 5, "邮箱已填写"),
    _p("executive_title", "title", "matches", 10, "职位为决策层", "总|总监|VP|CEO|CFO|CTO|COO|董事|经理|负责人"),
    _p("company_100_plus", "company_size", "in", 10, "公司规模100人以上", ("100-499", "500-999", "1000+")),
)

DEFAULT_BEHAVIOR_RULES: tuple[BehaviorRule, ...] = (
    _b("open", "open", 3, cap_per_item_per_day=1),
    _b("open_decision_item", "open", 5, item_stage="decision", cap_per_item_per_day=1),
    _b("read_50", "read", 5, min_depth=50, cap_per_item_per_day=1),
    _b("read_75_solution", "read", 12, min_depth=75, item_kind=("solution", "case_study"), cap_per_item_per_day=1),
    _b("dwell_60s", "dwell", 3, min_seconds=60, cap_per_item_per_day=1),
    _b("download", "download", 8, cap_per_item_per_day=1),
    _b("cta_demo", "cta", 30, props={"cta": "demo"}, cap_per_item_per_day=1),
    _b("cta_contact", "cta", 20, props={"cta": "contact"}, cap_per_item_per_day=1),
    _b("form_submit", "form_submit", 15, cap_per_item_per_day=1),
    _b("forward", "forward", 10, cap_per_item_per_day=3),
    _b("menu_click", "menu_click", 2, cap_per_item_per_day=1),
    _b("message", "message", 2, cap_per_item_per_day=3),
    _b("contact_added", "contact_added", 5, max_times=1),
    _b("demo_request", "demo_request", 30, cap_per_item_per_day=1),
    _b("webinar_attended", "webinar_attended", 20, cap_per_item_per_day=1),
    _b("call", "call", 10, cap_per_item_per_day=1),
    _b("deleted_rep", "contact_deleted", -30),
    _b("unsubscribed", "unsubscribe", -20),
)


def _valid_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


class ScoringModel(_Strict):
    """One scoring model: rules, stage and temperature thresholds, decay and the daily cap."""

    name: Name
    regions: Names = ()
    nurturing_at: NonNegative = 10
    mql_at: NonNegative = 40
    sql_at: NonNegative = 0  # 0: SQL is a rep's call, never set by score
    warm_at: NonNegative = 20
    hot_at: NonNegative = 50
    decay_after_days: Count = 30
    decay_half_life_days: NonNegative = 30
    daily_cap: NonNegative = 60
    timezone: Annotated[str, AfterValidator(_valid_timezone)] = "Asia/Shanghai"
    profile: Annotated[
        tuple[ProfileRule, ...], BeforeValidator(_list_as_tuple), Field(max_length=MAX_PROFILE_RULES)
    ] = DEFAULT_PROFILE_RULES
    behavior: Annotated[tuple[BehaviorRule, ...], BeforeValidator(_list_as_tuple)] = DEFAULT_BEHAVIOR_RULES

    @field_validator("mql_at")
    @classmethod
    def _mql_after_nurturing(cls, value: float, info: ValidationInfo) -> float:
        if "nurturing_at" in info.data and value < info.data["nurturing_at"]:
            raise ValueError(f"must be at least nurturing_at ({info.data['nurturing_at']:g})")
        return value

    @field_validator("sql_at")
    @classmethod
    def _sql_after_mql(cls, value: float, info: ValidationInfo) -> float:
        if value and "mql_at" in info.data and value <= info.data["mql_at"]:
            raise ValueError(f"must be 0 (manual) or above mql_at ({info.data['mql_at']:g})")
        return value

    @field_validator("hot_at")
    @classmethod
    def _hot_after_warm(cls, value: float, info: ValidationInfo) -> float:
        if "warm_at" in info.data and value < info.data["warm_at"]:
            raise ValueError(f"must be at least warm_at ({info.data['warm_at']:g})")
        return value

    @field_validator("behavior")
    @classmethod
    def _unique_rule_names(cls, value: tuple[BehaviorRule, ...], info: ValidationInfo) -> tuple[BehaviorRule, ...]:
        seen = {rule.name for rule in info.data.get("profile", ())}
        if len(seen) < len(info.data.get("profile", ())):
            raise ValueError("profile rule names must be unique")
        for rule in value:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r} (profile and behavior names share one space)")
            seen.add(rule.name)
        if DECAY_RULE in seen:
            raise ValueError(f"rule name {DECAY_RULE!r} is reserved for decay entries")
        return value


class ScoringSettings(_Strict):
    """The `[scoring]` section: the models and which one scores contacts of unlisted regions."""

    models: Annotated[
        tuple[ScoringModel, ...], BeforeValidator(_list_as_tuple), Field(min_length=1, max_length=MAX_MODELS)
    ] = (ScoringModel(name="default"),)
    default_model: Annotated[str, Field(validate_default=True)] = "default"

    @field_validator("models")
    @classmethod
    def _unique(cls, value: tuple[ScoringModel, ...]) -> tuple[ScoringModel, ...]:
        names: set[str] = set()
        regions: dict[str, str] = {}
        for model in value:
            if model.name in names:
                raise ValueError(f"duplicate model name {model.name!r}")
            names.add(model.name)
            for region in model.regions:
                if region in regions:
                    raise ValueError(f"region {region!r} is in models {regions[region]!r} and {model.name!r}")
                regions[region] = model.name
        return value

    @field_validator("default_model")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        models = info.data.get("models")
        if models is not None and value not in {m.name for m in models}:
            raise ValueError(f"no model named {value!r} (models: {', '.join(m.name for m in models)})")
        return value

    def model_for(self, region: str | None) -> ScoringModel:
        """The model that lists `region`, else the default model."""
        for model in self.models:
            if region and region in model.regions:
                return model
        return self.model(self.default_model)

    def model(self, name: str) -> ScoringModel:
        """The model called `name` (KeyError if there is none)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


__all__ = [
    "EVENT_TYPES",
    "BehaviorRule",
    "DEFAULT_BEHAVIOR_RULES",
    "DEFAULT_PROFILE_RULES",
    "ProfileRule",
    "ScoringModel",
    "ScoringSettings",
]
