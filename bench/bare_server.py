"""The baseline: a bare aiohttp server answering GET /l/{token} with fixed bytes (one real landing page).

`python -m bench.bare_server --port N --page PAGE.html [--headers HEADERS.json]`: no database, no
templates, no tracking; what is left is aiohttp's own cost of parsing a request and writing the same
response. Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from aiohttp import web


def create_app(body: bytes, headers: dict[str, str]) -> web.Application:
    async def handle_page(request: web.Request) -> web.Response:
        """The same bytes for every token."""
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/l/{token}", handle_page)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--page", type=Path, required=True, help="the response body to serve")
    parser.add_argument("--headers", type=Path, help="JSON object of response headers to send with it")
    args = parser.parse_args(argv)
    headers = json.loads(args.headers.read_text()) if args.headers else {"Content-Type": "text/html; charset=utf-8"}
    logging.basicConfig(level=logging.WARNING)
    web.run_app(create_app(args.page.read_bytes(), headers), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
