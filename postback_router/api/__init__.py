"""`postback-router api`: rules and offer sources over HTTP, conversion intake, status updates.

`intake.py`, `conversion_update.py`, `auth.py` and `openapi.py` are pure; `backend.py` holds the
Kafka I/O (the producer and the workers' views of the compacted topics); `app.py` the aiohttp
routes; `server.py` the process.
"""
