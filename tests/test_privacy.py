"""Personal data: export and erasure (anonymous aggregates stay); backup and restore."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.models import Contact, Event, Identity, Visitor
from bot.privacy import erase_contact, export_contact
from tests.helpers import ROOT, run_cli
from tests.test_links import AUTH, Browser, share  # noqa: F401


async def test_export_then_erase_keeps_aggregates(beacon: Any, lib: Any) -> None:  # noqa: F811
    s = await share(beacon, "manufacturing-digital-whitepaper", contact="wmPrivate")
    b = Browser(str(beacon.client.make_url("/")))
    try:
        _, html, _ = await b.get(f"/l/{s['token']}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        status, _, _ = await b.post(f"/l/{s['token']}/gate", data={"csrf": csrf, "name": "周女士", "company": "隐私公司", "phone": "13712345678"})
        assert status == 303
    finally:
        await b.close()
    await beacon.rt.tracker.drain()
    async with beacon.rt.sessions() as session, session.begin():
        contact = await session.scalar(select(Contact).where(Contact.external_userid == "wmPrivate"))
        data = await export_contact(session, contact)
        assert data["contact"]["phone"] == "13712345678"
        assert {i["kind"] for i in data["identities"]} == {"external_userid", "phone"}
        assert [e["type"] for e in data["events"]] == ["open", "form_submit"]
        assert data["score_ledger"] and json.dumps(data, ensure_ascii=False)
        events_before = await session.scalar(select(func.count()).select_from(Event))
        counts = await erase_contact(session, contact, now=beacon.clock.now())
        assert counts["identities"] == 2 and counts["events_scrubbed"] == 1
    async with beacon.rt.sessions() as session:
        contact = await session.get(Contact, contact.id)
        assert (contact.name, contact.phone, contact.company, contact.external_userid) == ("", None, "", None)
        assert contact.erased_at is not None
        assert await session.scalar(select(func.count()).select_from(Identity)) == 0
        assert await session.scalar(select(func.count()).select_from(Event)) == events_before
        form = await session.scalar(select(Event).where(Event.type == "form_submit"))
        assert form.props["phone"] == "[erased]" and form.props["name"] == "[erased]"
        assert await session.scalar(select(Visitor.contact_id)) is None
    assert (await beacon.client.get("/api/contacts/wmPrivate", headers=AUTH)).status == 404


def _migrated_with_library(tmp_path: Path) -> tuple[dict[str, str], Path]:
    db = tmp_path / "b.db"
    env = {"BEACON_DATABASE_URL": f"sqlite+aiosqlite:///{db}"}
    assert run_cli("migrate", env=env).returncode == 0
    assert run_cli("content", "import", str(ROOT / "content" / "library"), env=env).returncode == 0
    return env, db


def test_cli_export_and_erase(tmp_path: Path) -> None:
    env, db = _migrated_with_library(tmp_path)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO contacts (external_userid, name, company, title, phone, region, industry, company_size, persona, profile, stage, temperature, score, created_at, updated_at) "
                "VALUES ('wmCli', '吴先生', 'C公司', '', '13600001111', '', '', '', '', '{}', 'new', 'cold', 0, '2026-01-01', '2026-01-01')")
    con.commit()
    con.close()
    out = tmp_path / "export.json"
    result = run_cli("contact", "export", "wmCli", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["contact"]["phone"] == "13600001111"
    assert run_cli("contact", "erase", "wmNobody", "--yes", env=env).returncode == 1
    result = run_cli("contact", "erase", "id:1", "--yes", env=env)
    assert result.returncode == 0 and "erased contact id:1" in result.stdout
    con = sqlite3.connect(db)
    row = con.execute("SELECT name, phone, erased_at FROM contacts").fetchone()
    con.close()
    assert row[0] == "" and row[1] is None and row[2] is not None


def test_backup_and_restore(tmp_path: Path) -> None:
    env, db = _migrated_with_library(tmp_path)
    dest = tmp_path / "backups"
    dest.mkdir()
    result = run_cli("backup", str(dest), env=env)
    assert result.returncode == 0, result.stderr
    copy = next(dest.glob("beacon-*.db"))
    assert _count(copy, "content_items") == 18
    con = sqlite3.connect(db)
    con.execute("DELETE FROM content_versions")
    con.commit()
    con.close()
    result = run_cli("restore", str(copy), env=env)
    assert result.returncode == 0, result.stderr
    assert _count(db, "content_versions") == 18
    assert _count(tmp_path / "b.db.before-restore", "content_versions") == 0
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    result = run_cli("restore", str(broken), env=env)
    assert result.returncode == 1 and "not a usable Beacon database" in result.stderr
    assert _count(db, "content_versions") == 18


def _count(path: Path, table: str) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()
