"""The release of postback-router: its schemas, the S2S User-Agent, `--version` and /metrics carry it."""

__version__ = "0.1.0"
