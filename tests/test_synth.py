"""`python -m bot synth` as a subprocess, on SQLite and PostgreSQL: exact counts, referential sanity,
progress on stderr, a score ledger that replays to itself (`rescore` afterwards changes no score),
and the same company whatever the number of worker processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import free_port, run_cli, write_config

CONTACTS, EVENTS = 2000, 20000

# Each query counts rows that break a reference or an invariant: all must be 0.
SANITY = {
    "events of unknown contacts": "SELECT COUNT(*) FROM events e LEFT JOIN contacts c ON c.id = e.contact_id WHERE c.id IS NULL",
    "events of unknown shares": "SELECT COUNT(*) FROM events e LEFT JOIN shares s ON s.id = e.share_id WHERE e.share_id IS NOT NULL AND s.id IS NULL",
    "events of another contact's share": "SELECT COUNT(*) FROM events e JOIN shares s ON s.id = e.share_id WHERE s.contact_id <> e.contact_id OR s.item_id <> e.item_id",
    "events of unknown visitors": "SELECT COUNT(*) FROM events e LEFT JOIN visitors v ON v.id = e.visitor_id WHERE e.visitor_id IS NOT NULL AND v.id IS NULL",
    "events of unknown item versions": "SELECT COUNT(*) FROM events e LEFT JOIN content_versions v ON v.id = e.version_id WHERE e.version_id IS NOT NULL AND (v.id IS NULL OR v.item_id <> e.item_id)",
    "events before their contact": "SELECT COUNT(*) FROM events e JOIN contacts c ON c.id = e.contact_id WHERE e.occurred_at < c.created_at",
    "link events before their share": "SELECT COUNT(*) FROM events e JOIN shares s ON s.id = e.share_id WHERE e.occurred_at < s.created_at",
    "shares of internal or unknown items": "SELECT COUNT(*) FROM shares s LEFT JOIN content_items i ON i.id = s.item_id WHERE i.id IS NULL OR i.internal = TRUE",
    "shares by unknown reps": "SELECT COUNT(*) FROM shares s LEFT JOIN reps r ON r.userid = s.rep_userid WHERE r.userid IS NULL",
    "owners who are not reps": "SELECT COUNT(*) FROM contacts c LEFT JOIN reps r ON r.userid = c.owner_userid WHERE c.owner_userid IS NOT NULL AND r.userid IS NULL",
    "unknown channels": "SELECT COUNT(*) FROM contacts c LEFT JOIN channels ch ON ch.id = c.channel_id WHERE c.channel_id IS NOT NULL AND ch.id IS NULL",
    "reps with unknown managers": "SELECT COUNT(*) FROM reps r LEFT JOIN reps m ON m.userid = r.manager_userid WHERE r.manager_userid IS NOT NULL AND m.userid IS NULL",
    "ledger rows of unknown contacts or events": "SELECT COUNT(*) FROM score_ledger l LEFT JOIN contacts c ON c.id = l.contact_id LEFT JOIN events e ON e.id = l.event_id WHERE c.id IS NULL OR (l.event_id IS NOT NULL AND (e.id IS NULL OR e.contact_id <> l.contact_id))",
    "scores that are not their ledger's sum": "SELECT COUNT(*) FROM contacts c WHERE ABS(c.score - COALESCE((SELECT SUM(l.points) FROM score_ledger l WHERE l.contact_id = c.id), 0)) > 0.005",
    "contacts without their external_userid identity": "SELECT COUNT(*) FROM contacts c WHERE NOT EXISTS (SELECT 1 FROM identities i WHERE i.contact_id = c.id AND i.kind = 'external_userid' AND i.value = c.external_userid)",
    "stage history of unknown contacts": "SELECT COUNT(*) FROM stage_history h LEFT JOIN contacts c ON c.id = h.contact_id WHERE c.id IS NULL",
    "stages without their history": "SELECT COUNT(*) FROM contacts c WHERE c.stage <> 'new' AND NOT EXISTS (SELECT 1 FROM stage_history h WHERE h.contact_id = c.id AND h.to_stage = c.stage)",
    "tasks of unknown owners or contacts": "SELECT COUNT(*) FROM tasks t LEFT JOIN reps r ON r.userid = t.owner_userid LEFT JOIN contacts c ON c.id = t.contact_id WHERE r.userid IS NULL OR c.id IS NULL",
    "customers without a payment": "SELECT COUNT(*) FROM contacts c WHERE c.stage IN ('customer', 'dormant') AND c.last_payment_at IS NULL",
    "activity not matching the log": (
        "SELECT COUNT(*) FROM contacts c LEFT JOIN (SELECT contact_id, MAX(occurred_at) AS m FROM events WHERE processed = TRUE "
        "AND type NOT IN ('contact_deleted', 'unsubscribe') GROUP BY contact_id) a ON a.contact_id = c.id "
        "WHERE (c.last_activity_at IS NULL) <> (a.m IS NULL) OR c.last_activity_at <> a.m"
    ),
}  # fmt: skip


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    async def go() -> list[tuple[Any, ...]]:
        engine = create_async_engine(db_url)
        try:
            async with engine.connect() as conn:
                return [tuple(row) for row in await conn.execute(text(sql))]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def local_day() -> dt.date:
    return dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()


def test_synth_writes_a_consistent_company_and_rescore_agrees(db_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "beacon.toml", db_url=db_url, api_base="http://127.0.0.1:9", port=free_port())
    day = local_day()
    result = run_cli("--config", str(config), "synth", "--contacts", str(CONTACTS), "--events", str(EVENTS), timeout=240)
    assert result.returncode == 0, result.stderr
    assert "synth: 0/2,000 contacts (0 %)" in result.stderr  # progress
    assert "synth: 2,000/2,000 contacts (100 %)" in result.stderr
    assert "synthesized 2,000 contacts, 20,000 events" in result.stdout
    assert "(sample library imported)" in result.stdout

    counts = dict(query(db_url, """
        SELECT 'contacts', COUNT(*) FROM contacts UNION ALL SELECT 'events', COUNT(*) FROM events
        UNION ALL SELECT 'unprocessed', COUNT(*) FROM events WHERE processed = FALSE
        UNION ALL SELECT 'ledger', COUNT(*) FROM score_ledger UNION ALL SELECT 'shares', COUNT(*) FROM shares
        UNION ALL SELECT 'reps', COUNT(*) FROM reps WHERE role = 'rep' AND userid LIKE 'syn_%'
        UNION ALL SELECT 'managers', COUNT(*) FROM reps WHERE role = 'manager'
        UNION ALL SELECT 'channels', COUNT(*) FROM channels UNION ALL SELECT 'tasks', COUNT(*) FROM tasks
        UNION ALL SELECT 'decay', COUNT(*) FROM score_ledger WHERE rule = 'decay'
    """))  # fmt: skip
    assert counts["contacts"] == CONTACTS and counts["events"] == EVENTS
    assert counts["unprocessed"] < EVENTS * 0.01  # mostly processed: the tracker has (almost) nothing to do
    assert counts["reps"] == 4 and counts["managers"] == 1 and counts["channels"] == 3  # 2,000 reps per 1M contacts, min 3
    assert counts["shares"] >= CONTACTS // 2 and counts["tasks"] > 0 and counts["decay"] > 0
    assert counts["ledger"] > EVENTS // 2  # events, profile rules and the decay of quiet contacts
    # Decay is one row per quiet spell, each with the day of the engagement it follows.
    spells = query(db_url, "SELECT COUNT(*), COUNT(quiet_since), COUNT(DISTINCT contact_id) FROM score_ledger WHERE rule = 'decay'")[0]
    assert spells[0] == spells[1] and spells[2] <= spells[0] < 2 * spells[2], spells
    by_type = dict(query(db_url, "SELECT type, COUNT(*) FROM events GROUP BY type"))
    for kind in ("open", "read", "dwell", "download", "cta", "form_submit", "contact_added", "payment", "message"):
        assert by_type.get(kind, 0) > 0, (kind, by_type)
    per_contact = sorted(n for (n,) in query(db_url, "SELECT COUNT(e.id) FROM contacts c LEFT JOIN events e ON e.contact_id = c.id GROUP BY c.id"))
    assert per_contact[-1] > 10 * EVENTS / CONTACTS and per_contact[len(per_contact) // 2] < EVENTS / CONTACTS  # skewed
    stages = dict(query(db_url, "SELECT stage, COUNT(*) FROM contacts GROUP BY stage"))
    assert {"new", "nurturing", "mql", "sql", "customer"} <= set(stages), stages
    # SQL is the owner's call after a call with an MQL, never a score rule's
    assert query(db_url, "SELECT COUNT(*) FROM stage_history h JOIN contacts c ON c.id = h.contact_id "
                         "WHERE h.to_stage = 'sql' AND (h.from_stage <> 'mql' OR h.by <> c.owner_userid)") == [(0,)]
    span = query(db_url, "SELECT MIN(occurred_at), MAX(occurred_at) FROM events WHERE type NOT IN ('payment', 'contact_added')")[0]
    assert span[0] is not None
    for name, sql in SANITY.items():
        assert query(db_url, sql) == [(0,)], name

    rescored = run_cli("--config", str(config), "rescore", timeout=240)
    assert rescored.returncode == 0, rescored.stderr
    assert "rescoring contacts" in rescored.stderr
    processed = EVENTS - counts["unprocessed"]
    assert f"rescored {CONTACTS} contacts from {processed} events" in rescored.stdout
    if local_day() == day:  # (a local midnight in between adds a decay tick: scores then move)
        assert " 0 scores changed" in rescored.stdout, rescored.stdout
        assert query(db_url, "SELECT COUNT(*) FROM score_ledger") == [(counts["ledger"],)]


def test_same_company_with_one_or_two_workers_and_runs_add_up(sqlite_template: Path, tmp_path: Path) -> None:
    now = "2026-11-23T02:00:00+00:00"
    urls = []
    for jobs in (1, 2):
        path = tmp_path / f"jobs{jobs}.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite+aiosqlite:///{path}"
        config = write_config(tmp_path / f"jobs{jobs}.toml", db_url=url, api_base="http://127.0.0.1:9", port=free_port())
        result = run_cli("--config", str(config), "synth", "--contacts", "2500", "--events", "9000", "--seed", "7",
                         "--jobs", str(jobs), "--now", now, timeout=240)
        assert result.returncode == 0, result.stderr
        urls.append((url, config))
    for sql in (
        "SELECT * FROM contacts ORDER BY id", "SELECT * FROM events ORDER BY id", "SELECT * FROM score_ledger ORDER BY id",
        "SELECT * FROM shares ORDER BY id", "SELECT * FROM stage_history ORDER BY id", "SELECT * FROM tasks ORDER BY id",
    ):
        assert query(urls[0][0], sql) == query(urls[1][0], sql), sql
    # A second run adds a company beside the first (new ids, the same team).
    url, config = urls[0]
    again = run_cli("--config", str(config), "synth", "--contacts", "500", "--events", "1000", "--seed", "8", "--now", now)
    assert again.returncode == 0, again.stderr
    assert "(sample library imported)" not in again.stdout
    assert query(url, "SELECT COUNT(*), COUNT(DISTINCT external_userid) FROM contacts") == [(3000, 3000)]
    assert query(url, "SELECT COUNT(*) FROM events") == [(10000,)]
    for name, sql in SANITY.items():
        assert query(url, sql) == [(0,)], name


def test_synth_needs_a_migrated_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()
    result = run_cli("synth", "--contacts", "10", "--events", "10", env={"BEACON_DATABASE_URL": url})
    assert result.returncode == 1
    assert "python -m bot migrate" in result.stderr
    bad = run_cli("synth", "--contacts", "0", "--events", "10", env={"BEACON_DATABASE_URL": url})
    assert bad.returncode == 2
