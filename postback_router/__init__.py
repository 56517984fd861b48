"""postback-router: the command line and the HTTP API, on top of streams/, dispatchers/ and service/."""

from schemas.version import __version__

__all__ = ["__version__"]
