"""A playbook file: what enrolls a contact (trigger), what stops it, and the steps at day offsets.

Files are TOML or YAML with the same structure (content/playbooks/README.md). Parsing is strict:
unknown keys, unknown stages, bad times and placeholders the message cannot fill are errors that
name the field. The definition's hash (canonical JSON) decides whether an import makes a new version.
"""

from __future__ import annotations

import hashlib
import json
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.scoring.stages import STAGES

PLAYBOOK_SUFFIXES = (".toml", ".yaml", ".yml")
PLACEHOLDERS = frozenset({"name", "company", "rep", "title", "summary", "link"})
TriggerType = Literal["contact_added", "stage", "item_read", "tag", "quiet", "dormant"]


class PlaybookError(ValueError):
    """A playbook file that cannot be used: `path: field: why`."""

    def __init__(self, path: Path | str, field: str, why: str) -> None:
        super().__init__(f"{path}: {field}: {why}")
        self.path, self.field, self.why = str(path), field, why


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Strict):
    """When a contact is enrolled. Fields other than `type` apply to the types named beside them."""

    type: TriggerType
    channel: str = ""  # contact_added: channel name; "" = any add
    stage: str = ""  # stage: the stage reached
    items: list[str] = []  # item_read: item slugs; [] = any item
    min_depth: Annotated[int, Field(ge=1, le=100)] = 75  # item_read: read depth reached, %
    tag: str = ""  # tag: a customer tag on the contact (profile.tags)
    days: Annotated[int, Field(ge=0)] = 0  # quiet: days without interaction
    within_days: Annotated[int, Field(ge=1)] = 7  # quiet: only contacts quiet less than days + within_days
    stages: list[str] = []  # quiet, tag: only contacts in these stages; [] = any but invalid

    @model_validator(mode="after")
    def _fields_for_type(self) -> "Trigger":
        if self.type == "stage" and self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}")
        if self.type == "tag" and not self.tag.strip():
            raise ValueError("tag is required for a tag trigger")
        if self.type == "quiet" and self.days < 1:
            raise ValueError("days (≥ 1) is required for a quiet trigger")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r} in stages")
        return self

    @property
    def watched_stage(self) -> str | None:
        """The stage whose reaching enrolls (stage and dormant triggers)."""
        if self.type == "dormant":
            return "dormant"
        return self.stage if self.type == "stage" else None

    def describe(self) -> str:
        """A short label stored on the enrollment (what enrolled the contact)."""
        detail = {
            "contact_added": self.channel, "stage": self.stage, "item_read": ",".join(self.items),
            "tag": self.tag, "quiet": f"{self.days}d", "dormant": "",
        }[self.type]  # fmt: skip
        return f"{self.type}:{detail}"[:64] if detail else self.type


class Stop(_Strict):
    """When a running enrollment stops early."""

    on_reply: bool = True  # the contact sent a chat message
    on_leave: bool = True  # the contact deleted the rep (or was deleted)
    on_later_stage: bool = True  # the contact moved on (see at_stage); invalid always counts
    at_stage: str = ""  # stop from this stage on; "" = any stage later than at enrollment

    @field_validator("at_stage")
    @classmethod
    def _stage(cls, value: str) -> str:
        if value and value not in STAGES:
            raise ValueError(f"must be one of {', '.join(STAGES)}")
        if value == "new":
            raise ValueError("new is where contacts start; it cannot end a playbook")
        return value


class Step(_Strict):
    """One step: a task for the owner (and optionally a message) due `day` days after enrollment."""

    day: Annotated[int, Field(ge=0, le=365)]
    at: str | None = None  # local time "HH:MM"; None = the time of day the contact was enrolled
    title: Annotated[str, Field(min_length=1, max_length=80)]
    item: str | None = None  # content slug suggested (and shared as a tracked link for the contact)
    message: str = ""  # ready text for the rep to forward; placeholders {name} {company} {rep} {title} {summary} {link}
    send: Literal["task", "app", "customer"] = "task"
    priority: Annotated[int, Field(ge=1, le=3)] = 2

    @field_validator("at")
    @classmethod
    def _at(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from bot.config import _hhmm

        return _hhmm(value)

    @field_validator("message")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"bad placeholder: {exc}") from None
        unknown = sorted(n for n in names if n not in PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: {', '.join(sorted(PLACEHOLDERS))}")
        return value


class PlaybookDef(_Strict):
    key: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
    name: Annotated[str, Field(min_length=1, max_length=60)]
    description: str = ""
    active: bool = True
    trigger: Trigger
    stop: Stop = Stop()
    steps: Annotated[list[Step], Field(min_length=1, max_length=30)]

    @model_validator(mode="after")
    def _ordered(self) -> "PlaybookDef":
        order = [(s.day, s.at or "") for s in self.steps]
        if order != sorted(order):
            raise ValueError("steps must be in order of day (and at)")
        return self


def definition_hash(definition: PlaybookDef) -> str:
    canonical = json.dumps(definition.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_definition(data: Any, path: Path | str = "<definition>") -> PlaybookDef:
    """Validate a parsed document (or a stored definition); PlaybookError names the first bad field."""
    if not isinstance(data, dict):
        raise PlaybookError(path, "file", "must be a table/mapping of playbook fields")
    try:
        return PlaybookDef.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "file"
        why = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise PlaybookError(path, where, why) from None


def parse_file(path: Path) -> PlaybookDef:
    """Read one TOML or YAML playbook file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(path, "file", f"cannot read ({type(exc).__name__})") from None
    try:
        data = tomllib.loads(raw) if path.suffix == ".toml" else yaml.safe_load(raw)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise PlaybookError(path, "file", f"not valid {path.suffix.lstrip('.').upper()} ({first})") from None
    return load_definition(data, path)


def playbook_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PLAYBOOK_SUFFIXES)
