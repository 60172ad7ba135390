"""The dashboard's funnels on a synthesized company, against the same counts done in Python from the
raw rows: many contacts per item, several items per contact, stage histories, for everyone and for
one rep's scope. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from bot.config import load_settings
from bot.leaderboards import content_leaderboard
from bot.reports import JOURNEY, Scope, channel_funnel, content_funnel, parse_range, stage_funnel
from bot.runtime import Runtime
from tests.helpers import free_port, run_cli, write_config

TZ = ZoneInfo("Asia/Shanghai")


def _by_hand(rows: dict[str, list[tuple[Any, ...]]], start: dt.datetime, end: dt.datetime,
             team: frozenset[str] | None) -> tuple[dict[str, Counter[int]], dict[int | None, Counter[int]], Counter[int]]:
    """(per item slug, per channel id, all in the cohort): how many contacts reached each JOURNEY rank."""
    rank = {stage: i for i, stage in enumerate(JOURNEY)}
    history: dict[int, int] = defaultdict(lambda: -1)
    for contact_id, to_stage in rows["history"]:
        history[contact_id] = max(history[contact_id], rank.get(to_stage, -1))
    live = {cid: (stage, owner, channel, created) for cid, stage, owner, channel, created, merged, erased in rows["contacts"]
            if merged is None and erased is None and (team is None or owner in team)}
    reach = {cid: max(rank.get(stage, -1), history[cid]) for cid, (stage, *_rest) in live.items()}
    slugs = dict(rows["items"])
    openers = {(item, cid) for item, cid, at in rows["opens"] if start <= at < end and cid in live}
    per_item: dict[str, Counter[int]] = defaultdict(Counter)
    for item, cid in openers:
        per_item[slugs[item]][reach[cid]] += 1
    cohort = [cid for cid, (_s, _o, _c, created) in live.items() if start <= created < end]
    per_channel: dict[int | None, Counter[int]] = defaultdict(Counter)
    for cid in cohort:
        per_channel[live[cid][2]][reach[cid]] += 1
    return per_item, per_channel, Counter(reach[cid] for cid in cohort)


def _reached(counts: Counter[int]) -> list[int]:
    return [sum(n for r, n in counts.items() if r >= i) for i in range(len(JOURNEY))]


def _naive(value: Any) -> dt.datetime:
    at = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.replace(tzinfo=None)


def test_funnels_on_a_synthetic_company_equal_counts_by_hand(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "beacon.toml", db_url=db_url, api_base="http://127.0.0.1:9", port=free_port())
    result = run_cli("--config", str(config), "synth", "--contacts", "1500", "--events", "15000", timeout=240)
    assert result.returncode == 0, result.stderr

    async def go() -> None:
        rt = Runtime.build(load_settings(config), routers=[])
        try:
            async with rt.sessions() as session, session.begin():
                # Contacts that went far and then dormant or invalid: how far they got comes from the history.
                for stage, reached in (("dormant", "customer"), ("invalid", "mql")):
                    await session.execute(text(
                        f"UPDATE contacts SET stage = '{stage}' WHERE id IN (SELECT contact_id FROM stage_history "
                        f"WHERE to_stage = '{reached}' AND contact_id % 3 = 0)"
                    ))
            async with rt.read_sessions() as session:
                rows: dict[str, list[tuple[Any, ...]]] = {}
                for name, sql in {
                    "contacts": "SELECT id, stage, owner_userid, channel_id, created_at, merged_into_id, erased_at FROM contacts",
                    "history": "SELECT contact_id, to_stage FROM stage_history",
                    "items": "SELECT id, slug FROM content_items",
                    "opens": "SELECT item_id, contact_id, occurred_at FROM events WHERE type = 'open' AND item_id IS NOT NULL "
                             "AND contact_id IS NOT NULL",
                    "reps": "SELECT owner_userid, COUNT(*) FROM contacts WHERE owner_userid IS NOT NULL GROUP BY owner_userid "
                            "ORDER BY COUNT(*) DESC, owner_userid",
                    "moves": "SELECT id, contact_id, from_stage, to_stage, at FROM stage_history",
                    "reads": "SELECT item_id, contact_id, occurred_at, rep_userid FROM events WHERE type = 'read' AND item_id IS NOT NULL",
                    "activity": "SELECT item_id, type, props, occurred_at, rep_userid FROM events WHERE item_id IS NOT NULL "
                                "AND type IN ('open', 'read', 'cta', 'download')",
                }.items():
                    rows[name] = [tuple(r) for r in (await session.execute(text(sql))).all()]
            rows["contacts"] = [(c[0], c[1], c[2], c[3], _naive(c[4]), c[5], c[6]) for c in rows["contacts"]]
            rows["opens"] = [(i, c, _naive(at)) for i, c, at in rows["opens"]]
            rows["moves"] = [(m[0], m[1], m[2], m[3], _naive(m[4])) for m in rows["moves"]]
            rows["reads"] = [(i, c, _naive(at), rep) for i, c, at, rep in rows["reads"]]
            rows["activity"] = [(i, kind, props if isinstance(props, dict) else json.loads(props), _naive(at), rep)
                                for i, kind, props, at, rep in rows["activity"]]
            today = rt.clock.now().astimezone(TZ).date()
            rng = parse_range(None, None, today=today, tz=TZ, default_days=30)
            start, end = rng.start.replace(tzinfo=None), rng.end.replace(tzinfo=None)
            busiest = rows["reps"][0][0]
            for team in (None, frozenset({busiest})):
                per_item, per_channel, cohort = _by_hand(rows, start, end, team)
                assert len(per_item) >= 5 and sum(sum(c.values()) for c in per_item.values()) > 50  # a real spread
                moved_on = {cid for cid, stage, *_ in rows["contacts"] if stage in ("dormant", "invalid")}
                assert len(moved_on & {cid for _i, cid, _at in rows["opens"]}) > 10
                async with rt.read_sessions() as session:
                    content = await content_funnel(session, rng, Scope(team))
                    stages = await stage_funnel(session, rng, Scope(team))
                    channels = await channel_funnel(session, rng, Scope(team))
                    leaders = await content_leaderboard(session, rng, Scope(team))
                got = {r["slug"]: [r["contacts"], r["nurturing"], r["mql"], r["sql"], r["customer"]] for r in content.rows}
                assert got == {slug: _reached(c) for slug, c in per_item.items()}, team
                assert [r["reached"] for r in stages.rows] == _reached(cohort)
                assert sorted(r["contacts"] for r in channels.rows) == sorted(sum(c.values()) for c in per_channel.values())
                # Stage advances after reading: forward moves in the range by contacts who had read the item before.
                rank = {stage: i for i, stage in enumerate(JOURNEY)}
                slugs = dict(rows["items"])
                advanced: dict[str, set[int]] = defaultdict(set)
                for move_id, cid, before, after, at in rows["moves"]:
                    if start <= at < end and rank.get(after, -1) > rank.get(before, -1) and rank.get(after, -1) >= 1:
                        for item, reader, read_at, rep in rows["reads"]:
                            if reader == cid and read_at <= at and (team is None or rep in team):
                                advanced[slugs[item]].add(move_id)
                assert sum(len(v) for v in advanced.values()) > 20
                assert {r["slug"]: r["advances"] for r in leaders.rows if r["advances"]} == {k: len(v) for k, v in advanced.items()}
                # Opens, reads to the end, CTA clicks and downloads in the range, by the reps in scope.
                activity: dict[str, Counter[str]] = defaultdict(Counter)
                for item, kind, props, at, rep in rows["activity"]:
                    if start <= at < end and (team is None or rep in team):
                        if kind != "read" or props.get("depth") == 100:
                            activity[slugs[item]][kind] += 1
                assert sum(c["read"] for c in activity.values()) > 20 and sum(c["cta"] for c in activity.values()) > 5
                assert {r["slug"]: (r["opens"], r["read_100"], r["cta"], r["downloads"]) for r in leaders.rows
                        if (r["opens"], r["read_100"], r["cta"], r["downloads"]) != (0, 0, 0, 0)} == {
                    slug: (c["open"], c["read"], c["cta"], c["download"]) for slug, c in activity.items()}
        finally:
            await rt.dispose_engines()

    asyncio.run(go())
