"""What is not engagement: link-preview fetchers, crawlers, prefetches. One place, one test file.

Chat apps fetch a link when it is pasted to draw the card; security scanners and crawlers follow links;
browsers prefetch. None of these is a person reading, so none records an open.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Mapping

_FETCHER_UA = re.compile(
    r"bot\b|bot/|spider|crawl|slurp|preview|fetcher|scanner|facebookexternalhit|embedly|quora link|"
    r"whatsapp|telegram|slack|discord|linkedin|twitter|skype|bitlybot|baidu|yisou|sogou|bytespider|"
    r"petalbot|360spider|headlesschrome|phantomjs|python-requests|python-urllib|aiohttp|httpx|curl/|wget/|"
    r"go-http-client|okhttp|java/|libwww|apache-httpclient|node-fetch|axios",
    re.IGNORECASE,
)
_PREFETCH_HEADERS = ("Purpose", "Sec-Purpose", "X-Purpose", "X-Moz")


@lru_cache(maxsize=4096)
def _fetcher_agent(user_agent: str) -> bool:
    # Real traffic repeats a few thousand user agents; the regex runs once per distinct one.
    return not user_agent or _FETCHER_UA.search(user_agent) is not None


def is_preview_fetch(method: str, headers: Mapping[str, str]) -> bool:
    """True for requests that must not count as a person opening the link."""
    if method.upper() == "HEAD":
        return True
    if _fetcher_agent(headers.get("User-Agent", "").strip()):
        return True
    return any("prefetch" in headers.get(h, "").lower() or "preview" in headers.get(h, "").lower() for h in _PREFETCH_HEADERS)
