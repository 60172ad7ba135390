"""HTTP handlers (aiohttp route tables) and WeCom callback routers, one module per concern."""
