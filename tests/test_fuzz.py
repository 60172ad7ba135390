"""Hostile input, generated: the public endpoints answer every input with a deliberate status, never 500."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.wecom.inbound import CallbackCrypto
from tests.conftest import CB_AES_KEY, CB_TOKEN, CORP_ID
from tests.test_callback import envelope
from tests.test_links import AUTH, Browser, share  # noqa: F401

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(body=st.binary(max_size=3000), sig=text, ts=text, nonce=text)
async def test_callback_never_500_on_garbage(beacon: Any, body: bytes, sig: str, ts: str, nonce: str) -> None:
    resp = await beacon.client.post("/wecom/callback", params={"msg_signature": sig, "timestamp": ts, "nonce": nonce}, data=body)
    assert resp.status in (400, 403, 413)


@FUZZ
@given(plaintext=text | st.builds(lambda inner: f"<xml>{inner}</xml>", text))
async def test_signed_callbacks_with_any_plaintext(beacon: Any, plaintext: str) -> None:
    crypto = CallbackCrypto(CB_TOKEN, CB_AES_KEY, CORP_ID)
    enc = crypto.encrypt(plaintext, timestamp=str(int(beacon.clock.now().timestamp())))
    resp = await beacon.client.post(
        "/wecom/callback",
        params={"msg_signature": enc["msg_signature"], "timestamp": enc["timestamp"], "nonce": enc["nonce"]},
        data=envelope(enc["encrypt"]),
    )
    assert resp.status in (200, 400)
    if resp.status == 200:
        await beacon.process()  # whatever was stored is processed or parked, never crashes the worker


@FUZZ
@given(payload=json_values)
async def test_api_events_never_500(beacon: Any, payload: Any) -> None:
    resp = await beacon.client.post("/api/events", data=json.dumps(payload), headers=AUTH)
    assert resp.status in (202, 400, 404)


@FUZZ
@given(payload=json_values)
async def test_api_shares_never_500(beacon: Any, payload: Any) -> None:
    resp = await beacon.client.post("/api/shares", data=json.dumps(payload), headers=AUTH)
    assert resp.status in (201, 400, 404)


async def _open(beacon: Any, slug: str) -> Any:
    s = await share(beacon, slug, contact=None)
    browser = Browser(str(beacon.client.make_url("/")))
    _, html, _ = await browser.get(f"/l/{s['token']}")
    return s["token"], html, browser


@pytest.fixture
async def page(beacon: Any, lib: Any) -> Any:  # noqa: F811
    opened = await _open(beacon, "case-auto-parts-oee")
    yield opened
    await opened[2].close()


@pytest.fixture
async def gate(beacon: Any, lib: Any) -> Any:  # noqa: F811
    opened = await _open(beacon, "manufacturing-digital-whitepaper")
    yield opened
    await opened[2].close()


@FUZZ
@given(payload=json_values, key_ok=st.booleans())
async def test_beacons_never_500(beacon: Any, page: Any, payload: Any, key_ok: bool) -> None:
    token, html, browser = page
    if key_ok and isinstance(payload, dict):
        payload["k"] = re.search(r'data-key="([^"]*)"', html).group(1)
    status, _, _ = await browser.post(f"/l/{token}/b", data=json.dumps(payload))
    assert status in (204, 400, 403, 413, 429)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["name", "company", "title", "phone", "csrf", "extra"]), text, max_size=6))
async def test_gate_form_never_500(beacon: Any, gate: Any, fields: dict[str, str]) -> None:
    token, html, browser = gate
    if "csrf" not in fields:
        fields["csrf"] = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    status, body, _ = await browser.post(f"/l/{token}/gate", data=fields)
    assert status in (303, 400, 403)
    if status == 400:
        assert 'class="error"' in body


@FUZZ
@given(token=text)
async def test_link_paths_never_500(beacon: Any, token: str) -> None:
    resp = await beacon.client.get("/l/" + token.replace("/", "").replace("?", "").replace("#", ""))
    assert resp.status in (200, 404)
