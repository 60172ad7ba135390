"""Markdown rendering: tables work, hostile HTML and URLs do not survive."""

from __future__ import annotations

import re

import pytest

from content.library import scan_library
from content.render import render_markdown
from tests.test_content_import import SAMPLE


def test_tables_and_basic_markdown() -> None:
    html = render_markdown("# 标题\n\n| 层级 | 能力 |\n|:---|---:|\n| 边缘 | **采集** |\n\n~~旧~~ `code`\n")
    assert "<h1>标题</h1>" in html
    assert "<table>" in html and "<thead>" in html and "<tbody>" in html
    assert '<th style="text-align:left">层级</th>' in html
    assert '<td style="text-align:right"><strong>采集</strong></td>' in html
    assert "<s>旧</s>" in html and "<code>code</code>" in html


def test_links_open_in_a_new_tab_without_referrer() -> None:
    html = render_markdown("[案例](https://example.com/a?b=1) and [page](/l/abc)")
    assert '<a href="https://example.com/a?b=1" target="_blank" rel="noopener noreferrer nofollow">案例</a>' in html
    assert '<a href="/l/abc" target="_blank" rel="noopener noreferrer nofollow">page</a>' in html
    forced = render_markdown('<a href="https://e.com" target="_self" rel="opener">x</a>')
    assert 'target="_blank"' in forced and 'rel="noopener noreferrer nofollow"' in forced
    assert "_self" not in forced and '"opener"' not in forced


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        "text <script src='https://evil.example/x.js'></script> more",
        "<style>body{display:none}</style>",
        '<iframe src="https://evil.example"></iframe>',
        "<img src=x onerror=alert(1)>",
        '<p onclick="alert(1)" onmouseover="alert(2)">p</p>',
        '<svg onload="alert(1)"><circle/></svg>',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](  javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        '<a href="jav&#x09;ascript:alert(1)">x</a>',
        '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
        "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
        '<img src="javascript:alert(1)">',
        '<form action="https://evil.example"><input name="p"></form>',
        '<object data="x.swf"></object><embed src="x.swf">',
        '<table><tr><td style="background:url(javascript:alert(1));text-align:right">c</td></tr></table>',
        '<div style="position:fixed;top:0">overlay</div>',
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        "<!-- <script>alert(1)</script> -->",
        '<meta http-equiv="refresh" content="0;url=https://evil.example">',
        '<base href="https://evil.example/">',
    ],
)
def test_hostile_input_is_neutralised(hostile: str) -> None:
    html = render_markdown(f"前文\n\n{hostile}\n\n后文").lower()
    for tag in ("<script", "<style", "<iframe", "<svg", "<form", "<input", "<object", "<embed", "<math", "<meta", "<base"):
        assert tag not in html, (tag, html)
    assert not re.search(r"\son\w+\s*=", html), html
    # markdown-it leaves a refused link as inert text; what matters is that no URL attribute carries it
    assert not re.search(r"""(href|src|action|data)\s*=\s*["']?\s*(javascript|data|vbscript):""", html), html
    assert "<script" not in html and "alert(1)</" not in html  # script text is dropped with its element
    assert "position" not in html and "background" not in html
    assert html.startswith("<p>前文</p>")  # the rest of the page still renders


def test_script_and_iframe_content_is_dropped_not_shown() -> None:
    html = render_markdown("<script>var secret = 1;</script>\n\n<iframe>fallback</iframe>\n\nok")
    assert "secret" not in html and "fallback" not in html and "ok" in html


def test_sample_library_renders() -> None:
    items = scan_library(SAMPLE).items
    rendered = {item.slug: render_markdown(item.body) for item in items}
    assert all(html.startswith("<h1>") or html.startswith("<p>") for html in rendered.values())
    assert "<table>" in rendered["solution-smart-factory-automotive"]
    assert 'href="https://www.example.com" target="_blank"' in rendered["blog-oee-common-mistakes"]
