"""Pure values and decisions of delivery: no I/O, no clock reads (callers pass `now`), no aiohttp or aiokafka."""
