"""Callback XML parsing (bot.wecom.inbound.parse_inbound): ElementTree, read into the shape xmltodict
gives, which handlers rely on. Checked against xmltodict itself on WeCom's own shapes and on generated
documents (text, CDATA, whitespace, attributes, repeated and nested elements)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
import xmltodict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.wecom.inbound import CallbackMalformed, parse_inbound
from bot.wecom.sim_driver import Raw, build_xml, cdata, selected_items_xml

WECOM_SHAPES = [
    # an app text message, as the edge gets it most often
    build_xml([("ToUserName", "ww1234567890"), ("FromUserName", "zhangsan"), ("CreateTime", 1348831860),
               ("MsgType", "text"), ("Content", "帮我找一下制造业数字化白皮书 ]]> <b>"), ("MsgId", 1234567890123456),
               ("AgentID", 1000002)]),
    # a vote card's click: nested SelectedItems, repeated SelectedItem and OptionId
    build_xml([("ToUserName", "ww1"), ("FromUserName", "rep1"), ("MsgType", "event"), ("Event", "template_card_event"),
               ("EventKey", "vote"), ("TaskId", "t1"), ("CardType", "vote_interaction"),
               ("SelectedItems", selected_items_xml([("q1", ["a", "b"]), ("q2", ["c"])]))]),
    build_xml([("MsgType", "event"), ("Event", "template_card_event"),
               ("SelectedItems", selected_items_xml([("q1", ["a"])]))]),
    # a contact change with an empty element and a welcome code
    "<xml><ToUserName><![CDATA[ww1]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_contact]]></Event>"
    "<ChangeType><![CDATA[add_external_contact]]></ChangeType><UserID><![CDATA[rep1]]></UserID>"
    "<ExternalUserID><![CDATA[wmABC]]></ExternalUserID><State></State><WelcomeCode><![CDATA[WC]]></WelcomeCode></xml>",
    # pretty-printed, with a declaration and an event without MsgType
    '<?xml version="1.0" encoding="UTF-8"?>\n<xml>\n  <Event> click </Event>\n  <EventKey>\n  </EventKey>\n</xml>\n',
    # mixed content and attributes (not WeCom's, but the shape must still agree)
    '<xml><A k="1">t<B>1</B> tail <B/><C><D>x</D></C></A><E k="2"/><F k="3">v</F></xml>',
]


@pytest.mark.parametrize("plaintext", WECOM_SHAPES)
def test_fields_are_what_xmltodict_gives(plaintext: str) -> None:
    assert parse_inbound(plaintext).fields == xmltodict.parse(plaintext)["xml"]


def test_the_message_reads_as_before() -> None:
    msg = parse_inbound(WECOM_SHAPES[0])
    assert (msg.msg_type, msg.event, msg.kind, msg.sender) == ("text", "", "text", "zhangsan")
    assert msg.text == "帮我找一下制造业数字化白皮书 ]]> <b>"
    assert msg.dedupe_key == "msg:1234567890123456"
    vote = parse_inbound(WECOM_SHAPES[1])
    items = vote.fields["SelectedItems"]["SelectedItem"]
    assert [i["QuestionKey"] for i in items] == ["q1", "q2"] and items[0]["OptionIds"]["OptionId"] == ["a", "b"]
    assert parse_inbound(WECOM_SHAPES[4]).fields == {"Event": "click", "EventKey": None}


@pytest.mark.parametrize("plaintext", [
    "<xml/>", "<xml>  </xml>", "<xml>text only</xml>", "<other><A>1</A></other>", "not xml", "<xml><A></xml>", "",
    '<!DOCTYPE xml [<!ENTITY x "y">]><xml><A>&x;</A></xml>', "<!doctype xml><xml/>",
])
def test_what_is_not_a_callback_is_malformed(plaintext: str) -> None:
    with pytest.raises(CallbackMalformed):
        parse_inbound(plaintext)


TAGS = st.sampled_from(["A", "B", "C", "MsgType", "Event", "Item"])
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from([" ", "\n", "\t"]), max_size=12)


@st.composite
def elements(draw: Any, depth: int = 0) -> str:
    tag = draw(TAGS)
    attrs = draw(st.dictionaries(st.sampled_from(["k", "id", "type"]), TEXT, max_size=2))
    head = f"<{tag}" + "".join(f" {name}={quoteattr(value)}" for name, value in attrs.items())
    parts = []
    for _ in range(draw(st.integers(0, 3 if depth < 3 else 0))):
        parts.append(draw(st.one_of(TEXT.map(escape), TEXT.filter(lambda t: "]]>" not in t).map(cdata), elements(depth + 1))))
    return f"{head}>{''.join(parts)}</{tag}>"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(elements(), max_size=5), st.booleans())
def test_generated_documents_agree_with_xmltodict(children: list[str], declaration: bool) -> None:
    plaintext = ('<?xml version="1.0" encoding="UTF-8"?>\n' if declaration else "") + "<xml>" + "".join(children) + "</xml>"
    expected = xmltodict.parse(plaintext)["xml"]
    if not isinstance(expected, dict):
        with pytest.raises(CallbackMalformed):
            parse_inbound(plaintext)
    else:
        assert parse_inbound(plaintext).fields == expected
    ET.fromstring(plaintext)  # the generator writes well-formed XML only


def test_raw_values_are_kept_as_text() -> None:
    plaintext = build_xml([("MsgType", "event"), ("Count", 3), ("Inner", Raw("<X>1</X><X>2</X>"))])
    assert parse_inbound(plaintext).fields == {"MsgType": "event", "Count": "3", "Inner": {"X": ["1", "2"]}}
