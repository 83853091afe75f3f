"""The aiohttp side of the hub: routes, middleware, websockets, static files."""
