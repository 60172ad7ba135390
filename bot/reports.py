"""Dashboard numbers: the funnel by stage, by channel and by content item, for a date range and a
viewer's scope, plus the date range and scope themselves (the leaderboards are in bot.leaderboards).

Everything is counted by the database (GROUP BY over Core rows, see PERFORMANCE.md); no contact is
ever loaded as an ORM object here. Definitions:
- **Funnel (cohort)**: contacts first seen in the range; a contact has *reached* a stage when its
  current stage or any stage it ever moved to is that far along new → nurturing → mql → sql →
  customer (`Contact.reach`). Invalid and dormant contacts count as far as they got.
- **By content item**: contacts who opened the item in the range, and how far they have got.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, String, case, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import InvalidInput
from bot.lifecycle import STAGE_LABELS
from bot.models import COUNTED_BY_ITEM, Channel, Contact, ContentItem, Event
from bot.scoring.stages import JOURNEY
from bot.tables import Column, Table, bar_chart, ratio

MQL, SQL, CUSTOMER = (JOURNEY.index(stage) for stage in ("mql", "sql", "customer"))
MAX_RANGE_DAYS = 731
NO_CHANNEL = "（无渠道）"


@dataclass(frozen=True)
class DateRange:
    """Local calendar days `first`..`last` (inclusive) as UTC instants [start, end)."""

    first: dt.date
    last: dt.date
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def of_days(cls, first: dt.date, last: dt.date, tz: ZoneInfo) -> DateRange:
        start = dt.datetime.combine(first, dt.time(), tz).astimezone(dt.UTC)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.UTC)
        return cls(first, last, start, end)


def parse_range(raw_from: str | None, raw_to: str | None, *, today: dt.date, tz: ZoneInfo, default_days: int) -> DateRange:
    """`?from=&to=` (YYYY-MM-DD, local days, both inclusive); missing ends default to the last
    `default_days` days up to today. Raises InvalidInput naming the parameter."""

    def day(name: str, raw: str | None) -> dt.date | None:
        if raw is None or raw.strip() == "":
            return None
        try:
            return dt.date.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidInput(name, f"日期格式应为 YYYY-MM-DD（收到 {raw[:40]!r}）") from None

    last = day("to", raw_to) or today
    first = day("from", raw_from) or last - dt.timedelta(days=default_days - 1)
    if first > last:
        raise InvalidInput("from", f"开始日期 {first} 晚于结束日期 {last}")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise InvalidInput("from", f"日期范围最长 {MAX_RANGE_DAYS} 天")
    return DateRange.of_days(first, last, tz)


@dataclass(frozen=True)
class Scope:
    """Whose data a viewer sees: the owners/reps in `team`, or everything when `team` is None."""

    team: frozenset[str] | None

    def on(self, column: Any) -> list[ColumnElement[bool]]:
        return [] if self.team is None else [column.in_(sorted(self.team))]


def inline_int(n: int) -> Any:
    # Inlined, not bound: asyncpg cannot infer the type of a bare parameter inside CASE.
    return literal_column(str(n), Integer)


def journey_rank(column: Any) -> Any:
    return case(*((column == stage, inline_int(i)) for i, stage in enumerate(JOURNEY)), else_=inline_int(-1))


def count_if(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, inline_int(1)), else_=inline_int(0))), inline_int(0))


def unindexed(column: Any, use_index: bool = False) -> Any:
    """`column` as an expression no index serves (`|| ''` for text, `+ 0` for numbers; the same values),
    unless `use_index`. SQLite has no planner statistics: given an equality on a column with an index
    and an IN list on another, it drives by the equality even when the IN list picks far fewer rows."""
    if use_index:
        return column
    return column.concat(literal_column("''")) if isinstance(column.type, String) else column + 0


def within(column: Any, rng: DateRange) -> list[ColumnElement[bool]]:
    return [column >= rng.start, column < rng.end]


_LIVE = (Contact.merged_into_id.is_(None), Contact.erased_at.is_(None))


def _reach(where: list[ColumnElement[bool]], *, per: Any = None) -> Any:
    """Subquery (contact_id, channel_id, reach): how far each matching contact has got (`Contact.reach`).

    With `per`, a subquery of (item_id, contact_id) rows: (item_id, contact_id, channel_id, reach) for
    each of its rows whose contact matches, the contacts reached from it by primary key. (Joining
    `per` to the plain result instead joined two subqueries, which SQLite did with a nested loop
    over both: at a million contacts the content funnel of 30 days, 500k (item, contact) rows, ran
    for more than ten minutes.)"""
    source: Any = Contact.__table__
    keys: list[Any] = []
    if per is not None:
        source = per.join(Contact, Contact.id == per.c.contact_id)
        keys = [per.c.item_id]
    columns = (*keys, Contact.id.label("contact_id"), Contact.channel_id.label("channel_id"), Contact.reach.label("reach"))
    return select(*columns).select_from(source).where(*_LIVE, *where).subquery()


async def stage_funnel(session: AsyncSession, rng: DateRange, scope: Scope) -> Table:
    """How far the contacts first seen in the range have got, stage by stage, with conversion rates."""
    cohort = [*within(Contact.created_at, rng), *scope.on(Contact.owner_userid)]
    by_rank: dict[int, int] = {}
    now_at: dict[str, int] = {}
    # One pass over the cohort: how far each got, and where each is now.
    for stage, reach, n in await session.execute(
        select(Contact.stage, Contact.reach, func.count()).where(*_LIVE, *cohort).group_by(Contact.stage, Contact.reach)
    ):
        by_rank[reach] = by_rank.get(reach, 0) + n
        now_at[stage] = now_at.get(stage, 0) + n
    total = sum(by_rank.values())
    reached = [total] + [sum(n for r, n in by_rank.items() if r >= i) for i in range(1, len(JOURNEY))]
    rows: list[dict[str, Any]] = [
        {"stage": stage, "label": STAGE_LABELS[stage], "reached": reached[i], "now": now_at.get(stage, 0),
         "from_previous": ratio(reached[i], reached[i - 1]) if i else None, "from_start": ratio(reached[i], total)}
        for i, stage in enumerate(JOURNEY)
    ]  # fmt: skip
    side = "，".join(f"{STAGE_LABELS[s]} {now_at[s]}" for s in ("invalid", "dormant") if now_at.get(s))
    columns = [Column("label", "阶段"), Column("stage", "代码"), Column("reached", "到达人数", "int"), Column("now", "当前在此阶段", "int"),
               Column("from_previous", "较上一阶段转化", "pct"), Column("from_start", "较新线索转化", "pct")]  # fmt: skip
    chart = bar_chart([r["label"] for r in rows], {"到达人数": reached}, horizontal=True)
    note = f"统计 {rng.first} 至 {rng.last} 新增的 {total} 位客户" + (f"；当前{side}" if side else "")
    return Table("stages", "阶段漏斗", columns, rows, note=note, chart=chart)


def _funnel_columns(first: Column) -> list[Column]:
    return [first, Column("contacts", "客户数", "int"), Column("nurturing", "≥可培养", "int"), Column("mql", "≥MQL", "int"),
            Column("sql", "≥有意向", "int"), Column("customer", "已合作", "int"), Column("mql_rate", "MQL 转化率", "pct"),
            Column("customer_rate", "成交转化率", "pct")]  # fmt: skip


def _funnel_row(counts: dict[int, int]) -> dict[str, Any]:
    total = sum(counts.values())

    def at_least(rank: int) -> int:
        return sum(n for r, n in counts.items() if r >= rank)

    mql, customer = at_least(MQL), at_least(CUSTOMER)
    return {"contacts": total, "nurturing": at_least(1), "mql": mql, "sql": at_least(SQL), "customer": customer,
            "mql_rate": ratio(mql, total), "customer_rate": ratio(customer, total)}  # fmt: skip


async def channel_funnel(session: AsyncSession, rng: DateRange, scope: Scope) -> Table:
    """The same cohort by first-touch channel."""
    reach = _reach([*within(Contact.created_at, rng), *scope.on(Contact.owner_userid)])
    stmt = select(reach.c.channel_id, reach.c.reach, func.count()).group_by(reach.c.channel_id, reach.c.reach)
    rows = (await session.execute(stmt)).all()
    names = dict((await session.execute(select(Channel.id, Channel.name))).all())
    pivot: dict[int | None, dict[int, int]] = {}
    for channel_id, rank, n in rows:
        pivot.setdefault(channel_id, {})[rank] = n
    out = [{"channel": names.get(cid, NO_CHANNEL) if cid is not None else NO_CHANNEL, **_funnel_row(c)} for cid, c in pivot.items()]
    out.sort(key=lambda r: (-r["contacts"], r["channel"]))
    chart = bar_chart([r["channel"] for r in out], {"客户数": [r["contacts"] for r in out], "≥MQL": [r["mql"] for r in out]})
    return Table("channels", "渠道漏斗", _funnel_columns(Column("channel", "渠道")), out, chart=chart)


async def item_names(session: AsyncSession) -> dict[int, tuple[str, str, str]]:
    rows = await session.execute(select(ContentItem.id, ContentItem.slug, ContentItem.title, ContentItem.kind))
    return {i: (slug, title, kind) for i, slug, title, kind in rows}


async def content_funnel(session: AsyncSession, rng: DateRange, scope: Scope) -> Table:
    """Per item: contacts who opened it in the range and how far they have got."""
    items = await item_names(session)
    if scope.team is not None:
        # A team's contacts drive it, each one's opens by the (contact, time) index, rather than every
        # open of the range by the (type, time) index, filtered afterwards.
        opened = [unindexed(Event.type) == "open", *within(Event.occurred_at, rng), Event.item_id.is_not(None),
                  Event.contact_id.is_not(None), Event.contact_id.in_(select(Contact.id).where(*scope.on(Contact.owner_userid)))]
        openers = select(Event.item_id.label("item_id"), Event.contact_id.label("contact_id")).where(*opened).distinct().subquery()
        reach = _reach(scope.on(Contact.owner_userid), per=openers)
        by_item = select(reach.c.item_id, reach.c.reach, func.count()).group_by(reach.c.item_id, reach.c.reach)
        rows = list((await session.execute(by_item)).all())
    else:
        # Everyone's, item by item: each item's openers from the partial index of counted events, which
        # holds each open's contact (0.1 s an item at a million contacts), where reading every open of the
        # range by the (type, time) index read each one's row (3.4 s). One statement an item: SQLite, which
        # has no statistics, drove a statement over all items by the (type, time) index.
        counted = text(COUNTED_BY_ITEM[session.get_bind().dialect.name])
        rows = []
        for item_id in items:
            openers = select(Event.contact_id).where(Event.item_id == item_id, counted, Event.type == "open", *within(Event.occurred_at, rng))
            stmt = select(Contact.reach, func.count()).where(Contact.id.in_(openers), *_LIVE).group_by(Contact.reach)
            rows.extend((item_id, rank, n) for rank, n in await session.execute(stmt))
    pivot: dict[int, dict[int, int]] = {}
    for item_id, rank, n in rows:
        pivot.setdefault(item_id, {})[rank] = n
    out = [{"slug": items[i][0], "title": items[i][1], **_funnel_row(c)} for i, c in pivot.items() if i in items]
    out.sort(key=lambda r: (-r["contacts"], r["slug"]))
    columns = _funnel_columns(Column("title", "内容"))
    columns[1] = Column("contacts", "打开的客户", "int")
    columns.insert(1, Column("slug", "slug"))
    return Table("content", "内容漏斗", columns, out, note="在所选日期内打开过该内容的客户，以及他们目前到达的阶段")
