"""Scoring settings: sensible defaults, validation naming the key, and what each rule kind matches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from bot.config import ConfigError, load_settings
from bot.event_types import EVENT_TYPES
from bot.scoring import BehaviorRule, ProfileRule, ScoredEvent, ScoringModel, ScoringSettings
from bot.scoring.rules import EVENT_TYPES as RULES_EVENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.timezone.utc)


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, environ=env or {})


def event(type_: str = "open", **kw: Any) -> ScoredEvent:
    return ScoredEvent(id=1, contact_id=1, type=type_, at=T0, **kw)


def test_empty_config_scores_with_the_builtin_model() -> None:
    scoring = load_settings(None, environ={}).scoring
    model = scoring.model_for("anywhere")
    assert model.name == scoring.default_model == "default"
    assert {r.name for r in model.profile} >= {"has_phone", "executive_title", "invalid_phone"}
    assert {r.name for r in model.behavior} >= {"open", "read_75_solution", "cta_demo", "deleted_rep"}
    assert (model.mql_at, model.sql_at, model.warm_at, model.hot_at) == (40, 0, 20, 50)
    assert (model.decay_after_days, model.decay_half_life_days, model.daily_cap) == (30, 30, 60)


def test_example_config_scoring_is_the_builtin_default() -> None:
    # The documented example and the built-in defaults must not drift apart.
    assert load_settings(ROOT / "config.example.toml", environ={}).scoring == ScoringSettings()


def test_one_list_of_event_types() -> None:
    assert RULES_EVENT_TYPES is EVENT_TYPES
    assert "unsubscribe" in EVENT_TYPES and "dwell" in EVENT_TYPES


def test_a_model_may_keep_builtin_rules_and_change_thresholds(tmp_path: Path) -> None:
    s = load(tmp_path, '[[scoring.models]]\nname = "default"\nmql_at = 50\nprofile = []\n')
    model = s.scoring.models[0]
    assert model.mql_at == 50.0
    assert model.profile == ()
    assert model.behavior == ScoringModel(name="x").behavior


def test_region_picks_the_model(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
[scoring]
default_model = "main"
[[scoring.models]]
name = "main"
[[scoring.models]]
name = "east"
regions = ["华东", "上海"]
mql_at = 60
""",
    ).scoring
    assert s.model_for("上海").name == "east"
    assert s.model_for("华东").name == "east"
    assert s.model_for("华南").name == "main"
    assert s.model_for("").name == "main"
    assert s.model_for(None).name == "main"
    assert s.model("east").mql_at == 60


BEHAVIOR = '[[scoring.models]]\nname = "default"\n[[scoring.models.behavior]]\n'
PROFILE = '[[scoring.models]]\nname = "default"\n[[scoring.models.profile]]\n'


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            BEHAVIOR + 'name = "x"\nevent = "opne"\npoints = 1\n',
            "scoring.models.0.behavior.0.event: unknown event type 'opne'; known: open, read, dwell,",
        ),
        (BEHAVIOR + 'name = "x"\nevent = "open"\npionts = 1\npoints = 1\n', "scoring.models.0.behavior.0.pionts: unknown key"),
        ("[scoring]\nmodel = 1\n", "scoring.model: unknown key"),
        ('[[scoring.models]]\nname = "default"\nmql = 3\n', "scoring.models.0.mql: unknown key"),
        (BEHAVIOR + 'name = "x"\nevent = "open"\npoints = "3"\n', "scoring.models.0.behavior.0.points"),
        (BEHAVIOR + 'name = "x"\nevent = "open"\npoints = 0.125\n', "scoring.models.0.behavior.0.points: at most 2 decimals"),
        (BEHAVIOR + 'name = "x"\nevent = "open"\npoints = 0\n', "scoring.models.0.behavior.0.points: must not be 0"),
        (
            BEHAVIOR + 'name = "x"\nevent = "contact_deleted"\npoints = -5\ncap_per_item_per_day = 1\n',
            "scoring.models.0.behavior.0.cap_per_item_per_day: negative rules are never capped",
        ),
        (
            BEHAVIOR + 'name = "x"\nevent = "unsubscribe"\npoints = -5\nmax_times = 1\n',
            "scoring.models.0.behavior.0.max_times: negative rules are never capped",
        ),
        (
            BEHAVIOR + 'name = "x"\nevent = "open"\npoints = 1\nmin_depth = 50\n',
            "scoring.models.0.behavior.0.min_depth: applies to read events only",
        ),
        (
            BEHAVIOR + 'name = "x"\nevent = "read"\npoints = 1\nmin_seconds = 50\n',
            "scoring.models.0.behavior.0.min_seconds: applies to dwell events only",
        ),
        (BEHAVIOR + 'name = "x"\nevent = "read"\npoints = 1\nmin_depth = 150\n', "scoring.models.0.behavior.0.min_depth"),
        (
            BEHAVIOR + 'name = "x"\nevent = "open"\npoints = 1\n[[scoring.models.behavior]]\nname = "x"\nevent = "read"\npoints = 1\n',
            "scoring.models.0.behavior: duplicate rule name 'x'",
        ),
        (BEHAVIOR + 'name = "decay"\nevent = "open"\npoints = 1\n', "scoring.models.0.behavior: rule name 'decay' is reserved"),
        (BEHAVIOR + 'name = "a b"\nevent = "open"\npoints = 1\n', "scoring.models.0.behavior.0.name"),
        (PROFILE + 'name = "t"\nfield = "title"\nop = "matches"\nvalue = "(["\npoints = 1\n', "scoring.models.0.profile.0.value: invalid regular expression"),
        (PROFILE + 'name = "t"\nfield = "size"\nop = "in"\nvalue = "big"\npoints = 1\n', "scoring.models.0.profile.0.value: op 'in' needs a non-empty list"),
        (PROFILE + 'name = "t"\nfield = "phone"\nop = "present"\nvalue = "x"\npoints = 1\n', "scoring.models.0.profile.0.value: not used with op 'present'"),
        (PROFILE + 'name = "t"\nfield = "phone"\nop = "equals"\npoints = 1\n', "scoring.models.0.profile.0.value: op 'equals' needs one value"),
        (PROFILE + 'name = "t"\nfield = "phone"\nop = "like"\npoints = 1\n', "scoring.models.0.profile.0.op"),
        ('[[scoring.models]]\nname = "default"\ntimezone = "Mars/Base"\n', "scoring.models.0.timezone: unknown time zone 'Mars/Base'"),
        ('[[scoring.models]]\nname = "default"\nmql_at = 5\n', "scoring.models.0.mql_at: must be at least nurturing_at (10)"),
        ('[[scoring.models]]\nname = "default"\nsql_at = 30\n', "scoring.models.0.sql_at: must be 0 (manual) or above mql_at (40)"),
        ('[[scoring.models]]\nname = "default"\nhot_at = 10\n', "scoring.models.0.hot_at: must be at least warm_at (20)"),
        ('[[scoring.models]]\nname = "default"\ndecay_half_life_days = -1\n', "scoring.models.0.decay_half_life_days"),
        ('[[scoring.models]]\nname = "main"\n', "scoring.default_model: no model named 'default' (models: main)"),
        ('[scoring]\ndefault_model = "nope"\n', "scoring.default_model: no model named 'nope'"),
        ('[[scoring.models]]\nname = "default"\n[[scoring.models]]\nname = "default"\n', "scoring.models: duplicate model name 'default'"),
        (
            '[[scoring.models]]\nname = "default"\nregions = ["上海"]\n[[scoring.models]]\nname = "b"\nregions = ["上海"]\n',
            "scoring.models: region '上海' is in models 'default' and 'b'",
        ),
        ("[scoring]\nmodels = []\n", "scoring.models"),
    ],
)
def test_bad_scoring_config_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


def test_scoring_is_file_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BEACON_SCORING_DEFAULT_MODEL: unknown setting"):
        load(tmp_path, "", {"BEACON_SCORING_DEFAULT_MODEL": "x"})


def test_unknown_event_type_rejected_by_scored_event() -> None:
    with pytest.raises(ValueError, match="unknown event type 'clik'; known: open, read"):
        event("clik")
    with pytest.raises(ValueError, match="aware"):
        ScoredEvent(id=1, contact_id=1, type="open", at=dt.datetime(2026, 1, 1))


def test_settings_are_frozen() -> None:
    s = ScoringSettings()
    with pytest.raises(Exception):
        s.models[0].mql_at = 1  # type: ignore[misc]


# --- profile rule ops -------------------------------------------------------------------------


def prule(op: str, value: Any = None, field: str = "f") -> ProfileRule:
    return ProfileRule(name="r", field=field, op=op, value=value, points=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "value", "actual", "holds"),
    [
        ("present", None, "13800000000", True),
        ("present", None, "  ", False),
        ("present", None, None, False),
        ("present", None, [], False),
        ("absent", None, "", True),
        ("absent", None, "x", False),
        ("equals", "Manufacturing", " manufacturing ", True),
        ("equals", "manufacturing", "retail", False),
        ("equals", 100.0, 100, True),
        ("equals", True, 1, False),
        ("in", ("100-499", "1000+"), "1000+", True),
        ("in", ("100-499", "1000+"), "1-49", False),
        ("in", ("finance", "energy"), ["retail", "Energy"], True),
        ("in", ("finance",), "", False),
        ("matches", "总|总监|VP|CEO", "销售总监", True),
        ("matches", "总|总监|VP|CEO", "vp of sales", True),
        ("matches", "总|总监|VP|CEO", "工程师", False),
        ("matches", "总|VP", None, False),
        ("not_matches", r"^1\d{10}$", "12345", True),
        ("not_matches", r"^1\d{10}$", "13800000000", False),
        ("not_matches", r"^1\d{10}$", "", False),
    ],
)
def test_profile_ops(op: str, value: Any, actual: Any, holds: bool) -> None:
    assert prule(op, value).holds({"f": actual}) is holds


def test_default_invalid_phone_rule() -> None:
    rule = next(r for r in ScoringModel(name="d").profile if r.name == "invalid_phone")
    assert rule.holds({"phone": "abc"})
    assert rule.holds({"phone": "12"})
    assert not rule.holds({"phone": "13800000000"})
    assert not rule.holds({"phone": "+86 138-0000-0000"})
    assert not rule.holds({})


# --- behavior rule matching -------------------------------------------------------------------


def brule(event_type: str = "open", **kw: Any) -> BehaviorRule:
    return BehaviorRule(name="r", event=event_type, points=1, **kw)


def test_behavior_matches_by_type() -> None:
    assert brule("open").matches(event("open"))
    assert not brule("open").matches(event("read"))


def test_behavior_matches_item_kind_stage_and_tags() -> None:
    rule = brule(item_kind=["solution", "case_study"], item_stage="decision", item_tag=["erp"])
    good = event(item_kind="case_study", item_stage="decision", item_tags=("mes", "erp"))
    assert rule.matches(good)
    assert not rule.matches(event(item_kind="whitepaper", item_stage="decision", item_tags=("erp",)))
    assert not rule.matches(event(item_kind="solution", item_stage="awareness", item_tags=("erp",)))
    assert not rule.matches(event(item_kind="solution", item_stage="decision", item_tags=("mes",)))
    assert not rule.matches(event())  # no item at all
    assert brule(item_kind="solution").item_kind == ("solution",)  # a single name is a list of one


def test_behavior_matches_props() -> None:
    rule = brule("cta", props={"cta": "demo"})
    assert rule.matches(event("cta", props={"cta": "demo", "x": 1}))
    assert rule.matches(event("cta", props={"cta": "Demo"}))
    assert not rule.matches(event("cta", props={"cta": "contact"}))
    assert not rule.matches(event("cta"))


def test_behavior_min_depth_and_seconds() -> None:
    read75 = brule("read", min_depth=75)
    assert read75.matches(event("read", props={"depth": 75}))
    assert read75.matches(event("read", props={"depth": 100.0}))
    assert not read75.matches(event("read", props={"depth": 50}))
    assert not read75.matches(event("read", props={"depth": "100"}))
    assert not read75.matches(event("read"))
    dwell = brule("dwell", min_seconds=60)
    assert dwell.matches(event("dwell", props={"seconds": 61}))
    assert not dwell.matches(event("dwell", props={"seconds": 59.5}))


def test_reasons_are_chinese_and_name_the_item() -> None:
    rule = brule("read", min_depth=75)
    assert rule.describe(event("read", item_title="制造业白皮书", props={"depth": 75})) == "阅读《制造业白皮书》至75%"
    assert brule("cta").describe(event("cta", props={"cta": "demo"})) == "点击「预约演示」"
    assert brule("dwell").describe(event("dwell", props={"seconds": 90})) == "浏览90秒"
    assert brule("open", label="打开方案").describe(event(item_title="方案")) == "打开方案《方案》"
    assert prule("present", field="phone").describe() == "电话已填写"
    assert prule("in", ("制造", "能源"), field="industry").describe() == "行业属于制造/能源"
