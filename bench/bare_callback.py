"""The callback baseline: a bare aiohttp server that checks and decrypts WeCom callbacks and answers.

`python -m bench.bare_callback --port N --token T --aes-key K --corp-id C`: POST /wecom/callback runs
the very checks the app's edge runs first (bot.wecom.inbound.CallbackCrypto: signature in constant
time, timestamp freshness, wechatpy's AES decryption) and answers exactly as the app does once a
callback is stored (200, empty text body), 403/400 when refused. No parsing of the plaintext, no
database, no inbox, no worker: what is left is aiohttp plus the unavoidable crypto. Stops cleanly on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from bot.wecom.inbound import CallbackCrypto, CallbackForbidden, CallbackMalformed


def create_app(crypto: CallbackCrypto) -> web.Application:
    async def handle_callback(request: web.Request) -> web.Response:
        body = await request.read()
        q = request.query
        try:
            crypto.decrypt_body(body, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""))
        except CallbackForbidden:
            return web.Response(status=403, text="forbidden")
        except CallbackMalformed as exc:
            return web.Response(status=400, text=f"bad request: {exc}")
        return web.Response(text="")

    async def handle_ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/wecom/callback", handle_callback)
    app.router.add_get("/ready", handle_ready)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_callback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--aes-key", required=True, help="the 43-character EncodingAESKey")
    parser.add_argument("--corp-id", required=True)
    parser.add_argument("--replay-window", type=int, default=600, help="seconds, as [wecom] replay_window_s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    crypto = CallbackCrypto(args.token, args.aes_key, args.corp_id, replay_window_s=args.replay_window)
    web.run_app(create_app(crypto), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
