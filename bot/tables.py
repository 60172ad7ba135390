"""Tables the pages show: one typed structure rendered both as HTML cells and as CSV.

Every dashboard and admin table is a `Table`; the page template prints `display_rows()`, and
`?format=csv&table=<key>` streams `csv_bytes()` of the same rows, so what is exported is exactly
what is shown (without the formatting).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

Kind = Literal["text", "int", "num", "pct", "dt", "bool", "duration", "image"]
# Spreadsheet apps run a cell that starts with one of these as a formula; customer-typed names can.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: Kind = "text"
    link: str | None = None  # row key holding an href for this cell


@dataclass
class Table:
    key: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    chart: dict[str, Any] | None = None  # Chart.js config for dash.js (data only, no code)

    def display_rows(self, tz: ZoneInfo) -> list[list[tuple[str, str | None, Kind]]]:
        """Per row, per column: (text, href or None, kind) ready for the template."""
        out = []
        for row in self.rows:
            cells = []
            for col in self.columns:
                href = str(row[col.link]) if col.link and row.get(col.link) else None
                cells.append((format_cell(row.get(col.key), col.kind, tz), href, col.kind))
            out.append(cells)
        return out

    def csv_bytes(self) -> bytes:
        """UTF-8 with a byte-order mark (spreadsheet apps then read the Chinese), keys as the header."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([c.key for c in self.columns])
        for row in self.rows:
            writer.writerow([csv_cell(row.get(c.key), c.kind) for c in self.columns])
        return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def format_cell(value: Any, kind: Kind, tz: ZoneInfo) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "num":
        return f"{value:g}"
    if kind == "int":
        return str(int(value))
    if kind == "dt":
        return str(value.astimezone(tz).strftime("%Y-%m-%d %H:%M"))
    if kind == "bool":
        return "是" if value else "否"
    if kind == "duration":
        return human_duration(float(value))
    return str(value)


def csv_cell(value: Any, kind: Kind) -> str:
    if value is None:
        return ""
    if kind == "pct":
        return f"{value:.4f}"
    if kind in ("num", "duration"):
        return f"{value:g}"
    if kind == "int":
        return str(int(value))
    if kind == "dt":
        return str(value.astimezone(dt.UTC).isoformat())
    if kind == "bool":
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def human_duration(seconds: float) -> str:
    """3 分钟, 2.5 小时, 1.2 天: the follow-up speed as a manager reads it."""
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} 分钟"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} 小时"
    return f"{seconds / 86400:.1f} 天"


CHART_BARS = 20  # a bar chart shows the first this many bars; the table under it holds every row


def bar_chart(labels: list[str], series: dict[str, list[Any]], *, horizontal: bool = False, limit: int = CHART_BARS) -> dict[str, Any]:
    """A bar chart's data for dash.js (which draws it with Chart.js): labels and named series, the
    first `limit` of them (callers order them best first). A company's 2,000 reps or 100 channels in
    one chart are unreadable bars; past the limit a caption says how many the chart leaves out."""
    chart = {"type": "bar", "labels": labels[:limit], "horizontal": horizontal,
             "series": [{"label": k, "data": v[:limit]} for k, v in series.items()]}  # fmt: skip
    if len(labels) > limit:
        chart["caption"] = f"图表显示前 {limit} 项（共 {len(labels):,} 项），全部见下表"
    return chart


def ratio(part: float, whole: float) -> float | None:
    """part / whole, or None when there is nothing to divide by (shown as —, not as 0 %)."""
    return part / whole if whole else None


def find_table(tables: Iterable[Table], key: str | None) -> Table | None:
    tables = list(tables)
    if not key:
        return tables[0] if tables else None
    return next((t for t in tables if t.key == key), None)
