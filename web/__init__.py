"""aiohttp web portal and REST API."""
