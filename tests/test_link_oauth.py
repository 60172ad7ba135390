"""Silent OAuth on links opened inside WeChat/WeCom: customers identified, reps' previews not counted."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from bot.app import RUNTIME, create_app
from bot.models import Event, Visitor
from tests.conftest import make_settings
from tests.test_links import AUTH, PHONE_UA, Browser, share  # noqa: F401
from tests.test_scoring_live import new_contact

pytestmark = pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


@pytest.fixture
async def app(aiohttp_client: Any, db_url: str, sim: Any, clock: Any) -> Any:
    settings = make_settings(db_url, api_base=sim.url, links={"oauth": True, "oauth_authorize_url": f"{sim.url}/connect/oauth2/authorize"})
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))

    class App:
        pass

    a = App()
    a.client, a.rt, a.clock, a.sim = client, client.app[RUNTIME], clock, sim
    return a


async def test_customer_identified_by_oauth(app: Any, tmp_path: Any) -> None:
    from content.importer import import_library
    from tests.conftest import LIBRARY

    async with app.rt.sessions() as session, session.begin():
        await import_library(session, LIBRARY, now=app.clock.now())
    await new_contact(app, "wmKnown", name="孙总")
    s = await share(app, "case-auto-parts-oee", contact=None)  # a channel-style link without a contact
    b = Browser(str(app.client.make_url("/")))
    try:
        status, _, resp = await b.get(f"/l/{s['token']}")
        assert status == 302
        location = urlsplit(resp.headers["Location"])
        query = parse_qs(location.query)
        assert location.path == "/connect/oauth2/authorize" and query["scope"] == ["snsapi_base"]
        assert query["redirect_uri"] == [f"http://127.0.0.1:8080/l/{s['token']}/oauth"]
        state = query["state"][0]
        status, _, _ = await b.get(f"/l/{s['token']}/oauth?code=x&state=forged")
        assert status == 403
        code = app.sim.state.issue_oauth_code(external_userid="wmKnown")
        status, _, resp = await b.get(f"/l/{s['token']}/oauth?code={code}&state={state}")
        assert status == 303 and resp.headers["Location"] == f"/l/{s['token']}"
        status, html, _ = await b.get(f"/l/{s['token']}")
        assert status == 200 and "OEE" in html  # asked once; now the page
    finally:
        await b.close()
    await app.rt.tracker.drain()
    async with app.rt.sessions() as session:
        opens = (await session.scalars(select(Event).where(Event.type == "open"))).all()
        contact_id = await session.scalar(select(Visitor.contact_id))
    assert len(opens) == 1 and opens[0].contact_id == contact_id is not None
    data = await (await app.client.get("/api/contacts/wmKnown", headers=AUTH)).json()
    assert [e["type"] for e in data["timeline"]] == ["open"]


async def test_rep_preview_is_not_engagement_and_outside_wechat_no_oauth(app: Any) -> None:
    from content.importer import import_library
    from tests.conftest import LIBRARY

    async with app.rt.sessions() as session, session.begin():
        await import_library(session, LIBRARY, now=app.clock.now())
    s = await share(app, "case-auto-parts-oee", contact="wmAny")
    rep = Browser(str(app.client.make_url("/")), ua=PHONE_UA.replace("MicroMessenger/8.0.47", "wxwork/4.1.0 MicroMessenger/7.0.1"))
    desktop = Browser(str(app.client.make_url("/")), ua="Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36")
    try:
        _, _, resp = await rep.get(f"/l/{s['token']}")
        state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
        code = app.sim.state.issue_oauth_code(userid="rep1")
        await rep.get(f"/l/{s['token']}/oauth?code={code}&state={state}")
        status, _, _ = await rep.get(f"/l/{s['token']}")
        assert status == 200
        status, _, _ = await desktop.get(f"/l/{s['token']}")
        assert status == 200  # not inside WeChat: no OAuth detour
    finally:
        await rep.close()
        await desktop.close()
    async with app.rt.sessions() as session:
        opens = (await session.scalars(select(Event).where(Event.type == "open"))).all()
    assert len(opens) == 1  # the desktop visitor's; the rep's own look does not count
