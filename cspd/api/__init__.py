"""HTTP layer: the aiohttp application, its middleware and the CSP handlers."""
