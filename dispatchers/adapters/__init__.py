"""What connects the delivery engines to the outside: the aiohttp transport and SSRF guard, secrets from
the environment or mounted files, platform credentials, Prometheus metrics."""
