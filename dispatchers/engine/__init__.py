"""The asyncio engines of delivery: schedulers, rate limits, OAuth tokens. They reach the network only
through the `Transport` of `dispatchers/core/http.py`, and know nothing of Kafka or aiohttp."""
