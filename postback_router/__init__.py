"""postback-router: conditional postbacks as a streaming service (CLI, settings, embedded broker)."""

__version__ = "0.1.0"
