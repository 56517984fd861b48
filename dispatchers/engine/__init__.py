"""The asyncio engine of delivery: the one scheduler (`scheduler_core.py`) with its S2S (`scheduler.py`) and
ad-platform (`batch_scheduler.py`) strategies, rate limits, OAuth tokens. It reaches the network only
through the `Transport` of `dispatchers/core/http.py`, and knows nothing of Kafka or aiohttp."""
