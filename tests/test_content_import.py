"""Content import: the sample library, idempotency, versions, retiring, validation, and the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import undefer

from bot.db import create_engine, session_factory
from bot.models import ContentItem, ContentVersion
from content.errors import LibraryFolderError
from content.importer import ImportReport, import_library
from content.fields import FIELD_CHECKS
from content.library import scan_library
from content.vocab import ALLOWED_KEYS, KINDS
from tests.conftest import T0, make_settings
from tests.helpers import ROOT, run_cli

SAMPLE = ROOT / "content" / "library"
SAMPLE_SLUGS = sorted(p.stem for p in SAMPLE.glob("*.md") if p.name != "README.md")
T1 = T0 + dt.timedelta(days=1)
T2 = T0 + dt.timedelta(days=2)
_OMIT = object()  # write_item(..., title=_OMIT) leaves the field out


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(make_settings(db_url).database)
    yield session_factory(engine)
    await engine.dispose()


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A private copy of the sample library, safe to edit."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "library"))


def write_item(folder: Path, name: str, body: str = "正文", **fields: Any) -> Path:
    """Write `<name>.md` with these front-matter fields (a minimal valid item by default)."""
    meta: dict[str, Any] = {"slug": name, "title": f"标题 {name}", "kind": "faq", "stage": "awareness", "summary": "摘要"}
    meta.update(fields)
    meta = {k: v for k, v in meta.items() if v is not _OMIT}
    path = folder / f"{name}.md"
    path.write_text(f"---\n{yaml.safe_dump(meta, allow_unicode=True)}---\n{body}\n", encoding="utf-8")
    return path


async def run_import(sessions: async_sessionmaker[AsyncSession], folder: Path, now: dt.datetime = T0) -> ImportReport:
    async with sessions() as session, session.begin():
        return await import_library(session, folder, now=now)


async def snapshot(sessions: async_sessionmaker[AsyncSession]) -> dict[str, tuple[Any, ...]]:
    """Every item's observable state, by slug."""
    async with sessions() as session:
        items = await session.scalars(select(ContentItem))
        return {
            i.slug: (i.id, i.title, i.summary, list(i.tags), i.current_version_id, i.updated_at, i.retired_at)
            for i in items
        }


async def versions_of(sessions: async_sessionmaker[AsyncSession], slug: str) -> list[ContentVersion]:
    async with sessions() as session:
        rows = await session.scalars(
            select(ContentVersion)
            .join(ContentItem, ContentItem.id == ContentVersion.item_id)
            .where(ContentItem.slug == slug)
            .options(undefer(ContentVersion.attachment_data))
            .order_by(ContentVersion.version)
        )
        return list(rows)


async def count_versions(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(ContentVersion)) or 0


# --- the sample library -------------------------------------------------------------------------


async def test_sample_library_imports_cleanly(sessions: async_sessionmaker[AsyncSession]) -> None:
    report = await run_import(sessions, SAMPLE)
    assert report.errors == []
    assert len(SAMPLE_SLUGS) == 18
    assert sorted(report.created) == SAMPLE_SLUGS
    assert report.files == 18 and report.updated == report.unchanged == report.retired == []

    async with sessions() as session:
        items = {i.slug: i for i in await session.scalars(select(ContentItem))}
        assert sorted(items) == SAMPLE_SLUGS
        paper = items["manufacturing-digital-whitepaper"]
        assert (paper.title, paper.kind, paper.stage, paper.gated, paper.internal) == (
            "制造业数字化转型白皮书", "whitepaper", "awareness", True, False
        )
        assert paper.personas == ["executive", "operations"]
        assert paper.tags == ["数字化转型", "工业互联网", "数据治理"]
        assert paper.created_at == paper.updated_at == T0
        assert items["talk-track-first-call"].internal is True
        assert items["case-auto-parts-oee-finance"].variant_of == "case-auto-parts-oee"
        assert all(i.current_version_id is not None and i.retired_at is None for i in items.values())

    (version,) = await versions_of(sessions, "manufacturing-digital-whitepaper")
    pdf = (SAMPLE / "manufacturing-digital-whitepaper.pdf").read_bytes()
    assert version.version == 1 and version.title == "制造业数字化转型白皮书"
    assert version.attachment_name == "manufacturing-digital-whitepaper.pdf"
    assert version.attachment_size == len(pdf)
    assert version.attachment_hash == hashlib.sha256(pdf).hexdigest()
    assert version.attachment_data == pdf
    assert version.body_md.startswith("# 制造业数字化转型白皮书")
    assert version.body_hash == hashlib.sha256(version.body_md.encode()).hexdigest()
    (plain,) = await versions_of(sessions, "faq-platform-general")
    assert plain.attachment_name is plain.attachment_hash is plain.attachment_data is None


async def test_reimporting_an_unchanged_folder_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], library: Path
) -> None:
    await run_import(sessions, library, T0)
    before, versions_before = await snapshot(sessions), await count_versions(sessions)

    report = await run_import(sessions, library, T1)

    assert sorted(report.unchanged) == SAMPLE_SLUGS
    assert report.created == report.updated == report.new_versions == report.retired == []
    assert await count_versions(sessions) == versions_before == 18
    assert await snapshot(sessions) == before  # includes updated_at: no bumps


# --- changes ------------------------------------------------------------------------------------


async def test_changed_body_makes_a_new_version(sessions: async_sessionmaker[AsyncSession], library: Path) -> None:
    await run_import(sessions, library, T0)
    before = await snapshot(sessions)
    path = library / "faq-platform-general.md"
    path.write_text(path.read_text(encoding="utf-8") + "\n**问：新增的问题？**\n答：新增的回答。\n", encoding="utf-8")

    report = await run_import(sessions, library, T1)

    assert report.updated == report.new_versions == ["faq-platform-general"]
    assert len(report.unchanged) == 17
    v1, v2 = await versions_of(sessions, "faq-platform-general")
    assert (v1.version, v2.version) == (1, 2)
    assert "新增的回答" in v2.body_md and "新增的回答" not in v1.body_md
    assert v2.body_hash != v1.body_hash and v2.created_at == T1
    after = await snapshot(sessions)
    assert after["faq-platform-general"][4] == v2.id != before["faq-platform-general"][4]
    assert after["faq-platform-general"][5] == T1
    assert {k: v for k, v in after.items() if k != "faq-platform-general"} == {
        k: v for k, v in before.items() if k != "faq-platform-general"
    }
    assert await count_versions(sessions) == 19

    # the same change imported again is not another version
    again = await run_import(sessions, library, T2)
    assert again.new_versions == [] and await count_versions(sessions) == 19


async def test_title_only_change_updates_in_place(sessions: async_sessionmaker[AsyncSession], library: Path) -> None:
    await run_import(sessions, library, T0)
    path = library / "case-chemicals-energy.md"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("title: 西南某精细化工企业", "title: 新标题｜西南某精细化工企业", 1), encoding="utf-8")

    report = await run_import(sessions, library, T1)

    assert report.updated == ["case-chemicals-energy"] and report.new_versions == []
    (version,) = await versions_of(sessions, "case-chemicals-energy")
    assert version.title.startswith("西南某精细化工企业")  # the v1 snapshot keeps the old title
    state = (await snapshot(sessions))["case-chemicals-energy"]
    assert state[1].startswith("新标题｜") and state[4] == version.id and state[5] == T1


async def test_changed_attachment_makes_a_new_version(sessions: async_sessionmaker[AsyncSession], library: Path) -> None:
    await run_import(sessions, library, T0)
    pdf = library / "manufacturing-data-maturity-report.pdf"
    new_bytes = pdf.read_bytes() + b"\n% revised\n"
    pdf.write_bytes(new_bytes)

    report = await run_import(sessions, library, T1)

    assert report.new_versions == ["manufacturing-data-maturity-report"]
    v1, v2 = await versions_of(sessions, "manufacturing-data-maturity-report")
    assert v2.attachment_data == new_bytes and v2.attachment_size == len(new_bytes)
    assert v2.attachment_hash == hashlib.sha256(new_bytes).hexdigest() != v1.attachment_hash
    assert v2.body_hash == v1.body_hash


async def test_removed_item_is_retired_and_restored_when_back(
    sessions: async_sessionmaker[AsyncSession], library: Path, tmp_path: Path
) -> None:
    await run_import(sessions, library, T0)
    shutil.move(library / "blog-oee-common-mistakes.md", tmp_path / "aside.md")

    report = await run_import(sessions, library, T1)
    assert report.retired == ["blog-oee-common-mistakes"] and len(report.unchanged) == 17
    state = (await snapshot(sessions))["blog-oee-common-mistakes"]
    assert state[6] == T1 and state[5] == T1  # retired, not deleted
    assert (await run_import(sessions, library, T2)).retired == []  # retiring is not repeated

    shutil.move(tmp_path / "aside.md", library / "blog-oee-common-mistakes.md")
    back = await run_import(sessions, library, T2)
    assert back.restored == ["blog-oee-common-mistakes"] and back.new_versions == []
    state = (await snapshot(sessions))["blog-oee-common-mistakes"]
    assert state[6] is None and state[5] == T2
    assert len(await versions_of(sessions, "blog-oee-common-mistakes")) == 1


async def test_broken_files_keep_their_items(sessions: async_sessionmaker[AsyncSession], library: Path) -> None:
    await run_import(sessions, library, T0)
    # a readable slug with a bad field: that item is left exactly as it was
    bad_kind = library / "case-chemicals-energy.md"
    bad_kind.write_text(bad_kind.read_text(encoding="utf-8").replace("kind: case_study", "kind: brochure"), encoding="utf-8")
    before = await snapshot(sessions)
    report = await run_import(sessions, library, T1)
    assert report.retired == [] and not report.retire_skipped
    assert [(e.path.name, e.field) for e in report.errors] == [("case-chemicals-energy.md", "kind")]
    assert await snapshot(sessions) == before

    # unreadable front matter: the slug is unknown, so no item may be retired this run
    broken = library / "faq-platform-general.md"
    broken.write_text("---\nslug: [unclosed\n---\nbody\n", encoding="utf-8")
    (library / "blog-oee-common-mistakes.md").unlink()
    report = await run_import(sessions, library, T1)
    assert report.retire_skipped and report.retired == []
    assert "retiring skipped" in report.summary()
    assert (await snapshot(sessions))["blog-oee-common-mistakes"][6] is None


# --- validation ---------------------------------------------------------------------------------


async def test_validation_errors_name_file_field_and_why(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "README.md").write_text("# 说明\n没有 front matter，应被跳过。\n", encoding="utf-8")
    (folder / "brochure.pdf").write_bytes(b"%PDF-1.4 sample")
    write_item(folder, "good-one", attachment="brochure.pdf")
    write_item(folder, "good-two", variant_of="good-one", gated=True, personas=["Finance"])
    write_item(folder, "no-title", title=_OMIT)
    write_item(folder, "bad-slug", slug="Bad_Slug")
    write_item(folder, "bad-kind", kind="brochure")
    write_item(folder, "bad-key", colour="blue")
    write_item(folder, "no-attachment", attachment="missing.pdf")
    write_item(folder, "bad-variant", variant_of="no-such-item")
    write_item(folder, "dup-a", slug="shared-slug")
    write_item(folder, "dup-b", slug="shared-slug")
    write_item(folder, "bad-gated", gated="maybe")
    write_item(folder, "escape", attachment="../outside.pdf")
    (tmp_path / "outside.pdf").write_bytes(b"secret")
    (folder / "broken-yaml.md").write_text("---\nslug: broken-yaml\ntitle: [oops\n---\nbody\n", encoding="utf-8")
    (folder / "no-front-matter.md").write_text("# 只有正文\n", encoding="utf-8")
    (folder / "bad-stage-and-tags.md").write_text(
        "---\nslug: bad-stage-and-tags\ntitle: t\nkind: faq\nstage: purchase\nsummary: s\ntags: 单个标签\n---\nx\n",
        encoding="utf-8",
    )

    report = await run_import(sessions, folder)

    found = {(e.path.name, e.field): e.why for e in report.errors}
    assert set(found) == {
        ("no-title.md", "title"),
        ("bad-slug.md", "slug"),
        ("bad-kind.md", "kind"),
        ("bad-key.md", "colour"),
        ("no-attachment.md", "attachment"),
        ("bad-variant.md", "variant_of"),
        ("dup-a.md", "slug"),
        ("dup-b.md", "slug"),
        ("bad-gated.md", "gated"),
        ("escape.md", "attachment"),
        ("broken-yaml.md", "front matter"),
        ("no-front-matter.md", "front matter"),
        ("bad-stage-and-tags.md", "stage"),
        ("bad-stage-and-tags.md", "tags"),
    }
    assert found[("no-title.md", "title")] == "required"
    assert "'Bad_Slug' is not a valid slug" in found[("bad-slug.md", "slug")]
    assert "'brochure' is not one of: whitepaper, case_study" in found[("bad-kind.md", "kind")]
    assert found[("bad-key.md", "colour")].startswith("unknown field (allowed: ")
    assert found[("no-attachment.md", "attachment")] == "file 'missing.pdf' not found beside no-attachment.md"
    assert found[("bad-variant.md", "variant_of")] == "no item with slug 'no-such-item' in this folder"
    assert found[("dup-a.md", "slug")] == "'shared-slug' is also used by dup-b.md"
    assert found[("bad-gated.md", "gated")] == "must be true or false, got 'maybe'"
    assert "same folder" in found[("escape.md", "attachment")]
    assert found[("broken-yaml.md", "front matter")].startswith("invalid YAML at line ")
    assert found[("no-front-matter.md", "front matter")].startswith("missing")
    assert "must be a list" in found[("bad-stage-and-tags.md", "tags")]
    line = next(str(e) for e in report.errors if e.path.name == "bad-kind.md")
    assert line == f"{folder / 'bad-kind.md'}: kind: 'brochure' is not one of: {', '.join(KINDS)}"

    assert sorted(report.created) == ["good-one", "good-two"]  # the valid files are still imported
    async with sessions() as session:
        items = {i.slug: i for i in await session.scalars(select(ContentItem))}
    assert sorted(items) == ["good-one", "good-two"]
    assert items["good-two"].variant_of == "good-one" and items["good-two"].personas == ["finance"]
    (version,) = await versions_of(sessions, "good-one")
    assert version.attachment_data == b"%PDF-1.4 sample"


def test_front_matter_edge_cases(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "bom.md").write_text("\ufeff\n---\nslug: bom\ntitle: T\nkind: faq\nstage: decision\nsummary: S\n---\nA\n\n---\n\nB\n", encoding="utf-8")
    write_item(folder, "lists", personas=["IT", " it ", "Finance"], tags=["OEE", "数据"], internal=True, cover="c.png")
    (folder / "unclosed.md").write_text("---\nslug: unclosed\ntitle: T\n", encoding="utf-8")
    (folder / "not-a-map.md").write_text("---\n- just\n- a list\n---\nbody\n", encoding="utf-8")
    (folder / "latin1.md").write_bytes("---\nslug: latin1\ntitle: caf\xe9\n---\n".encode("latin-1"))
    (folder / "number-title.md").write_text("---\nslug: number-title\ntitle: 2024\nkind: faq\nstage: decision\nsummary: S\n---\n", encoding="utf-8")
    (folder / ".hidden.md").write_text("ignored editor file", encoding="utf-8")

    scan = scan_library(folder)

    assert scan.files == 6  # README-less folder; the hidden file is not an item
    items = {i.slug: i for i in scan.items}
    assert sorted(items) == ["bom", "lists"]
    assert items["bom"].body == "A\n\n---\n\nB"  # a later --- is a horizontal rule in the body
    assert items["lists"].personas == ("it", "finance") and items["lists"].tags == ("OEE", "数据")
    assert items["lists"].internal is True and items["lists"].gated is False and items["lists"].cover == "c.png"
    found = {(e.path.name, e.field): e.why for e in scan.errors}
    assert found == {
        ("unclosed.md", "front matter"): "not closed (add a '---' line after the fields)",
        ("not-a-map.md", "front matter"): "must be a set of 'key: value' lines",
        ("latin1.md", "file"): "not valid UTF-8 text",
        ("number-title.md", "title"): "must be text, got int 2024 (quote it)",
    }
    assert not scan.complete and scan.present_slugs == {"bom", "lists", "number-title"}


def test_every_front_matter_key_has_a_check() -> None:
    assert set(FIELD_CHECKS) == ALLOWED_KEYS


async def test_oversized_attachment_is_rejected(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("content.fields.MAX_ATTACHMENT_BYTES", 1024)
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "big.pdf").write_bytes(b"x" * 2048)
    write_item(folder, "big", attachment="big.pdf")
    report = await run_import(sessions, folder)
    assert [(e.field, "larger than" in e.why) for e in report.errors] == [("attachment", True)]


async def test_folder_without_items_is_refused(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    await run_import(sessions, SAMPLE)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here\n")
    with pytest.raises(LibraryFolderError, match="no item files"):
        await run_import(sessions, empty)
    with pytest.raises(LibraryFolderError, match="not a folder"):
        await run_import(sessions, tmp_path / "missing")
    assert all(state[6] is None for state in (await snapshot(sessions)).values())


# --- the command line ---------------------------------------------------------------------------


def _db_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    db = tmp_path / "cli.db"
    env = {"BEACON_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "BEACON_LOGGING_FORMAT": "text"}
    migrated = run_cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return env, db


@pytest.mark.slow
def test_cli_imports_the_sample_library(tmp_path: Path) -> None:
    env, db = _db_env(tmp_path)
    first = run_cli("content", "import", "content/library", env=env)
    assert first.returncode == 0, first.stderr
    assert "18 files: created 18, updated 0 (0 new versions), unchanged 0, retired 0, restored 0" in first.stdout
    second = run_cli("content", "import", "content/library", env=env)
    assert second.returncode == 0, second.stderr
    assert "created 0, updated 0 (0 new versions), unchanged 18, retired 0" in second.stdout
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM content_items").fetchone()[0] == 18
        assert con.execute("SELECT count(*) FROM content_versions").fetchone()[0] == 18


@pytest.mark.slow
def test_cli_reports_bad_files_and_exits_1(tmp_path: Path) -> None:
    env, db = _db_env(tmp_path)
    folder = tmp_path / "lib"
    folder.mkdir()
    write_item(folder, "fine")
    write_item(folder, "wrong", kind="brochure")
    result = run_cli("content", "import", str(folder), env=env)
    assert result.returncode == 1
    assert f"{folder / 'wrong.md'}: kind: 'brochure' is not one of: " in result.stderr
    assert "created 1," in result.stdout and "files with errors 1" in result.stdout
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT slug FROM content_items").fetchall() == [("fine",)]


@pytest.mark.slow
def test_cli_bad_usage_exits_2(tmp_path: Path) -> None:
    env, _ = _db_env(tmp_path)
    missing = run_cli("content", "import", str(tmp_path / "nope"), env=env)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    no_dir = run_cli("content", "import", env=env)
    assert no_dir.returncode == 2 and "Missing argument 'DIR'" in no_dir.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_cli("content", "import", str(empty), env=env)
    assert nothing.returncode == 2 and "no item files" in nothing.stderr


@pytest.mark.slow
def test_cli_shows_progress_for_large_folders(tmp_path: Path) -> None:
    env, _ = _db_env(tmp_path)
    folder = tmp_path / "big"
    folder.mkdir()
    for n in range(60):
        write_item(folder, f"item-{n:02d}")
    result = run_cli("content", "import", str(folder), env=env)
    assert result.returncode == 0, result.stderr
    assert "checking 60/60" in result.stderr and "importing 60/60" in result.stderr
    assert "60 files: created 60" in result.stdout
    small = run_cli("content", "import", "content/library", env=env)
    assert "importing" not in small.stderr  # small folders stay quiet
