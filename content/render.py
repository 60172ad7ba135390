"""Markdown to safe HTML for landing pages and previews.

markdown-it-py (CommonMark + tables + strikethrough, raw HTML allowed so authors can use a `<br>`)
renders; nh3 then sanitizes the result, which is what makes it safe: only an allow-list of tags and
attributes survives, `<script>`/`<style>`/`<iframe>` go with their content, no `on*` attributes,
links and images only over http(s) (links also mailto/tel) or relative, and every link opens in a
new tab with rel="noopener noreferrer nofollow". Library files are authored by staff, but the HTML is
served on our domain to customers, so it is treated as untrusted.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
# Dropped together with everything inside them (the text of a script is not content).
_DROP_WITH_CONTENT = {"script", "style", "iframe", "object", "embed", "noscript", "template", "textarea", "select"}
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "ol": {"start"},
    "th": {"style", "colspan", "rowspan"},
    "td": {"style", "colspan", "rowspan"},
    "code": {"class"},  # language-xxx from fenced code blocks
}
_LINK_SCHEMES = {"http", "https", "mailto", "tel"}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags=_DROP_WITH_CONTENT,
        attributes=_ATTRIBUTES,
        attribute_filter=_filter_attribute,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=_LINK_SCHEMES,
        filter_style_properties={"text-align"},  # markdown-it writes column alignment as a style
        strip_comments=True,
    )


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    # Images load without a click, so they get http(s) or relative URLs only: no mailto:, tel:.
    if tag == "img" and attribute == "src" and value.split(":", 1)[0].lower() in {"mailto", "tel"}:
        return None
    if tag == "code" and attribute == "class" and not value.startswith("language-"):
        return None
    return value


def render_markdown(md: str) -> str:
    """Markdown (tables included) as sanitized HTML, safe to embed in a page."""
    return _cleaner().clean(_markdown().render(md))
