"""Delivery of matched postbacks to traffic sources (S2S) and ad platforms.

Layers, each importing only the ones below it (checked by `make lint`):
- `dispatcher.py`: the application, one consumer-group member (service/group_member.py) per kind of postback;
- `adapters/`: the aiohttp transport and its SSRF guard, secrets, platform credentials, metrics;
- `engine/`: the asyncio delivery scheduler (one core, with an S2S and an ad-platform strategy), rate
  limits and the OAuth token cache (no Kafka, no aiohttp);
- `platforms/`: each ad platform's pure request builder and response classifier, by kind in `registry.py`;
- `core/`: pure values and decisions (HTTP values, outcomes, retry, circuit breaker, S2S requests, the
  results, dead-letter and delivery-state records).
"""
