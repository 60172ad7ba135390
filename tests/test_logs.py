"""Logs never carry secrets or full phone numbers."""

from __future__ import annotations

import io
import json
import logging

from bot.logs import JsonFormatter, MaskingFilter, mask_phone


def test_mask_phone() -> None:
    assert mask_phone("call 13812345678 now") == "call 138****5678 now"
    assert mask_phone("+86 13812345678") == "+86 138****5678"
    assert mask_phone("order 2023121312345678") == "order 2023121312345678"  # not a phone: longer digit run


def test_filter_masks_secrets_tokens_and_phones() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(MaskingFilter(["super-secret-value"]))
    log = logging.getLogger("test.masking")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("GET /cgi-bin/x?access_token=abc123&x=1 secret=%s phone %s", "super-secret-value", "13900001111")
    finally:
        log.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert "abc123" not in line["msg"] and "super-secret-value" not in line["msg"]
    assert "139****1111" in line["msg"]
    assert line["level"] == "WARNING"
