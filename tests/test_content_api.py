"""GET /api/content through the real app: auth, the listed fields, filters and 400s."""

from __future__ import annotations

from typing import Any

import pytest

from content.importer import import_library
from content.vocab import KINDS, STAGES
from tests.conftest import Beacon
from tests.test_content_import import SAMPLE

AUTH = {"Authorization": "Bearer test-admin-token"}
FIELDS = {
    "slug", "title", "kind", "version", "stage", "personas", "industries", "tags",
    "gated", "internal", "summary", "variant_of", "attachment", "retired",
}  # fmt: skip


@pytest.fixture
async def api(beacon: Beacon) -> Beacon:
    """The app with the sample library imported."""
    async with beacon.rt.sessions() as session, session.begin():
        report = await import_library(session, SAMPLE, now=beacon.clock.now())
    assert report.errors == []
    return beacon


async def get(beacon: Beacon, query: str = "", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await beacon.client.get(f"/api/content{query}", headers=AUTH if headers is None else headers)
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "test-admin-token"}, {"Authorization": "Basic dGVzdA=="}],
)
async def test_needs_the_admin_token(beacon: Beacon, headers: dict[str, str]) -> None:
    status, body = await get(beacon, headers=headers)
    assert status == 401 and "error" in body


async def test_lists_the_library(api: Beacon) -> None:
    status, body = await get(api)
    assert status == 200
    assert len(body) == 18  # internal items included by default on the admin API
    assert all(set(entry) == FIELDS for entry in body)
    by_slug = {entry["slug"]: entry for entry in body}
    assert by_slug["manufacturing-digital-whitepaper"] == {
        "slug": "manufacturing-digital-whitepaper",
        "title": "制造业数字化转型白皮书",
        "kind": "whitepaper",
        "version": 1,
        "stage": "awareness",
        "personas": ["executive", "operations"],
        "industries": ["manufacturing", "automotive", "electronics"],
        "tags": ["数字化转型", "工业互联网", "数据治理"],
        "gated": True,
        "internal": False,
        "summary": "从设备联网到业财一体，系统梳理制造企业数字化转型的四个阶段、常见陷阱与落地路线图。",
        "variant_of": None,
        "attachment": "manufacturing-digital-whitepaper.pdf",
        "retired": False,
    }
    assert by_slug["talk-track-first-call"]["internal"] is True
    assert by_slug["case-auto-parts-oee-finance"]["variant_of"] == "case-auto-parts-oee"
    assert by_slug["faq-platform-general"]["attachment"] is None


async def test_filters(api: Beacon) -> None:
    status, body = await get(api, "?kind=whitepaper")
    assert status == 200 and [e["slug"] for e in body] == ["manufacturing-digital-whitepaper"]
    _, body = await get(api, "?stage=retention&persona=finance")
    assert [e["slug"] for e in body] == ["case-food-erp-expansion"]
    _, body = await get(api, "?industry=energy")
    assert [e["slug"] for e in body] == ["case-chemicals-energy"]
    _, body = await get(api, "?q=%E7%99%BD%E7%9A%AE%E4%B9%A6")  # 白皮书: title match first
    assert [e["slug"] for e in body] == ["manufacturing-digital-whitepaper", "blog-oee-common-mistakes"]
    _, body = await get(api, "?include_internal=false")
    assert len(body) == 15 and not any(e["internal"] for e in body)
    _, body = await get(api, "?kind=talk_track")
    assert [e["slug"] for e in body] == ["talk-track-first-call"]
    _, body = await get(api, "?limit=4")
    assert len(body) == 4


async def test_retired_items_only_on_request(api: Beacon, tmp_path: Any) -> None:
    import shutil

    folder = shutil.copytree(SAMPLE, tmp_path / "lib")
    (folder / "case-chemicals-energy.md").unlink()
    async with api.rt.sessions() as session, session.begin():
        await import_library(session, folder, now=api.clock.now())
    _, body = await get(api)
    assert "case-chemicals-energy" not in {e["slug"] for e in body}
    _, body = await get(api, "?include_retired=true&industry=chemicals")
    retired = [e for e in body if e["slug"] == "case-chemicals-energy"]
    assert len(retired) == 1 and retired[0]["retired"] is True


@pytest.mark.parametrize(
    ("query", "field", "allowed"),
    [("?kind=brochure", "kind", KINDS), ("?stage=purchase", "stage", STAGES)],
)
async def test_unknown_kind_or_stage_is_400_listing_allowed_values(
    api: Beacon, query: str, field: str, allowed: tuple[str, ...]
) -> None:
    status, body = await get(api, query)
    assert status == 400
    assert body["field"] == field and body["allowed"] == list(allowed)
    assert all(value in body["error"] for value in allowed)


@pytest.mark.parametrize("query", ["?include_internal=maybe", "?include_retired=2", "?limit=0", "?limit=abc"])
async def test_bad_parameters_are_400(api: Beacon, query: str) -> None:
    status, body = await get(api, query)
    assert status == 400 and query[1:].split("=")[0] in body["error"]
