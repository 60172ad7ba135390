"""The thumbnail of kf link messages: WeCom requires a `thumb_media_id` (a temporary image upload).

Library items carry no image bytes in the database (the `cover` field is a file name only), so every
link uses one generated placeholder, uploaded once per process with `media/upload` and reused while
WeCom keeps it (temporary media live 3 days; we renew after 2.5).
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
import zlib
from typing import TYPE_CHECKING

from bot.wecom.client import WeComError

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.kf")

UPLOAD = "/cgi-bin/media/upload"
SERVICE_KEY = "kf_thumb"
REUSE_FOR = dt.timedelta(hours=60)
BRAND_RGB = (0x1F, 0x6F, 0xEB)


def placeholder_png(size: int = 120, rgb: tuple[int, int, int] = BRAND_RGB) -> bytes:
    """A plain square PNG in one colour (8-bit RGB, no filtering)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")


async def thumb_media_id(rt: "Runtime") -> str | None:
    """The cached placeholder's media_id, uploading it when missing or old; None if WeCom refuses."""
    now = rt.clock.now()
    cached = rt.services.get(SERVICE_KEY)
    if cached is not None and cached[1] > now:
        return str(cached[0])
    try:
        answer = await rt.wecom.upload(
            UPLOAD, filename="beacon-thumb.png", data=placeholder_png(), content_type="image/png", params={"type": "image"}
        )
    except WeComError as exc:
        log.warning("could not upload the kf link thumbnail: %s", exc)
        return None
    media_id = str(answer.get("media_id") or "")
    if not media_id:
        return None
    rt.services[SERVICE_KEY] = (media_id, now + REUSE_FOR)
    return media_id
