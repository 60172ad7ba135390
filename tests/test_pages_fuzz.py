"""Hostile query strings on the member pages: every answer is a deliberate one (never 500)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pages_seed import PageUser, page_settings, seed

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
KEYS = ["from", "to", "stage", "temperature", "owner", "channel", "q", "page", "format", "table", "contact", "kind",
        "stage", "industry", "sim", "customer", "url", "next"]  # fmt: skip
values = text | st.sampled_from(["csv", "2026-11-01", "2026-02-30", "wmC1", "none", "1", "0", "nurturing", "case_study"])
queries = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)
PATHS = ["/dashboard", "/dashboard/content", "/dashboard/reps", "/dashboard/contacts", "/dashboard/contacts/wmC1",
         "/admin/content", "/admin/scoring", "/sidebar", "/sidebar/activity", "/sidebar/jsconfig", "/login"]  # fmt: skip


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return page_settings(db_url, sim.url)


@pytest.fixture
async def people(beacon: Any, lib: Path) -> AsyncIterator[list[PageUser]]:  # noqa: F811
    await seed(beacon)
    admin, rep = PageUser(str(beacon.client.make_url("/"))), PageUser(str(beacon.client.make_url("/")))
    assert (await admin.login_admin())[0] == 303
    await rep.login_member(beacon, "rep1")
    yield [admin, rep]
    await admin.close()
    await rep.close()


@FUZZ
@given(path=st.sampled_from(PATHS), query=queries)
async def test_member_pages_never_500(beacon: Any, people: list[PageUser], path: str, query: dict[str, str]) -> None:
    for person in people:
        status, _, _ = await person.get(path, params=query)
        assert status in (200, 303, 400, 401, 403, 404), (path, query, status)


@FUZZ
@given(key=text)
async def test_contact_keys_never_500(beacon: Any, people: list[PageUser], key: str) -> None:
    clean = key.replace("/", "").replace("?", "").replace("#", "").replace("%", "") or "x"
    for person in people:
        status, _, _ = await person.get(f"/dashboard/contacts/{clean}")
        assert status in (200, 403, 404)
